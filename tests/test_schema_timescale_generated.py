"""The TimescaleDB flavour's rollup DDL (migration 0014) as generated, against `llmmeter_common.rollups`.

Any flavour: the generator only writes text, parsed here with pglast; plus the migration file's
own statements (what it drops, the histogram aggregates it defines).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pglast import ast, parse_sql
from timescale_rollups import (
    OLD_MASKS,
    REFRESH,
    SETS,
    _aggregate,
    _below,
    _branches,
    _col,
    _generated,
    _hierarchical,
    _install_timescale_functions,
    _interval,
    _pg_types,
    _policies,
)

from llmmeter_common import sketch
from llmmeter_common.migrate import load_migrations
from llmmeter_common.rollups import (
    ALL_DIMS,
    DIMENSIONS,
    HISTOGRAMS,
    MEASURES,
    ROLLUPS,
    mask_of,
    rollup_columns,
)

from migration_sql import _output_names, _sql, _text, _type


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
