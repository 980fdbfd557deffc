"""Shared by the TimescaleDB rollup tests (migration 0014): constants, the generated DDL and
the helpers reading it.

0014 generates its DDL with `llmmeter_rollup_ddl(phase, cutoff)`: per level one
continuous aggregate per grouping set the level keeps (hierarchical where the
level below keeps the same set, else over the raw rows), its refresh policy,
a history table, and a UNION ALL view per level. The checks come in three
modules: test_schema_timescale_generated.py (the statements, any flavour),
test_schema_timescale_as_views.py (plain PostgreSQL: the same statements as plain
views reproduce the PostgreSQL flavour's rollup tables) and
test_schema_timescale_live.py (a real TimescaleDB).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from pglast import ast, parse_sql
from pglast.enums import SetOperation

from llmmeter_common import sketch
from llmmeter_common.rollups import (
    ALL_DIMS,
    DIMENSIONS,
    HISTOGRAMS,
    ROLLUPS,
    Rollup,
    mask_of,
    rollup_columns,
    rollup_ctes,
)

from migration_sql import _declared, _sql, _text, _type

#: The migration this module checks.
SETS = "0014_rollup_sets"
#: Per level: refresh policy start_offset, end_offset, schedule_interval.
REFRESH = {"usage_1m": ("14 days", "1 minute", "1 minute"), "usage_1h": ("15 days", "1 hour", "5 minutes"),
           "usage_1d": ("16 days", "1 day", "1 hour")}
#: Schema the TimescaleDB flavour's functions (and, on PostgreSQL, its rollups as plain views) go to.
TS = "ts"
#: The sets every level of 0002 kept (all dimensions, each alone, none), as migrated from.
OLD_MASKS = [ALL_DIMS, *(mask_of((d,)) for d in DIMENSIONS), 0]


def _aggregate(r: Rollup, gset: tuple[str, ...]) -> str:
    return f"{r.table}_s{mask_of(gset)}"


def _below(r: Rollup) -> Rollup | None:
    i = ROLLUPS.index(r)
    return ROLLUPS[i - 1] if i else None


def _hierarchical(r: Rollup, gset: tuple[str, ...]) -> bool:
    """Whether the set's aggregate reads the same set one level down (else the raw rows)."""
    below = _below(r)
    return below is not None and mask_of(gset) in below.masks


def _interval(node: ast.Node) -> str:
    """The literal of INTERVAL '...'."""
    assert isinstance(node, ast.TypeCast) and _type(node.typeName) == "interval", _sql(node)
    return node.arg.val.sval


def _col(node: ast.Node) -> str:
    assert isinstance(node, ast.ColumnRef), _sql(node)
    return node.fields[-1].sval


def _branches(select: ast.SelectStmt) -> list[ast.SelectStmt]:
    """The SELECTs of a UNION ALL chain, in order."""
    if select.op == SetOperation.SETOP_NONE:
        return [select]
    assert select.op == SetOperation.SETOP_UNION and select.all, "only UNION ALL"
    return _branches(select.larg) + _branches(select.rarg)


def _pg_types() -> dict[str, str]:
    """udt_name of every rollup column of the PostgreSQL flavour's tables (0002, histograms as 0014)."""
    types = dict(_declared("postgres", "usage_1m"))
    types.update((f"{p}_hist", "bytea") for p, _ in HISTOGRAMS)
    return {c: types[c] for c in rollup_columns()}


# --- the generated statements (any flavour) --------------------------------------


def _timescale_sql(name: str, keep: Any) -> list[str]:
    """The statements of a TimescaleDB migration file that `keep(parsed statement)` selects."""
    text = _text("timescale", name)
    return [text[raw.stmt_location: raw.stmt_location + raw.stmt_len]
            for raw in parse_sql(text) if keep(raw.stmt)]


def _is_function(stmt: ast.Node, prefix: str = "") -> bool:
    if isinstance(stmt, ast.CreateFunctionStmt):
        return stmt.funcname[-1].sval.startswith(prefix)
    return isinstance(stmt, ast.DefineStmt) and stmt.kind.name == "OBJECT_AGGREGATE" and (
        stmt.defnames[-1].sval.startswith(prefix))


