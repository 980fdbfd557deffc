"""The TimescaleDB flavour's rollups, as `llmmeter_rollup_ddl()` generates them, checked on PostgreSQL.

TimescaleDB is not available to the tests, so the flavour's functions and
aggregates are installed in a schema of their own, with stand-ins for
`time_bucket` and `drop_chunks`. The statements `llmmeter_rollup_ddl()`
generates (one continuous aggregate per grouping set and level, a UNION ALL
view per level) are parsed and checked against `llmmeter_common.rollups`;
then, built with plain views for the continuous aggregates, the union views
must reproduce, row for row and type for type, the rollup tables the
PostgreSQL flavour's ingest path maintains.
"""

from __future__ import annotations

import json

import asyncpg
from pglast import ast, parse_sql
from pglast.enums import SetOperation

from llmmeter_common import sketch
from llmmeter_common.rollups import (
    DIMENSIONS,
    GROUPING_SETS,
    HISTOGRAMS,
    MEASURES,
    ROLLUPS,
    mask_of,
    rollup_ctes,
)

from migration_sql import (
    PACKS,
    PAIRS,
    QUEUE,
    RAW,
    RELATIONS,
    _array_columns,
    _calls,
    _columns,
    _declared,
    _output_names,
    _parse,
    _sql,
    _text,
    _type,
)

#: dims_mask of every grouping set, in rollups.GROUPING_SETS order.
MASKS = [mask_of(g) for g in GROUPING_SETS]
#: Per level: the relation each set's continuous aggregate reads ({} = its mask), and its time column.
SOURCES = {"usage_1m": ("usage_records", "start_time"), "usage_1h": ("usage_1m_s{}", "bucket"),
           "usage_1d": ("usage_1h_s{}", "bucket")}
#: Per level: refresh policy start_offset, end_offset, schedule_interval.
REFRESH = {"usage_1m": ("14 days", "1 minute", "1 minute"), "usage_1h": ("15 days", "1 hour", "5 minutes"),
           "usage_1d": ("16 days", "1 day", "1 hour")}
#: Schema the TimescaleDB flavour's rollups are built in (as plain views) by the live tests.
TS = "ts"


def _aggregate(table: str, gset: tuple[str, ...]) -> str:
    return f"{table}_s{mask_of(gset)}"


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


# --- live PostgreSQL: the TimescaleDB flavour's plain-SQL parts ------------------


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
"""


async def _install_timescale_plain_sql(conn: asyncpg.Connection) -> None:
    """In schema TS, first on the search path: every function and aggregate of the TimescaleDB
    flavour (llmmeter_rollup_ddl included) plus stand-ins for time_bucket and drop_chunks."""
    await conn.execute(f"CREATE SCHEMA {TS}; SET search_path = {TS}, public")
    text = _text("timescale")
    for raw in _parse("timescale"):
        s = raw.stmt
        if isinstance(s, ast.CreateFunctionStmt) or (
                isinstance(s, ast.DefineStmt) and s.kind.name == "OBJECT_AGGREGATE"):
            await conn.execute(text[raw.stmt_location : raw.stmt_location + raw.stmt_len])
    await conn.execute(_STANDINS)


async def _generated(conn: asyncpg.Connection) -> list[tuple[str, ast.Node]]:
    """llmmeter_rollup_ddl()'s statements, in order, with their parse trees."""
    out = []
    for sql in await conn.fetchval("SELECT array_agg(s) FROM llmmeter_rollup_ddl() AS s"):
        (raw,) = parse_sql(sql)
        out.append((sql, raw.stmt))
    return out


async def _build_timescale_rollups(conn: asyncpg.Connection) -> None:
    """Runs the generated DDL in schema TS, each continuous aggregate as a plain view of its query
    and the policy calls against no-op stand-ins."""
    await conn.execute("""
        CREATE FUNCTION add_continuous_aggregate_policy(r regclass, start_offset interval,
            end_offset interval, schedule_interval interval) RETURNS integer LANGUAGE sql AS 'SELECT 1';
        CREATE FUNCTION add_retention_policy(r regclass, drop_after interval) RETURNS integer
            LANGUAGE sql AS 'SELECT 1'""")
    for sql, stmt in await _generated(conn):
        if isinstance(stmt, ast.CreateTableAsStmt):
            sql = f"CREATE VIEW {stmt.into.rel.relname} AS {_sql(stmt.query)}"
        await conn.execute(sql)
    await conn.execute(_text("timescale", PAIRS))  # search_path: TS first
    await conn.execute(_text("timescale", PACKS))


