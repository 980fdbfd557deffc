"""The two flavours declare the same relations, columns, indexes and functions.

Both flavours' migration files are parsed with pglast (the PostgreSQL parser,
see migration_sql.py) and compared statement by statement with each other and
with `llmmeter_common.rollups`: migration 0002 as it created the schema, and
the functions both flavours share as the latest migrations leave them. The
TimescaleDB flavour creates its rollups with the statements its generators
(`llmmeter_rollup_ddl`, 0002 and 0014) write, not statically; those are run
and checked in test_schema_timescale_rollups.py. Whichever flavour the test
database has, its rollup relations must have the same columns as the other's.
"""

from __future__ import annotations

import asyncpg
import pytest
from pglast import ast, parse_sql

from llmmeter_common.migrate import load_migrations
from llmmeter_common.rollups import (
    DIMENSIONS,
    HISTOGRAMS,
    PENDING_COLUMNS,
    ROLLUPS,
    rollup_columns,
    set_relation,
)

from migration_sql import (
    QUEUE,
    RAW,
    RELATIONS,
    _array_columns,
    _calls,
    _column_defs,
    _columns,
    _declared,
    _sql,
    _stmts,
    _tables,
    _type,
)

SHARED_FUNCTIONS = ("llmmeter_ensure_partitions", "llmmeter_apply_retention")


def _setof_type(tn: ast.TypeName) -> str:
    return ("setof " if tn.setof else "") + _type(tn)


def _functions(flavor: str) -> dict[str, ast.CreateFunctionStmt]:
    return {s.funcname[-1].sval: s for s in _stmts(flavor) if isinstance(s, ast.CreateFunctionStmt)}


def _current_functions(flavor: str) -> dict[str, ast.CreateFunctionStmt]:
    """Every function as the migrations of a flavour leave it: the latest CREATE of each name that
    no later DROP removed (overloads aside, which these functions do not have)."""
    out: dict[str, ast.CreateFunctionStmt] = {}
    for mig in load_migrations("postgres" if flavor == "postgres" else "timescale"):
        for raw in parse_sql(mig.sql):
            s = raw.stmt
            if isinstance(s, ast.CreateFunctionStmt):
                out[s.funcname[-1].sval] = s
            elif isinstance(s, ast.DropStmt) and s.removeType.name == "OBJECT_FUNCTION":
                for o in s.objects:
                    out.pop(o.objname[-1].sval, None)
    return out


def _inputs(fn: ast.CreateFunctionStmt) -> list[str]:
    """Types of a function's input parameters (IN, INOUT, VARIADIC or unmarked)."""
    return [_type(p.argType) for p in fn.parameters or () if p.mode in ("i", "b", "v", "d")]


# --- syntax: both flavours ----------------------------------------------------


def test_postgres_file_parses_and_creates_every_relation_once() -> None:
    created = [s.relation.relname for s in _stmts("postgres") if isinstance(s, ast.CreateStmt)]
    assert sorted(created) == sorted(RELATIONS)


def test_timescale_file_creates_the_raw_tables_and_runs_the_generated_rollup_ddl() -> None:
    stmts = _stmts("timescale")
    assert sorted(s.relation.relname for s in stmts if isinstance(s, ast.CreateStmt)) == sorted([*RAW, QUEUE])
    # Every rollup relation comes from llmmeter_rollup_ddl() (checked live below), none statically.
    assert not [s for s in stmts if isinstance(s, ast.CreateTableAsStmt | ast.ViewStmt)]
    kinds = [type(s).__name__ for s in stmts]
    create = next(i for i, s in enumerate(stmts)
                  if isinstance(s, ast.CreateFunctionStmt) and s.funcname[-1].sval == "llmmeter_rollup_ddl")
    (do,) = [i for i, k in enumerate(kinds) if k == "DoStmt"]
    body = stmts[do].args[0].arg.sval
    assert "SELECT llmmeter_rollup_ddl()" in body and "EXECUTE stmt" in body
    drop = stmts[do + 1]
    assert create < do and isinstance(drop, ast.DropStmt), "the generator is dropped right after use"
    assert [o.objname[-1].sval for o in drop.objects] == ["llmmeter_rollup_ddl"]