async def _install_timescale_functions(conn: asyncpg.Connection) -> None:
    """In schema TS, first on the search path: the histogram state functions of 0002 (as 0011 left
    them) and every function and aggregate 0014 creates (its generator and retention included).
    0013's functions are in public on both flavours."""
    await conn.execute(f"CREATE SCHEMA {TS}; SET search_path = {TS}, public")
    for name, prefix in (("0002_tables", "llmmeter_hist_state_"),
                         ("0011_background_jobs", "llmmeter_hist_state_"), (SETS, "")):
        for sql in _timescale_sql(name, lambda s, p=prefix: _is_function(s, p)):
            await conn.execute(sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))


async def _generated(conn: asyncpg.Connection, phase: str,
                     cutoff: datetime | None = None) -> list[tuple[str, ast.Node]]:
    """llmmeter_rollup_ddl(phase, cutoff)'s statements, in order, with their parse trees."""
    out = []
    generated = await conn.fetchval(
        "SELECT array_agg(s) FROM llmmeter_rollup_ddl($1, $2) AS s", phase, cutoff)
    for sql in generated:
        (raw,) = parse_sql(sql)
        out.append((sql, raw.stmt))
    return out


def _policies(stmts: list[ast.Node]) -> dict[str, dict[str, str]]:
    """add_continuous_aggregate_policy calls: aggregate -> {argument: SQL}."""
    out = {}
    for s in stmts:
        if isinstance(s, ast.SelectStmt) and not s.fromClause and len(s.targetList) == 1:
            call = s.targetList[0].val
            if isinstance(call, ast.FuncCall) and call.funcname[-1].sval == "add_continuous_aggregate_policy":
                first, *rest = call.args
                out[first.val.sval] = {a.name: _sql(a.arg) for a in rest}
    return out


_INSERT_COLS = (
    "start_time, request_id, end_time, latency_us, ttft_us, itl_us, tpot_us, streaming, status_code, "
    "error_type, model, model_alias, provider, call_type, user_name, team, account, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, images, audio_seconds, "
    "video_seconds, characters, cost, cache_hit, retries"
)


_ROWS = f"""
WITH ins AS (
    INSERT INTO usage_records ({_INSERT_COLS})
    SELECT t, 'r-' || i, t + latency * INTERVAL '1 microsecond', latency,
           CASE WHEN i % 3 = 0 THEN NULL ELSE (i * 7919) % 400000 END,
           CASE WHEN i % 4 = 0 THEN NULL ELSE (i % 10) * 0.5 END,
           CASE WHEN i % 5 = 0 THEN NULL ELSE (i % 7) * 0.25 END,
           i % 2 = 0,
           CASE WHEN i % 10 = 0 THEN 500 ELSE 200 END,
           CASE WHEN i % 10 = 0 THEN 'server' ELSE '' END,
           CASE WHEN i % 2 = 0 THEN 'gpt-4o' ELSE 'claude' END,
           CASE WHEN i % 4 = 0 THEN 'smart' ELSE '' END,
           CASE WHEN i % 2 = 0 THEN 'openai' ELSE 'anthropic' END,
           'chat', CASE WHEN i % 3 = 0 THEN 'bo' ELSE 'ana' END, 'payments', 'key-1',
           i * 3, i * 2, i % 5, i % 3, i % 7, i % 2, (i % 7) * 0.1, (i % 3) * 0.5, i * 11, i * 0.00001,
           i % 6 = 0, i % 3
    FROM generate_series($1::integer, $2::integer) AS i,
         LATERAL (SELECT $3::timestamptz + (i % 3) * INTERVAL '1 day'
                         + ((i * 37) % 45) * INTERVAL '7 minutes' + (i % 50) * INTERVAL '1 second' AS t,
                         (CASE WHEN i % 13 = 0 THEN i % 2 ELSE (i * 104729) % 5000000 END)::bigint AS latency
                 ) AS x
    RETURNING *
){{rollups}}
SELECT count(*) FROM ins
"""
_WRITE = _ROWS.replace("{rollups}", ",\n" + rollup_ctes("ins"))
_RAW = _ROWS.replace("{rollups}", "")


def _decoded(row: asyncpg.Record) -> dict[str, object]:
    """A rollup row with each histogram as {key: count}: element order and repeated keys (appended
    by the PostgreSQL flavour's upserts until compaction) do not change what a histogram says."""
    out = dict(row)
    for p, _ in HISTOGRAMS:
        out[f"{p}_hist"] = sketch.decode(out[f"{p}_hist"])
    return out