async def test_rollup_shape_functions_follow_rollups(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        assert await conn.fetchval("SELECT llmmeter_rollup_dims()") == list(DIMENSIONS)
        masks = [r[0] for r in await conn.fetch("SELECT * FROM llmmeter_rollup_masks()")]
        assert masks == MASKS
    assert len(set(MASKS)) == len(MASKS) == len(DIMENSIONS) + 2


async def test_generated_ddl_creates_an_aggregate_per_set_and_level_then_the_views(
        db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        stmts = [s for _, s in await _generated(conn)]
    created = [s.into.rel.relname if isinstance(s, ast.CreateTableAsStmt) else s.view.relname
               for s in stmts if isinstance(s, ast.CreateTableAsStmt | ast.ViewStmt)]
    # level by level, each level's aggregates before its view (and before the level above reads them)
    assert created == [name for r in ROLLUPS
                       for name in [*(_aggregate(r.table, g) for g in GROUPING_SETS), r.table]]
    assert {s.view.relname for s in stmts if isinstance(s, ast.ViewStmt)} == set(RELATIONS) - {*RAW, QUEUE}


async def test_generated_continuous_aggregates_group_by_their_set_only(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        aggs = {s.into.rel.relname: s for _, s in await _generated(conn)
                if isinstance(s, ast.CreateTableAsStmt)}
    pg_types = dict(_declared("postgres", "usage_1m"))
    hist_cols = [f"{p}_{s}" for p, _ in HISTOGRAMS for s in ("keys", "counts")]
    assert len(aggs) == len(ROLLUPS) * len(GROUPING_SETS)
    for r in ROLLUPS:
        for gset in GROUPING_SETS:
            name = _aggregate(r.table, gset)
            view = aggs[name]
            options = {(o.defnamespace, o.defname): o.arg.sval if o.arg else None for o in view.into.options}
            assert options == {("timescaledb", "continuous"): None,
                               ("timescaledb", "materialized_only"): "false"}, name
            assert view.into.skipData, f"{name} must be created WITH NO DATA (inside a transaction)"
            source, time_col = SOURCES[r.table]
            q = view.query
            assert [f.relname for f in q.fromClause] == [source.format(mask_of(gset))], name
            assert q.whereClause is None and q.havingClause is None, name
            # bucket = time_bucket(INTERVAL '<width>', <time column of the source>)
            bucket = q.targetList[0].val
            assert isinstance(bucket, ast.FuncCall) and bucket.funcname[-1].sval == "time_bucket", name
            assert _interval(bucket.args[0]) == r.width and _col(bucket.args[1]) == time_col, name
            # GROUP BY the bucket EXPRESSION (a bare `bucket` would be the source's column) and the set
            group = list(q.groupClause)
            assert _sql(group[0]) == _sql(bucket), f"{name}: GROUP BY must repeat the time_bucket call"
            assert [_col(g) for g in group[1:]] == list(gset), name
            assert _output_names(q) == ["bucket", *gset, *(m.column for m in MEASURES), *hist_cols], name
            assert [_col(t.val) for t in q.targetList[1 : 1 + len(gset)]] == list(gset), name
            targets = {t.name: t.val for t in q.targetList}
            for m in MEASURES:
                node = targets[m.column]
                assert isinstance(node, ast.TypeCast), f"{name}.{m.column} must be cast to the table type"
                assert _type(node.typeName) == pg_types[m.column], f"{name}.{m.column}"
                agg = node.arg
                assert isinstance(agg, ast.FuncCall) and agg.funcname[-1].sval == "sum", f"{name}.{m.column}"
                (arg,) = agg.args
                if r.table == "usage_1m":
                    expected = parse_sql(f"SELECT {m.raw_expr}")[0].stmt.targetList[0].val
                    assert _sql(arg) == _sql(expected), f"{name}.{m.column}"
                else:
                    assert _col(arg) == m.column, f"{name}.{m.column}"
            for prefix, raw_col in HISTOGRAMS:
                for part in ("keys", "counts"):
                    call = targets[f"{prefix}_{part}"]
                    assert isinstance(call, ast.FuncCall), f"{name}.{prefix}_{part}"
                    args = [_col(a) for a in call.args]
                    if r.table == "usage_1m":
                        assert (call.funcname[-1].sval, args) == (f"llmmeter_hist_{part}_agg", [raw_col])
                    else:
                        assert (call.funcname[-1].sval, args) == (
                            f"llmmeter_hist_merge_{part}_agg", [f"{prefix}_keys", f"{prefix}_counts"])


async def test_generated_views_union_every_set_with_constant_masks(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        views = {s.view.relname: s for _, s in await _generated(conn) if isinstance(s, ast.ViewStmt)}
    for r in ROLLUPS:
        branches = _branches(views[r.table].query)
        assert len(branches) == len(GROUPING_SETS), r.table
        for gset, branch in zip(GROUPING_SETS, branches, strict=True):
            where = f"{r.table}: {_aggregate(r.table, gset)}"
            assert [f.relname for f in branch.fromClause] == [_aggregate(r.table, gset)], where
            assert branch.whereClause is None and branch.groupClause is None, where
            assert _output_names(branch) == _array_columns(), where
            mask = branch.targetList[1].val  # a constant, so `WHERE dims_mask = c` prunes branches
            assert isinstance(mask, ast.TypeCast) and _type(mask.typeName) == "int2", where
            assert mask.arg.val.ival == mask_of(gset), where
            for d, t in zip(DIMENSIONS, branch.targetList[2 : 2 + len(DIMENSIONS)], strict=True):
                if d in gset:
                    assert _col(t.val) == d, (where, d)
                elif d == "status_code":
                    assert isinstance(t.val, ast.A_Const) and t.val.val.ival == 0, (where, d)
                else:
                    assert _sql(t.val) == "CAST('' AS text)", (where, d)
            rest = branch.targetList[2 + len(DIMENSIONS):]
            assert [_col(t.val) for t in rest] == _array_columns()[2 + len(DIMENSIONS):], where


async def test_generated_policies(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        stmts = [s for _, s in await _generated(conn)]
    interval = "CAST('{}' AS interval)".format
    refresh = _calls(stmts, "add_continuous_aggregate_policy")
    retention = _calls(stmts, "add_retention_policy")
    expected_refresh, expected_retention = [], []
    for r in ROLLUPS:
        start, end, every = REFRESH[r.table]
        for gset in GROUPING_SETS:
            name = _aggregate(r.table, gset)
            expected_refresh.append((name, {"start_offset": interval(start), "end_offset": interval(end),
                                            "schedule_interval": interval(every)}))
            expected_retention.append((name, {"drop_after": interval("400 days")}))
    assert refresh == expected_refresh
    assert retention == expected_retention


async def test_timescale_retention_drops_every_relation(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        await _build_timescale_rollups(conn)
        names = await conn.fetch(
            "SELECT * FROM llmmeter_apply_retention('14 days', '7 days', '400 days') AS n ORDER BY 1")
        dropped = [tuple(r) for r in await conn.fetch(
            "SELECT relation, older_than::text FROM dropped ORDER BY 1")]
    expected = [("usage_records", "14 days"), ("usage_payloads", "7 days"),
                *((_aggregate(r.table, g), "400 days") for r in ROLLUPS for g in GROUPING_SETS)]
    assert dropped == sorted(expected)
    assert [r[0] for r in names] == sorted(f"{n}_chunk" for n, _ in expected)


async def test_histogram_aggregates_edge_cases(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        agg = "SELECT llmmeter_hist_keys_agg(v), llmmeter_hist_counts_agg(v) FROM (VALUES {}) AS t(v)"
        assert tuple(await conn.fetchrow(agg.format("(NULL::bigint)"))) == ([], [])
        no_rows = "SELECT llmmeter_hist_keys_agg(v), llmmeter_hist_counts_agg(v) FROM (SELECT 1::bigint) t(v)"
        assert tuple(await conn.fetchrow(no_rows + " WHERE false")) == ([], [])
        row = await conn.fetchrow(agg.format("(1000::bigint), (NULL), (0), (1), (1000), (5), (999999)"))
        keys = await conn.fetchval(
            "SELECT array_agg(llmmeter_hist_key(v) ORDER BY v) FROM unnest($1::bigint[]) v",
            [0, 5, 1000, 999999])
        assert tuple(row) == (keys, [2, 1, 2, 1])
        merged = await conn.fetchrow(
            """SELECT llmmeter_hist_merge_keys_agg(k, c), llmmeter_hist_merge_counts_agg(k, c)
               FROM (VALUES ('{3,7}'::integer[], '{1,2}'::bigint[]), ('{}', '{}'), (NULL, NULL),
                            ('{0,7,900}', '{4,5,6}')) AS t(k, c)""")
        assert tuple(merged) == ([0, 3, 7, 900], [4, 1, 7, 6])
        # the parallel/partial-aggregation combine function, including an empty side
        combined = await conn.fetchval(
            "SELECT llmmeter_hist_state_keys(llmmeter_hist_state_combine("
            "llmmeter_hist_state_combine('{}', '[5:6]={1,NULL}'), '[2:5]={1,NULL,NULL,3}'))")
        assert combined == [2, 5]


# --- the union views against the PostgreSQL flavour's rollup tables ----------------


_INSERT_COLS = (
    "start_time, request_id, end_time, latency_us, ttft_us, itl_us, tpot_us, streaming, status_code, "
    "error_type, model, model_alias, provider, call_type, user_name, team, account, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, images, audio_seconds, "
    "video_seconds, characters, cost, cache_hit, retries"
)

#: Rows i = $1..$2 spread over ~5 hours on each of 3 UTC days, a few per minute and dimension set,
#: with NULL ttft/itl/tpot, tiny latencies (key 0) and dyadic floats (exact sums in any order).
_WRITE = f"""
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
           'chat', 'ana', 'payments', 'key-1',
           i * 3, i * 2, i % 5, i % 3, i % 7, i % 2, (i % 7) * 0.1, (i % 3) * 0.5, i * 11, i * 0.00001,
           i % 6 = 0, i % 3
    FROM generate_series($1::integer, $2::integer) AS i,
         LATERAL (SELECT TIMESTAMPTZ '2025-03-01 09:00:00+00' + (i % 3) * INTERVAL '1 day'
                         + ((i * 37) % 45) * INTERVAL '7 minutes' + (i % 50) * INTERVAL '1 second' AS t,
                         (CASE WHEN i % 13 = 0 THEN i % 2 ELSE (i * 104729) % 5000000 END)::bigint AS latency
                 ) AS x
    RETURNING *
),
{rollup_ctes("ins")}
SELECT count(*) FROM ins
"""


async def _write_postgres_rollups(conn: asyncpg.Connection) -> None:
    """Two batches into the same buckets through the PostgreSQL flavour's ingest statement."""
    await conn.execute("SELECT llmmeter_ensure_partitions('2025-03-01', '2025-03-04')")
    assert await conn.fetchval(_WRITE, 1, 600) == 600
    assert await conn.fetchval(_WRITE, 601, 1200) == 600


def _by_key(row: asyncpg.Record) -> dict[str, object]:
    """A rollup row with each histogram as {key: count}: pair order and repeated keys (appended
    by upserts until compaction) do not change what a histogram says."""
    out = dict(row)
    for p in ("lat", "ttft"):
        out[p] = sketch.merge([sketch.split(out.pop(f"{p}_hist"))])
    return out


async def test_continuous_aggregate_queries_reproduce_the_postgres_rollups(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        # The PostgreSQL rollups are upserted (histogram pairs appended), while the union views over the
        # continuous aggregate queries recompute from scratch, hierarchically; both must agree.
        await _write_postgres_rollups(conn)
        await _install_timescale_plain_sql(conn)
        await _build_timescale_rollups(conn)
        order = ", ".join(str(i) for i in range(1, 3 + len(DIMENSIONS)))
        for r in ROLLUPS:
            computed = await conn.fetch(f"SELECT * FROM {TS}.{r.table} ORDER BY {order}")
            stored = await conn.fetch(f"SELECT * FROM public.{r.table} ORDER BY {order}")
            per_mask = {row["dims_mask"] for row in stored}
            assert per_mask == set(MASKS) and len(stored) > 10, r.table
            assert [_by_key(row) for row in computed] == [_by_key(row) for row in stored], r.table
            assert await _columns(conn, r.table, TS) == await _columns(conn, r.table), r.table
        # The data exercised what it should: buckets with several histogram keys at every level.
        for r in ROLLUPS:
            multi = await conn.fetchval(
                f"SELECT count(*) FROM {TS}.{r.table} WHERE cardinality(lat_hist) > 1")
            assert multi > 0, r.table
        total = f"SELECT sum(request_count) FROM {TS}.usage_1d WHERE dims_mask = 0"
        assert await conn.fetchval(total) == 1200


def _scans(plan: dict, prefix: str) -> int:
    """How many plan nodes scan a relation whose name starts with `prefix`."""
    own = int(plan.get("Relation Name", "").startswith(prefix))
    return own + sum(_scans(p, prefix) for p in plan.get("Plans", ()))


async def test_a_constant_dims_mask_reads_one_aggregate_only(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("SELECT llmmeter_ensure_partitions('2025-03-01', '2025-03-04')")
        await _install_timescale_plain_sql(conn)
        await _build_timescale_rollups(conn)

        async def scans(where: str) -> int:
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT * FROM {TS}.usage_1d {where}")
            return _scans(json.loads(plan)[0]["Plan"], "usage_records")

        everything = await scans("")
        assert everything > 0
        for mask in MASKS:
            assert await scans(f"WHERE dims_mask = {mask}") * len(MASKS) == everything, mask
        assert await scans("WHERE dims_mask = 3") == 0  # no such set: nothing read at all
