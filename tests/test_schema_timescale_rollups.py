"""The TimescaleDB flavour's rollups (migration 0014), checked against `llmmeter_common.rollups`.

0014 generates its DDL with `llmmeter_rollup_ddl(phase, cutoff)`: per level one
continuous aggregate per grouping set the level keeps (hierarchical where the
level below keeps the same set, else over the raw rows), its refresh policy,
a history table, and a UNION ALL view per level. Three kinds of checks:

* the generated statements, parsed with pglast, against `rollups.ROLLUPS`
  (any flavour: the generator only writes text);
* on plain PostgreSQL (`postgres_flavor_only`): the same statements built with
  plain views for the continuous aggregates and stand-ins for TimescaleDB's
  functions must reproduce, row for row and type for type, the rollup tables
  the PostgreSQL flavour's ingest path maintains;
* on a real TimescaleDB (`timescale_flavor_only`): the migrated schema, its
  views against raw rows (real-time and materialised), the policies, the
  retention function, and the migration of a database holding 0013's
  rollups, whose history must come through unchanged.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pglast import ast, parse_sql
from pglast.enums import SetOperation

from llmmeter_common import sketch
from llmmeter_common.migrate import load_migrations
from llmmeter_common.rollups import (
    ALL_DIMS,
    DIMENSIONS,
    HISTOGRAMS,
    MEASURES,
    ROLLUPS,
    Rollup,
    mask_of,
    rollup_columns,
    rollup_ctes,
)

from conftest import create_database
from migration_sql import _columns, _declared, _output_names, _sql, _text, _type

#: The migration this module checks.
SETS = "0014_rollup_sets"
#: Per level: refresh policy start_offset, end_offset, schedule_interval.
REFRESH = {"usage_1m": ("14 days", "1 minute", "1 minute"), "usage_1h": ("15 days", "1 hour", "5 minutes"),
           "usage_1d": ("16 days", "1 day", "1 hour")}
#: Schema the TimescaleDB flavour's functions (and, on PostgreSQL, its rollups as plain views) go to.
TS = "ts"
#: The sets every level of 0002 kept (all dimensions, each alone, none), as migrated from.
OLD_MASKS = [ALL_DIMS, *(mask_of((d,)) for d in DIMENSIONS), 0]


@pytest.fixture
def timescale_flavor_only(storage_flavor: str) -> None:
    """For tests of what only a real TimescaleDB runs (continuous aggregates, jobs, chunks)."""
    if storage_flavor != "timescale":
        pytest.skip("needs a real TimescaleDB (continuous aggregates, background jobs)")


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


async def test_generated_ddl_creates_each_levels_sets_then_its_view(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_functions(conn)
        history = [s for _, s in await _generated(conn, "history")]
        generated = await _generated(conn, "rollups")
    stmts = [s for _, s in generated]
    created = [s.into.rel.relname if isinstance(s, ast.CreateTableAsStmt) else s.view.relname
               for s in stmts if isinstance(s, ast.CreateTableAsStmt | ast.ViewStmt)]
    # level by level, each level's aggregates (its sets, in rollups order) before its view and the level above
    assert created == [name for r in ROLLUPS for name in [*(_aggregate(r, g) for g in r.sets), r.table]]
    aggregates = [s for s in stmts if isinstance(s, ast.CreateTableAsStmt)]
    assert len(aggregates) == sum(len(r.sets) for r in ROLLUPS) == 25
    # the history tables, each a hypertable on bucket; nothing copied without a cutoff
    assert [s.relation.relname for s in history if isinstance(s, ast.CreateStmt)] == [
        f"{r.table}_history" for r in ROLLUPS]
    hypertables = [_sql(s.targetList[0].val) for s in history if isinstance(s, ast.SelectStmt)]
    chunks = ("1 day", "30 days", "30 days")
    assert hypertables == [
        f"create_hypertable('{r.table}_history', by_range('bucket', CAST('{chunk}' AS interval)))"
        for r, chunk in zip(ROLLUPS, chunks, strict=True)]
    assert not [s for s in history if isinstance(s, ast.InsertStmt)]
    # each aggregate's chunks span a level's retention step, as the PostgreSQL flavour's partitions
    step = {r.table: chunk for r, chunk in zip(ROLLUPS, chunks, strict=True)}
    for (_, stmt), (nxt, _next) in itertools.pairwise(generated):
        if isinstance(stmt, ast.CreateTableAsStmt):
            name = stmt.into.rel.relname
            assert nxt.startswith("SELECT set_chunk_time_interval(") and f"view_name = '{name}'" in nxt, nxt
            assert nxt.endswith(f"INTERVAL '{step[name[:8]]}')"), nxt


async def test_history_tables_have_the_postgres_rollup_columns(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_functions(conn)
        history = [s for _, s in await _generated(conn, "history") if isinstance(s, ast.CreateStmt)]
    for table in history:
        cols = [e for e in table.tableElts if isinstance(e, ast.ColumnDef)]
        declared = [(c.colname, _type(c.typeName)) for c in cols]
        assert declared == list(_pg_types().items()), table.relation.relname
        assert all(any(isinstance(k, ast.Constraint) and k.contype.name == "CONSTR_NOTNULL"
                       for k in c.constraints or ()) for c in cols)
        (pk,) = [e for e in table.tableElts if isinstance(e, ast.Constraint)]
        assert [k.sval for k in pk.keys] == ["dims_mask", "bucket", *DIMENSIONS]  # as the PostgreSQL tables


@pytest.mark.parametrize("cutoff", [None, datetime(2026, 11, 20, tzinfo=UTC)])
async def test_generated_continuous_aggregates_group_by_their_set_only(
        db_pool: asyncpg.Pool, cutoff: datetime | None) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_functions(conn)
        aggs = {s.into.rel.relname: s for _, s in await _generated(conn, "rollups", cutoff)
                if isinstance(s, ast.CreateTableAsStmt)}
    pg_types = _pg_types()
    hist_cols = [f"{p}_hist" for p, _ in HISTOGRAMS]
    assert len(aggs) == sum(len(r.sets) for r in ROLLUPS)
    for r in ROLLUPS:
        for gset in r.sets:
            name = _aggregate(r, gset)
            view = aggs[name]
            options = {(o.defnamespace, o.defname): o.arg.sval if o.arg else None for o in view.into.options}
            assert options == {("timescaledb", "continuous"): None,
                               ("timescaledb", "materialized_only"): "false"}, name
            assert view.into.skipData, f"{name} must be created WITH NO DATA (inside a transaction)"
            q = view.query
            hierarchical = _hierarchical(r, gset)
            below = _below(r)
            source = _aggregate(below, gset) if hierarchical and below else "usage_records"
            time_col = "bucket" if hierarchical else "start_time"
            assert [f.relname for f in q.fromClause] == [source], name
            # raw rows from the cutoff on (the history table has what came before); a hierarchical
            # aggregate inherits that from the level below
            if cutoff is None or hierarchical:
                assert q.whereClause is None, name
            else:
                where = q.whereClause
                assert isinstance(where, ast.A_Expr) and where.name[0].sval == ">=", name
                assert _col(where.lexpr) == "start_time", name
                assert _type(where.rexpr.typeName) == "timestamptz", name
                assert datetime.fromisoformat(where.rexpr.arg.val.sval) == cutoff, name
            assert q.havingClause is None, name
            # bucket = time_bucket(INTERVAL '<width>', <time column of the source>)
            bucket = q.targetList[0].val
            assert isinstance(bucket, ast.FuncCall) and bucket.funcname[-1].sval == "time_bucket", name
            assert _interval(bucket.args[0]) == r.width and _col(bucket.args[1]) == time_col, name
            # GROUP BY the bucket EXPRESSION (a bare `bucket` would be the source's column) and the set
            group = list(q.groupClause)
            assert _sql(group[0]) == _sql(bucket), f"{name}: GROUP BY must repeat the time_bucket call"
            assert [_col(g) for g in group[1:]] == list(gset), name
            assert _output_names(q) == ["bucket", *gset, *(m.column for m in MEASURES), *hist_cols], name
            assert [_col(t.val) for t in q.targetList[1: 1 + len(gset)]] == list(gset), name
            targets = {t.name: t.val for t in q.targetList}
            for m in MEASURES:
                node = targets[m.column]
                assert isinstance(node, ast.TypeCast), f"{name}.{m.column} must be cast to the table type"
                assert _type(node.typeName) == pg_types[m.column], f"{name}.{m.column}"
                agg = node.arg
                assert isinstance(agg, ast.FuncCall) and agg.funcname[-1].sval == "sum", f"{name}.{m.column}"
                (arg,) = agg.args
                if hierarchical:
                    assert _col(arg) == m.column, f"{name}.{m.column}"
                else:
                    expected = parse_sql(f"SELECT {m.raw_expr}")[0].stmt.targetList[0].val
                    assert _sql(arg) == _sql(expected), f"{name}.{m.column}"
            for prefix, raw_col in HISTOGRAMS:
                call = targets[f"{prefix}_hist"]
                assert isinstance(call, ast.FuncCall), f"{name}.{prefix}_hist"
                args = [_col(a) for a in call.args]
                if hierarchical:
                    expected_call = ("llmmeter_hist_merge_agg", [f"{prefix}_hist"])
                    assert (call.funcname[-1].sval, args) == expected_call, name
                else:
                    assert (call.funcname[-1].sval, args) == ("llmmeter_hist_agg", [raw_col]), name


async def test_generated_views_union_each_set_with_constant_masks_and_the_history(
        db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_functions(conn)
        views = {s.view.relname: s for _, s in await _generated(conn, "rollups")
                 if isinstance(s, ast.ViewStmt)}
    assert set(views) == {r.table for r in ROLLUPS}
    for r in ROLLUPS:
        *branches, history = _branches(views[r.table].query)
        assert len(branches) == len(r.sets), r.table
        for gset, branch in zip(r.sets, branches, strict=True):
            where = f"{r.table}: {_aggregate(r, gset)}"
            assert [f.relname for f in branch.fromClause] == [_aggregate(r, gset)], where
            assert branch.whereClause is None and branch.groupClause is None, where
            assert _output_names(branch) == rollup_columns(), where
            mask = branch.targetList[1].val  # a constant, so `WHERE dims_mask = c` prunes branches
            assert isinstance(mask, ast.TypeCast) and _type(mask.typeName) == "int2", where
            assert mask.arg.val.ival == mask_of(gset), where
            for d, t in zip(DIMENSIONS, branch.targetList[2: 2 + len(DIMENSIONS)], strict=True):
                if d in gset:
                    assert _col(t.val) == d, (where, d)
                elif d == "status_code":
                    assert isinstance(t.val, ast.A_Const) and t.val.val.ival == 0, (where, d)
                else:
                    assert _sql(t.val) == "CAST('' AS text)", (where, d)
            rest = branch.targetList[2 + len(DIMENSIONS):]
            assert [_col(t.val) for t in rest] == rollup_columns()[2 + len(DIMENSIONS):], where
        assert [f.relname for f in history.fromClause] == [f"{r.table}_history"], r.table
        assert [_col(t.val) for t in history.targetList] == rollup_columns(), r.table
        assert history.whereClause is None, r.table


async def test_generated_policies_look_back_over_the_level_below_and_are_staggered(
        db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_functions(conn)
        before = await conn.fetchval("SELECT now()")
        policies = _policies([s for _, s in await _generated(conn, "rollups")])
    cast = "CAST('{}' AS interval)".format
    assert list(policies) == [_aggregate(r, g) for r in ROLLUPS for g in r.sets]
    starts = {}
    for r in ROLLUPS:
        start, end, every = REFRESH[r.table]
        width = {"1 minute": 60, "5 minutes": 300, "1 hour": 3600}[every]
        for gset in r.sets:
            name = _aggregate(r, gset)
            args = policies[name]
            assert {k: v for k, v in args.items() if k != "initial_start"} == {
                "start_offset": cast(start), "end_offset": cast(end), "schedule_interval": cast(every)}, name
            first = re.fullmatch(r"CAST\('(.+)' AS timestamptz\)", args["initial_start"])
            assert first, args
            starts[name] = datetime.fromisoformat(first.group(1))
            # within the interval after the current one (a fixed schedule: every `every` from then on)
            slot = datetime.fromtimestamp(before.timestamp() // width * width + width, UTC)
            assert slot <= starts[name] < slot + timedelta(seconds=width), (name, starts[name], slot)
    # no two jobs start at the same second of a minute; the minute jobs spread evenly over it
    seconds = [t.second for t in starts.values()]
    assert len(set(seconds)) == len(seconds), starts
    assert sorted(starts[_aggregate(ROLLUPS[0], g)].second for g in ROLLUPS[0].sets) == [0, 20, 40]
    # the hour and day jobs spread over their interval
    for r in ROLLUPS[1:]:
        minutes = [starts[_aggregate(r, g)].minute for g in r.sets]
        assert minutes == sorted(minutes) and len(set(minutes)) >= min(len(r.sets), 5), (r.table, minutes)


async def test_generated_history_copy_keeps_each_levels_sets_from_the_old_aggregates(
        db_pool: asyncpg.Pool) -> None:
    cutoff = datetime(2026, 11, 20, tzinfo=UTC)
    async with db_pool.acquire() as conn:
        await _install_timescale_functions(conn)
        inserts = [s for _, s in await _generated(conn, "history", cutoff) if isinstance(s, ast.InsertStmt)]
    by_table: dict[str, list[ast.InsertStmt]] = defaultdict(list)
    for s in inserts:
        by_table[s.relation.relname].append(s)
    for r in ROLLUPS:
        direct, *derived = by_table[f"{r.table}_history"]
        assert [c.name for c in direct.cols] == rollup_columns(), r.table
        q = direct.selectStmt
        assert [f.relname for f in q.fromClause] == [f"{r.table}_arrays"], r.table
        where = _sql(q.whereClause)
        copied = re.fullmatch(
            r"dims_mask = ANY\(CAST\('\{([\d,]+)\}' AS smallint\[\]\)\) AND bucket < .+", where)
        assert copied, where
        assert [int(m) for m in copied.group(1).split(",")] == [m for m in (mask_of(g) for g in r.sets)
                                                                  if m in OLD_MASKS], r.table
        assert "bucket < " in _sql(q.whereClause), r.table
        # sets 0002 did not keep (the hour level's all-but-user) are summed from the all-dimensions rows
        assert [mask_of(g) for g in r.sets if mask_of(g) not in OLD_MASKS] == [
            s.selectStmt.targetList[1].val.arg.val.ival for s in derived], r.table
        for s in derived:
            sql = _sql(s.selectStmt)
            assert f"dims_mask = {ALL_DIMS}" in sql and "GROUP BY bucket" in sql, sql


async def test_histogram_aggregates(db_pool: asyncpg.Pool) -> None:
    """0014's aggregates write 0013's format with each key once, in key order; counts above the
    element maximum split; no input or only NULLs is the empty histogram."""
    async with db_pool.acquire() as conn:
        await _install_timescale_functions(conn)
        agg = "SELECT llmmeter_hist_agg(v) FROM (VALUES {}) AS t(v)"
        assert await conn.fetchval(agg.format("(NULL::bigint)")) == b""
        assert await conn.fetchval(
            "SELECT llmmeter_hist_agg(v) FROM (SELECT 1::bigint) AS t(v) WHERE false") == b""
        values = [1000, 0, 1, 1000, 5, 999999, 2_000_000_000]
        got = await conn.fetchval(agg.format(", ".join(f"({v}::bigint)" for v in [*values, "NULL"])))
        expected: dict[int, int] = defaultdict(int)
        for v in values:
            expected[sketch.key_of(v)] += 1
        assert got == sketch.encode(expected)
        # merging stored histograms: any order, repeated keys, split counts, empty and NULL ones
        big = {7: sketch.COUNT_MAX + 5, 3: 1}
        parts = [sketch.encode({900: 6, 0: 4}), b"", None, sketch.encode(big) + sketch.encode({3: 2, 7: 1})]
        merged = await conn.fetchval(
            "SELECT llmmeter_hist_merge_agg(h) FROM unnest($1::bytea[]) AS h", parts)
        assert merged == sketch.encode({0: 4, 3: 3, 7: sketch.COUNT_MAX + 6, 900: 6})
        assert len(merged) == 5 * sketch.ELEM_BYTES
        # the state -> bytea step alone, and the combine function of partial aggregation
        assert await conn.fetchval(
            "SELECT llmmeter_hist_state_elems('[2:5]={1,NULL,NULL,1048576}'::bigint[])") == sketch.encode(
                {2: 1, 5: 1048576})
        assert await conn.fetchval("SELECT llmmeter_hist_state_elems('{}'::bigint[])") == b""
        combined = await conn.fetchval(
            "SELECT llmmeter_hist_state_elems(llmmeter_hist_state_combine("
            "llmmeter_hist_state_combine('{}', '[5:6]={1,NULL}'), '[2:5]={1,NULL,NULL,3}'))")
        assert combined == sketch.encode({2: 1, 5: 4})


def test_functions_a_refresh_reaches_call_only_pg_catalog() -> None:
    """Background jobs run with search_path = pg_catalog (0011): the functions behind 0014's
    aggregates (as the migrations leave them) must not call llmmeter functions by name."""
    latest: dict[str, str] = {}
    for mig in load_migrations("timescale"):
        for raw in parse_sql(mig.sql):
            if isinstance(raw.stmt, ast.CreateFunctionStmt):
                text = mig.sql[raw.stmt_location: raw.stmt_location + raw.stmt_len]
                latest[raw.stmt.funcname[-1].sval] = text
    support = set()
    for raw in parse_sql(_text("timescale", SETS)):
        if isinstance(raw.stmt, ast.DefineStmt) and raw.stmt.kind.name == "OBJECT_AGGREGATE":
            for d in raw.stmt.definition:
                if d.defname.lower() in ("sfunc", "combinefunc", "finalfunc"):
                    support.add(_sql(d.arg))
    ours = {f for f in support if f.startswith("llmmeter_")}
    assert ours == {"llmmeter_hist_state_add_value", "llmmeter_hist_state_combine",
                    "llmmeter_hist_state_elems", "llmmeter_hist_fold"}
    assert support - ours == {"byteacat"}
    for name in ours:
        body = latest[name].split("$$")[1]
        assert "llmmeter_" not in body, latest[name]


# --- plain PostgreSQL: the union views against the PostgreSQL flavour's rollup tables ---------------


_STANDINS = """
CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT date_bin(bucket_width, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')  -- TimescaleDB's default origin
$$;
CREATE TABLE dropped (relation text, older_than interval);
CREATE FUNCTION drop_chunks(relation regclass, older_than interval) RETURNS SETOF text
LANGUAGE sql AS $$
    INSERT INTO dropped VALUES (relation::text, older_than) RETURNING relation || '_chunk'
$$;
CREATE FUNCTION by_range(col text, width interval) RETURNS text LANGUAGE sql AS 'SELECT col';
CREATE FUNCTION create_hypertable(r regclass, dim text) RETURNS integer LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION add_continuous_aggregate_policy(r regclass, start_offset interval, end_offset interval,
    schedule_interval interval, initial_start timestamptz) RETURNS integer LANGUAGE sql AS 'SELECT 1';
"""


async def _build_timescale_rollups(conn: asyncpg.Connection) -> None:
    """The generated DDL in schema TS (a new database's: no cutoff), each continuous aggregate as a
    plain view of its query and the TimescaleDB calls against stand-ins."""
    await _install_timescale_functions(conn)
    await conn.execute(_STANDINS)
    for sql, stmt in [*await _generated(conn, "history"), *await _generated(conn, "rollups")]:
        if isinstance(stmt, ast.CreateTableAsStmt):
            sql = f"CREATE VIEW {stmt.into.rel.relname} AS {_sql(stmt.query)}"
        elif "set_chunk_time_interval" in sql:
            continue  # how TimescaleDB stores the aggregate: nothing for a plain view
        await conn.execute(sql)


_INSERT_COLS = (
    "start_time, request_id, end_time, latency_us, ttft_us, itl_us, tpot_us, streaming, status_code, "
    "error_type, model, model_alias, provider, call_type, user_name, team, account, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, images, audio_seconds, "
    "video_seconds, characters, cost, cache_hit, retries"
)

#: Raw rows i = $1..$2 from $3 on, spread over ~5 hours on each of 3 days, a few per minute and
#: dimension set, with NULL ttft/itl/tpot, tiny latencies (key 0) and dyadic floats (exact sums in
#: any order). `{rollups}` is where the PostgreSQL flavour's rollup statement goes.
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


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_continuous_aggregate_queries_reproduce_the_postgres_rollups(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        # The PostgreSQL rollups are upserted (histogram elements appended), while the union views over
        # the continuous aggregate queries recompute from scratch, hierarchically; both must agree.
        await conn.execute("SELECT llmmeter_ensure_partitions('2025-03-01', '2025-03-04')")
        start = datetime(2025, 3, 1, 9, tzinfo=UTC)
        assert await conn.fetchval(_WRITE, 1, 600, start) == 600
        assert await conn.fetchval(_WRITE, 601, 1200, start) == 600
        await _build_timescale_rollups(conn)
        order = ", ".join(str(i) for i in range(1, 3 + len(DIMENSIONS)))
        for r in ROLLUPS:
            computed = await conn.fetch(f"SELECT * FROM {TS}.{r.table} ORDER BY {order}")
            stored = await conn.fetch(f"SELECT * FROM public.{r.table} ORDER BY {order}")
            assert {row["dims_mask"] for row in stored} == set(r.masks) and len(stored) > 10, r.table
            assert [_decoded(row) for row in computed] == [_decoded(row) for row in stored], r.table
            assert await _columns(conn, r.table, TS) == await _columns(conn, r.table), r.table
            assert await _columns(conn, r.table, TS) == list(_pg_types().items()), r.table
            # what the aggregates write is folded: each key once, in key order
            for row in computed:
                for p, _ in HISTOGRAMS:
                    assert sketch.encode(sketch.decode(row[f"{p}_hist"])) == row[f"{p}_hist"]
        # The data exercised what it should: buckets with several histogram keys at every level.
        for r in ROLLUPS:
            multi = await conn.fetchval(
                f"SELECT count(*) FROM {TS}.{r.table} WHERE length(lat_hist) > {sketch.ELEM_BYTES}")
            assert multi > 0, r.table
        total = f"SELECT sum(request_count) FROM {TS}.usage_1d WHERE dims_mask = 0"
        assert await conn.fetchval(total) == 1200


def _scans(plan: dict, prefix: str) -> int:
    """How many plan nodes scan a relation whose name starts with `prefix`."""
    own = int(plan.get("Relation Name", "").startswith(prefix))
    return own + sum(_scans(p, prefix) for p in plan.get("Plans", ()))


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_a_constant_dims_mask_reads_one_aggregate_only(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("SELECT llmmeter_ensure_partitions('2025-03-01', '2025-03-04')")
        await _build_timescale_rollups(conn)
        for r in ROLLUPS:
            async def scans(where: str, table: str = r.table) -> tuple[int, int]:
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT * FROM {TS}.{table} {where}")
                root = json.loads(plan)[0]["Plan"]
                return _scans(root, "usage_records"), _scans(root, f"{table}_history")

            # each set's aggregate reads the raw rows once (one scan per day partition), directly or
            # through the same set's aggregate below it
            raw, history = await scans("")
            assert raw > 0 and raw % len(r.sets) == 0 and history == 1, (r.table, raw, history)
            for mask in r.masks:
                assert await scans(f"WHERE dims_mask = {mask}") == (raw // len(r.sets), 1), (r.table, mask)
            assert (await scans("WHERE dims_mask = 3"))[0] == 0  # no such set: no aggregate read at all


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_timescale_retention_drops_each_level_at_its_horizon(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _build_timescale_rollups(conn)
        for minute_keep, expect_minute, expect_hour in (("30 days", "30 days", "400 days"),
                                                        ("1 day", "15 days", "400 days")):
            await conn.execute("TRUNCATE dropped")
            names = await conn.fetch(
                "SELECT * FROM llmmeter_apply_retention('14 days', '7 days', $1::text::interval, '400 days') "
                "AS n ORDER BY 1", minute_keep)
            dropped = [tuple(r) for r in await conn.fetch(
                "SELECT relation, older_than::text FROM dropped ORDER BY 1")]
            keep = {"usage_1m": expect_minute, "usage_1h": expect_hour, "usage_1d": "400 days"}
            expected = [("usage_records", "14 days"), ("usage_payloads", "7 days"),
                        *((_aggregate(r, g), keep[r.table]) for r in ROLLUPS for g in r.sets),
                        *((f"{r.table}_history", keep[r.table]) for r in ROLLUPS)]
            assert dropped == sorted(expected)
            assert [r[0] for r in names] == sorted(f"{n}_chunk" for n, _ in expected)
        # short horizons still keep the minute and hour levels as long as the level above is refreshed
        # from them: raw rows arriving up to 14 days late refresh minutes, 15 days hours
        for raw_keep, minute, hour in (("14 days", "15 days", "16 days"), ("400 days", "15 days", "17 days"),
                                       ("3 days", "4 days", "5 days")):
            await conn.execute("TRUNCATE dropped")
            await conn.fetch("SELECT * FROM llmmeter_apply_retention($1::text::interval, '7 days', '1 day', "
                             "'3 days')", raw_keep)
            horizons = dict(await conn.fetch(
                "SELECT DISTINCT left(relation, 8), older_than::text FROM dropped"))
            assert {k: v for k, v in horizons.items() if k.startswith("usage_1")} == {
                "usage_1m": minute, "usage_1h": hour, "usage_1d": "3 days"}, raw_keep


# --- a real TimescaleDB -------------------------------------------------------------------


def _bucket(t: datetime, width: str) -> datetime:
    w = {"1 minute": timedelta(minutes=1), "1 hour": timedelta(hours=1), "1 day": timedelta(days=1)}[width]
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    return origin + (t - origin) // w * w


def _terms(row: asyncpg.Record) -> dict[str, Any]:
    """rollups.MEASURES of one raw row, computed in Python."""
    def flag(v: object) -> int:
        return 0 if v is None else 1
    return {
        "request_count": 1, "error_count": int(not 200 <= row["status_code"] < 400),
        "streaming_count": int(row["streaming"]), "cache_hit_count": int(row["cache_hit"]),
        **{c: row[c] for c in ("retries", "input_tokens", "output_tokens", "cache_read_tokens",
                               "cache_write_tokens", "reasoning_tokens", "images", "audio_seconds",
                               "video_seconds", "characters", "cost")},
        "latency_us_sum": row["latency_us"],
        "ttft_us_sum": row["ttft_us"] or 0, "ttft_count": flag(row["ttft_us"]),
        "itl_us_sum": row["itl_us"] or 0.0, "itl_count": flag(row["itl_us"]),
        "tpot_us_sum": row["tpot_us"] or 0.0, "tpot_count": flag(row["tpot_us"]),
    }


def _expected(raw: list[asyncpg.Record], r: Rollup) -> dict[tuple, dict[str, Any]]:
    """Level r's rows, aggregated from raw rows in Python, independently of any SQL."""
    out: dict[tuple, dict[str, Any]] = {}
    for row in raw:
        terms = _terms(row)
        for gset in r.sets:
            key = (_bucket(row["start_time"], r.width), mask_of(gset),
                   *(row[d] if d in gset else (0 if d == "status_code" else "") for d in DIMENSIONS))
            g = out.setdefault(key, {**{m.column: 0 for m in MEASURES}, "lat_hist": defaultdict(int),
                                     "ttft_hist": defaultdict(int)})
            for c, v in terms.items():
                g[c] += v
            for p, col in HISTOGRAMS:
                if row[col] is not None:
                    g[f"{p}_hist"][sketch.key_of(row[col])] += 1
    return {k: {**v, "lat_hist": dict(v["lat_hist"]), "ttft_hist": dict(v["ttft_hist"])}
            for k, v in out.items()}


def _keyed(rows: list[asyncpg.Record]) -> dict[tuple, dict[str, Any]]:
    """View rows by (bucket, dims_mask, dimensions), histograms decoded; keys must be unique."""
    out = {}
    for row in rows:
        d = _decoded(row)
        key = tuple(d.pop(c) for c in ("bucket", "dims_mask", *DIMENSIONS))
        assert key not in out, key
        for p, _ in HISTOGRAMS:
            assert sketch.encode(d[f"{p}_hist"]) == row[f"{p}_hist"], "histograms are stored folded"
        out[key] = d
    return out


async def _refresh_all(conn: asyncpg.Connection, names: list[str]) -> None:
    """Materialise continuous aggregates wholly, in the order given (lower levels first)."""
    for name in names:
        await conn.execute(f"CALL refresh_continuous_aggregate('{name}', NULL, NULL)")


async def _materialized_rows(conn: asyncpg.Connection, cagg: str) -> int:
    mat = await conn.fetchval(
        """SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name)
           FROM timescaledb_information.continuous_aggregates WHERE view_name = $1""", cagg)
    return await conn.fetchval(f"SELECT count(*) FROM {mat}")


@pytest.mark.usefixtures("timescale_flavor_only")
async def test_timescaledb_schema_has_each_levels_aggregates_policies_and_views(
        db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        aggs = {r["view_name"]: r for r in await conn.fetch(
            "SELECT view_name, materialized_only, view_definition "
            "FROM timescaledb_information.continuous_aggregates")}
        assert set(aggs) == {_aggregate(r, g) for r in ROLLUPS for g in r.sets}
        # a new database: nothing carried over, so no cutoff in any definition, empty history tables
        assert not [n for n, a in aggs.items()
                    if a["materialized_only"] or "WHERE" in a["view_definition"].upper()]
        for r in ROLLUPS:
            assert await _columns(conn, r.table) == list(_pg_types().items()), r.table
            assert await _columns(conn, f"{r.table}_history") == list(_pg_types().items()), r.table
            assert await conn.fetchval(f"SELECT count(*) FROM {r.table}_history") == 0
        hypertables = {r[0] for r in await conn.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {f"{r.table}_history" for r in ROLLUPS} <= hypertables
        # chunks of a day for minutes, 30 days for hours and days (history tables included)
        steps = dict(await conn.fetch(
            """SELECT coalesce(a.view_name, d.hypertable_name), d.time_interval
               FROM timescaledb_information.dimensions d
               LEFT JOIN timescaledb_information.continuous_aggregates a
                 ON a.materialization_hypertable_name = d.hypertable_name
               WHERE coalesce(a.view_name, d.hypertable_name) LIKE 'usage\\_1%'"""))
        assert steps == {n: timedelta(days=1 if n.startswith("usage_1m") else 30)
                         for n in [*aggs, *(f"{r.table}_history" for r in ROLLUPS)]}
        jobs = await conn.fetch(
            """SELECT j.hypertable_name, j.schedule_interval, j.fixed_schedule, j.config, s.next_start
               FROM timescaledb_information.jobs j JOIN timescaledb_information.job_stats s USING (job_id)
               WHERE j.proc_name = 'policy_refresh_continuous_aggregate'""")
        mats = {a["materialization_hypertable_name"]: a["view_name"] for a in await conn.fetch(
            "SELECT view_name, materialization_hypertable_name "
            "FROM timescaledb_information.continuous_aggregates")}
        by_agg = {mats[j["hypertable_name"]]: j for j in jobs}
        assert set(by_agg) == set(aggs)
        for r in ROLLUPS:
            start, end, _ = REFRESH[r.table]
            for g in r.sets:
                job = by_agg[_aggregate(r, g)]
                assert job["fixed_schedule"], "staggered by initial_start"
                config = json.loads(job["config"])
                assert (config["start_offset"], config["end_offset"]) == (
                    start, {"1 minute": "00:01:00", "1 hour": "01:00:00", "1 day": "1 day"}[end]), config
        # the old objects are gone
        for gone in ("usage_1m_arrays", "usage_1h_arrays", "usage_1d_arrays", "usage_1h_s511",
                     "usage_1m_s128"):
            assert await conn.fetchval("SELECT to_regclass($1)", gone) is None, gone
        old = await conn.fetch(
            """SELECT proname FROM pg_proc WHERE proname IN ('llmmeter_hist_pairs', 'llmmeter_hist_keys_agg',
               'llmmeter_hist_counts_agg', 'llmmeter_hist_merge_keys_agg', 'llmmeter_hist_merge_counts_agg',
               'llmmeter_rollup_masks', 'llmmeter_rollup_dims', 'llmmeter_rollup_ddl',
               'llmmeter_hist_from_arrays', 'llmmeter_hist_state_keys', 'llmmeter_hist_state_counts',
               'llmmeter_hist_state_add_pairs')""")
        assert old == []
        assert await conn.fetchval(
            "SELECT array_agg(pg_get_function_identity_arguments(oid)) FROM pg_proc "
            "WHERE proname = 'llmmeter_apply_retention'") == [
                "raw_keep interval, payload_keep interval, minute_keep interval, rollup_keep interval"]


@pytest.mark.usefixtures("timescale_flavor_only")
async def test_timescaledb_rollups_equal_raw_aggregation(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        start = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=4)
        assert await conn.fetchval(_RAW, 1, 900, start) == 900
        raw = await conn.fetch("SELECT * FROM usage_records")

        async def check(how: str) -> None:
            for r in ROLLUPS:
                got = _keyed(await conn.fetch(f"SELECT * FROM {r.table}"))
                expected = _expected(raw, r)
                assert {k[1] for k in got} == set(r.masks), (how, r.table)
                assert got == expected, (how, r.table)

        await check("real time")  # nothing materialised yet: every level computed from below
        await _refresh_all(conn, [_aggregate(r, g) for r in ROLLUPS for g in r.sets])
        for r in ROLLUPS:
            for g in r.sets:
                assert await _materialized_rows(conn, _aggregate(r, g)) > 0, _aggregate(r, g)
        await check("materialised")
        # late rows: real time again above the materialised part, and the refresh folds them in
        assert await conn.fetchval(_RAW, 901, 1000, start) == 100
        raw = await conn.fetch("SELECT * FROM usage_records")
        await _refresh_all(conn, [_aggregate(r, g) for r in ROLLUPS for g in r.sets])
        await check("refreshed")


@pytest.mark.usefixtures("timescale_flavor_only")
async def test_timescaledb_constant_dims_mask_reads_one_aggregate(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        start = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=4)
        await conn.fetchval(_RAW, 1, 200, start)
        await _refresh_all(conn, [_aggregate(r, g) for r in ROLLUPS for g in r.sets])
        mats = {a["materialization_hypertable_name"]: a["view_name"] for a in await conn.fetch(
            "SELECT view_name, materialization_hypertable_name "
            "FROM timescaledb_information.continuous_aggregates")}
        chunks = {c["chunk_name"]: c["hypertable_name"] for c in await conn.fetch(
            "SELECT chunk_name, hypertable_name FROM timescaledb_information.chunks")}

        def relations(plan: dict) -> set[str]:
            name = plan.get("Relation Name", "")
            name = chunks.get(name, name)
            own = {mats.get(name, name)} if name else set()
            return own.union(*(relations(p) for p in plan.get("Plans", ())))

        for r in ROLLUPS:
            async def read(where: str, table: str = r.table) -> set[str]:
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT * FROM {table} {where}")
                return {n for n in relations(json.loads(plan)[0]["Plan"]) if re.match(r"usage_1[mhd]_s", n)}

            assert await read("") >= {_aggregate(r, g) for g in r.sets}
            for g in r.sets:
                mask = mask_of(g)
                # the aggregate, and (real-time part) the same set below it
                read_masks = {n.rsplit("_s", 1)[1] for n in await read(f"WHERE dims_mask = {mask}")}
                assert read_masks == {str(mask)}, (r.table, mask)


@pytest.mark.usefixtures("timescale_flavor_only")
async def test_timescaledb_retention_drops_chunks_per_level(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        now = datetime.now(UTC)
        for i, age in enumerate((timedelta(days=90), timedelta(days=12), timedelta(days=3))):
            await conn.fetchval(_RAW, 100 * i + 1, 100 * i + 30, now - age)
        await _refresh_all(conn, [_aggregate(r, g) for r in ROLLUPS for g in r.sets])
        dropped = [r[0] for r in await conn.fetch(
            "SELECT * FROM llmmeter_apply_retention('14 days', '14 days', '1 day', '30 days')")]
        assert dropped and all(d.startswith("_timescaledb_internal.") for d in dropped), dropped
        assert await conn.fetchval("SELECT min(start_time) FROM usage_records") > now - timedelta(days=15)
        for r in ROLLUPS:
            # the 90-day-old buckets are gone (30-day chunks at most); the 12-day-old ones stay, in the
            # minute level too though minute_keep is 1 day: the hour level is refreshed from it
            oldest = await conn.fetchval(f"SELECT min(bucket) FROM {r.table} WHERE dims_mask = 0")
            assert now - timedelta(days=15) < oldest < now - timedelta(days=11), (r.table, oldest)
        horizon = {"usage_1m": timedelta(days=15), "usage_1h": timedelta(days=30)}
        for c in await conn.fetch(
                """SELECT a.view_name, c.range_end FROM timescaledb_information.chunks c
                   JOIN timescaledb_information.continuous_aggregates a
                     ON a.materialization_hypertable_name = c.hypertable_name"""):
            keep = horizon.get(c["view_name"][:8])
            if keep is not None:
                assert c["range_end"] > now - keep - timedelta(minutes=5), dict(c)
        # running it again finds nothing more to drop
        assert await conn.fetch(
            "SELECT * FROM llmmeter_apply_retention('14 days', '14 days', '1 day', '30 days')") == []


async def _migrate(url: str, versions: range) -> None:
    """The TimescaleDB flavour's migrations of `versions`, each in its own transaction. The
    database's job scheduler runs 0002's jobs meanwhile, and 0011 (removing their retention
    policies) can deadlock with one of them: that migration is rolled back and run again."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        for mig in load_migrations("timescale"):
            if mig.version not in versions:
                continue
            for attempt in range(3):
                try:
                    async with conn.transaction():
                        await conn.execute(mig.sql)
                    break
                except asyncpg.DeadlockDetectedError:
                    if attempt == 2:
                        raise
    finally:
        await conn.close()


def _old_row(row: asyncpg.Record) -> dict[str, Any]:
    """A row of 0013's union views (usage_1h_arrays, ...) with each histogram as {key: count}."""
    d = dict(row)
    for p, _ in HISTOGRAMS:
        keys, counts = d.pop(f"{p}_keys"), d.pop(f"{p}_counts")
        assert keys == sorted(set(keys))
        d[f"{p}_hist"] = dict(zip(keys, counts, strict=True))
    return d


def _carried(old: list[dict[str, Any]], r: Rollup) -> dict[tuple, dict[str, Any]]:
    """What level r keeps of the old rows: the sets it keeps, the ones 0002 lacked summed from the
    all-dimensions rows."""
    out: dict[tuple, dict[str, Any]] = {}
    for row in old:
        for gset in r.sets:
            mask = mask_of(gset)
            if row["dims_mask"] != (mask if mask in OLD_MASKS else ALL_DIMS):
                continue
            key = (row["bucket"], mask, *(row[d] if d in gset else (0 if d == "status_code" else "")
                                          for d in DIMENSIONS))
            g = out.setdefault(key, {**{m.column: 0 for m in MEASURES}, "lat_hist": {}, "ttft_hist": {}})
            for m in MEASURES:
                g[m.column] += row[m.column]
            for p, _ in HISTOGRAMS:
                for k, c in row[f"{p}_hist"].items():
                    g[f"{p}_hist"][k] = g[f"{p}_hist"].get(k, 0) + c
    return out


@pytest.mark.usefixtures("timescale_flavor_only")
async def test_timescaledb_migration_carries_the_old_rollups_over(pg_server_url: str) -> None:
    url = await create_database(pg_server_url, template=None)
    await _migrate(url, range(1, 14))
    conn = await asyncpg.connect(url)
    try:
        # 0013's rollups over 20 days of rows, all materialised; then the raw rows older than 16 days
        # dropped, as retention would: the old aggregates keep what the raw rows no longer have.
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        for i in range(7):
            await conn.fetchval(_RAW, 300 * i + 1, 300 * i + 300, day - timedelta(days=21 - 3 * i, hours=-1))
        old_names = [f"{t}_s{m}" for t in ("usage_1m", "usage_1h", "usage_1d") for m in OLD_MASKS]
        await _refresh_all(conn, old_names)
        await conn.execute("SELECT drop_chunks('usage_records', older_than => INTERVAL '16 days')")
        oldest = await conn.fetchval("SELECT min(start_time) FROM usage_records")
        assert day - timedelta(days=16) <= oldest < day - timedelta(days=13)
        old = {r.table: [_old_row(row) for row in await conn.fetch(f"SELECT * FROM {r.table}_arrays")]
               for r in ROLLUPS}
        assert all(any(row["bucket"] < day - timedelta(days=16) for row in rows) for rows in old.values())
        expected = {r.table: _carried(old[r.table], r) for r in ROLLUPS}
        raw_before = await conn.fetchval("SELECT count(*) FROM usage_records")
    finally:
        await conn.close()

    await _migrate(url, range(14, 15))
    conn = await asyncpg.connect(url)
    try:
        cutoff = day - timedelta(days=13)  # the oldest raw row is older: 13 days, which every refresh covers
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == raw_before
        for r in ROLLUPS:
            history = await conn.fetch(f"SELECT bucket FROM {r.table}_history")
            assert history and max(h["bucket"] for h in history) < cutoff, r.table
            defs = [a["view_definition"] for a in await conn.fetch(
                "SELECT view_definition FROM timescaledb_information.continuous_aggregates "
                "WHERE view_name LIKE $1",
                f"{r.table}_s%")]
            assert all(("FROM usage_records" in d) == ("start_time >=" in d) for d in defs), defs
            assert any("start_time >=" in d for d in defs), defs

        async def check(how: str) -> None:
            for r in ROLLUPS:
                got = _keyed(await conn.fetch(f"SELECT * FROM {r.table}"))
                assert got == expected[r.table], (how, r.table)

        await check("real time")
        await _refresh_all(conn, [_aggregate(r, g) for r in ROLLUPS for g in r.sets])
        await check("materialised")
        # a record before the cutoff arriving now is stored raw but not counted (see the migration)
        late = await conn.fetchval(_RAW, 9001, 9001, cutoff - timedelta(days=1, hours=8))
        assert late == 1
        await _refresh_all(conn, [_aggregate(r, g) for r in ROLLUPS for g in r.sets])
        await check("after a record before the cutoff")
    finally:
        await conn.close()


# --- the migration file itself ---------------------------------------------------------------


def test_migration_drops_what_only_the_old_aggregates_used() -> None:
    stmts = [raw.stmt for raw in parse_sql(_text("timescale", SETS))]
    dropped = {(s.removeType.name, o.objname[-1].sval if isinstance(o, ast.ObjectWithArgs) else o)
               for s in stmts if isinstance(s, ast.DropStmt) for o in s.objects}
    assert {name for kind, name in dropped if kind == "OBJECT_AGGREGATE"} == {
        "llmmeter_hist_keys_agg", "llmmeter_hist_counts_agg", "llmmeter_hist_merge_keys_agg",
        "llmmeter_hist_merge_counts_agg"}
    assert {name for kind, name in dropped if kind == "OBJECT_FUNCTION"} >= {
        "llmmeter_hist_pairs", "llmmeter_rollup_ddl", "llmmeter_hist_from_arrays", "llmmeter_apply_retention"}
    aggs = {s.defnames[-1].sval: {d.defname.lower(): _sql(d.arg) for d in s.definition}
            for s in stmts if isinstance(s, ast.DefineStmt) and s.kind.name == "OBJECT_AGGREGATE"}
    assert {name: {k: v for k, v in opts.items() if k != "parallel"} for name, opts in aggs.items()} == {
        "llmmeter_hist_agg": {"sfunc": "llmmeter_hist_state_add_value", "stype": "bigint[]",
                              "initcond": "'{}'", "combinefunc": "llmmeter_hist_state_combine",
                              "finalfunc": "llmmeter_hist_state_elems"},
        # concatenated histograms are their sum (0013): fold once per group
        "llmmeter_hist_merge_agg": {"sfunc": "byteacat", "stype": "bytea", "initcond": "''",
                                    "combinefunc": "byteacat", "finalfunc": "llmmeter_hist_fold"}}
    assert all(opts["parallel"].lower() == "safe" for opts in aggs.values())