def test_raw_tables_are_identical_in_both_flavors() -> None:
    for table in RAW:
        pg = [_sql(c) for c in _column_defs("postgres", table)]
        ts = [_sql(c) for c in _column_defs("timescale", table)]
        assert ts == pg, table
        pg_pk = [_sql(c) for c in _tables("postgres")[table].tableElts if isinstance(c, ast.Constraint)]
        ts_pk = [_sql(c) for c in _tables("timescale")[table].tableElts if isinstance(c, ast.Constraint)]
        assert ts_pk == pg_pk == ["PRIMARY KEY (start_time, request_id)"], table
    assert [n for n, _ in _declared("timescale", "usage_payloads")] == [
        "start_time", "request_id", "request", "response"]


def test_rollup_queue_is_identical_in_both_flavors_and_holds_what_rollups_need() -> None:
    pg = [_sql(c) for c in _column_defs("postgres", QUEUE)]
    assert [_sql(c) for c in _column_defs("timescale", QUEUE)] == pg
    assert [n for n, _ in _declared("postgres", QUEUE)] == list(PENDING_COLUMNS)


def test_request_id_index_in_both_flavors() -> None:
    for flavor in ("postgres", "timescale"):
        idx = [s for s in _stmts(flavor) if isinstance(s, ast.IndexStmt)]
        assert [(i.idxname, i.relation.relname, [p.name for p in i.indexParams]) for i in idx] == [
            ("usage_records_request_id_idx", "usage_records", ["request_id"])], flavor


def test_postgres_rollup_tables_have_the_rollup_columns() -> None:
    for r in ROLLUPS:
        assert [n for n, _ in _declared("postgres", r.table)] == _array_columns(), r.table
        assert _declared("postgres", r.table) == _declared("postgres", "usage_1m")
    assert rollup_columns()[:2 + len(DIMENSIONS)] == ["bucket", "dims_mask", *DIMENSIONS]


def test_histogram_aggregates_are_declared_parallel_safe_with_shared_state() -> None:
    aggs = {s.defnames[-1].sval: s for s in _stmts("timescale")
            if isinstance(s, ast.DefineStmt) and s.kind.name == "OBJECT_AGGREGATE"}
    assert set(aggs) == {"llmmeter_hist_keys_agg", "llmmeter_hist_counts_agg",
                         "llmmeter_hist_merge_keys_agg", "llmmeter_hist_merge_counts_agg"}
    fns = _functions("timescale")
    for name, agg in aggs.items():
        opts = {d.defname.lower(): _sql(d.arg) for d in agg.definition}
        assert opts["parallel"].lower() == "safe", name
        assert opts["initcond"] == "'{}'", name
        for role in ("sfunc", "combinefunc", "finalfunc"):
            fn = fns[opts[role]]
            fopts = {o.defname: o.arg.sval for o in fn.options if o.defname in ("volatility", "parallel")}
            assert fopts == {"volatility": "immutable", "parallel": "safe"}, (name, role, fopts)
    # keys and counts of one histogram share sfunc/stype/initcond, so PostgreSQL computes the state once
    for family in ("llmmeter_hist_{}_agg", "llmmeter_hist_merge_{}_agg"):
        keys, counts = (
            {d.defname.lower(): _sql(d.arg) for d in aggs[family.format(part)].definition
             if d.defname.lower() in ("sfunc", "stype", "initcond")}
            for part in ("keys", "counts"))
        assert keys == counts, family


@pytest.mark.parametrize("func", SHARED_FUNCTIONS)
def test_shared_functions_have_the_same_signature_in_both_flavors(func: str) -> None:
    """As 0002 created them (0014 gives retention a fourth horizon: the next test)."""
    pg, ts = _functions("postgres")[func], _functions("timescale")[func]
    assert _inputs(ts) == _inputs(pg)
    assert [p.name for p in ts.parameters] == [p.name for p in pg.parameters]
    assert _setof_type(ts.returnType) == _setof_type(pg.returnType)
    expected = {"llmmeter_ensure_partitions": (["timestamptz", "timestamptz"], "void"),
                "llmmeter_apply_retention": (["interval", "interval", "interval"], "setof text")}
    assert (_inputs(pg), _setof_type(pg.returnType)) == expected[func]


@pytest.mark.parametrize("func", SHARED_FUNCTIONS)
def test_shared_functions_keep_the_same_signature_in_both_flavors(func: str) -> None:
    """As the latest migrations leave them (0014: a retention horizon per rollup level)."""
    pg, ts = _current_functions("postgres")[func], _current_functions("timescale")[func]
    assert _inputs(ts) == _inputs(pg)
    assert [p.name for p in ts.parameters] == [p.name for p in pg.parameters]
    assert _setof_type(ts.returnType) == _setof_type(pg.returnType)
    expected = {"llmmeter_ensure_partitions": (["timestamptz", "timestamptz"], "void"),
                "llmmeter_apply_retention": (["interval"] * 4, "setof text")}
    assert (_inputs(pg), _setof_type(pg.returnType)) == expected[func]
    if func == "llmmeter_apply_retention":
        assert [p.name for p in pg.parameters] == ["raw_keep", "payload_keep", "minute_keep", "rollup_keep"]


def test_shared_functions_exist_in_both_flavors_alike() -> None:
    """What both flavours' migrations leave of the functions queries and writers call."""
    pg, ts = _current_functions("postgres"), _current_functions("timescale")
    shared = {"llmmeter_hist_key", "llmmeter_is_error", "llmmeter_hist_elems", "llmmeter_hist_unnest",
              "llmmeter_hist_fold", *SHARED_FUNCTIONS}
    assert shared <= set(pg) & set(ts)
    for name in shared - set(SHARED_FUNCTIONS):
        assert _sql(pg[name]) == _sql(ts[name]), name
    gone = {"llmmeter_hist_pairs", "llmmeter_hist_merge"}
    assert not gone & (set(pg) | set(ts))


async def test_live_rollup_relations_have_the_rollup_columns(db_pool: asyncpg.Pool) -> None:
    """Tables on PostgreSQL, views over continuous aggregates on TimescaleDB: the same columns, in
    rollups.rollup_columns() order, typed as the PostgreSQL flavour declares them (histograms as
    0013's bytea)."""
    types = dict(_declared("postgres", "usage_1m"))
    types.update((f"{p}_hist", "bytea") for p, _ in HISTOGRAMS)
    want = [(c, types[c]) for c in rollup_columns()]
    async with db_pool.acquire() as conn:
        for r in ROLLUPS:
            assert await _columns(conn, r.table) == want, r.table
            for mask in r.masks:  # each set's own relation (0016), alike
                assert await _columns(conn, set_relation(r.table, mask)) == want, (r.table, mask)
        sets = await conn.fetch(r"SELECT relname FROM pg_class WHERE relname ~ '^usage_1[mhd]_set\d+$' "
                                "AND relnamespace = 'public'::regnamespace")
    expected = sorted(set_relation(r.table, m) for r in ROLLUPS for m in r.masks)
    assert sorted(s["relname"] for s in sets) == expected


def test_timescale_static_policies() -> None:
    stmts = _stmts("timescale")
    hypertables = _calls(stmts, "create_hypertable")
    assert sorted(rel for rel, _ in hypertables) == sorted(RAW)
    for stmt in stmts:
        if isinstance(stmt, ast.SelectStmt) and "create_hypertable" in _sql(stmt):
            assert "by_range('start_time', CAST('1 day' AS interval))" in _sql(stmt)
    days = "CAST('{} days' AS interval)".format
    # the continuous aggregates' policies are generated (test_generated_policies)
    assert _calls(stmts, "add_continuous_aggregate_policy") == []
    assert dict(_calls(stmts, "add_retention_policy")) == {
        "usage_records": {"drop_after": days(14)}, "usage_payloads": {"drop_after": days(14)}}
    assert _calls(stmts, "add_compression_policy") == [("usage_records", {"compress_after": days(2)})]
    (alter,) = [s for s in stmts if isinstance(s, ast.AlterTableStmt)]
    assert alter.relation.relname == "usage_records"
    settings = {(d.defnamespace, d.defname): d.arg.sval if d.arg else None for d in alter.cmds[0].def_}
    assert settings[("timescaledb", "compress_segmentby")] == "model"
    assert settings[("timescaledb", "compress_orderby")].startswith("start_time DESC")
