"""The two flavours of migration 0002 declare the same relations, columns and functions.

TimescaleDB is not available to the tests, so the TimescaleDB flavour is
checked in two ways: syntactically (both files parsed with pglast, the
PostgreSQL parser) against the PostgreSQL flavour and `llmmeter_common.rollups`,
and, for the parts that are plain PostgreSQL, by running them: its histogram
aggregates and the SELECT of each continuous aggregate (with a `time_bucket`
stand-in) must reproduce, row for row and type for type, the rollup tables the
PostgreSQL flavour's ingest path maintains.
"""

from __future__ import annotations

from importlib import resources

import asyncpg
import pytest
from pglast import ast, parse_sql
from pglast.stream import RawStream

from llmmeter_common.rollups import DIMENSIONS, HISTOGRAMS, MEASURES, ROLLUPS, rollup_columns, rollup_ctes

RELATIONS = ("usage_records", "usage_payloads", "usage_1m", "usage_1h", "usage_1d")
RAW = ("usage_records", "usage_payloads")
SHARED_FUNCTIONS = ("llmmeter_ensure_partitions", "llmmeter_apply_retention")
#: The relation each continuous aggregate reads, and its time column there.
SOURCES = {"usage_1m": ("usage_records", "start_time"), "usage_1h": ("usage_1m", "bucket"),
           "usage_1d": ("usage_1h", "bucket")}


def _text(flavor: str) -> str:
    return resources.files("llmmeter_common.migrations").joinpath(f"0002_tables.{flavor}.sql").read_text()


def _parse(flavor: str) -> list[ast.RawStmt]:
    return list(parse_sql(_text(flavor)))


def _stmts(flavor: str) -> list[ast.Node]:
    return [raw.stmt for raw in _parse(flavor)]


def _sql(node: ast.Node) -> str:
    return RawStream()(node)


def _type(tn: ast.TypeName) -> str:
    """A type as information_schema.columns.udt_name spells it: int8, _int4, timestamptz."""
    name = tn.names[-1].sval
    return f"_{name}" if tn.arrayBounds else name


def _setof_type(tn: ast.TypeName) -> str:
    return ("setof " if tn.setof else "") + _type(tn)


def _tables(flavor: str) -> dict[str, ast.CreateStmt]:
    return {s.relation.relname: s for s in _stmts(flavor) if isinstance(s, ast.CreateStmt)}


def _views(flavor: str) -> dict[str, ast.CreateTableAsStmt]:
    return {s.into.rel.relname: s for s in _stmts(flavor) if isinstance(s, ast.CreateTableAsStmt)}


def _column_defs(flavor: str, table: str) -> list[ast.ColumnDef]:
    """The column definitions of a CREATE TABLE, following `LIKE other` within the same file."""
    out: list[ast.ColumnDef] = []
    for elt in _tables(flavor)[table].tableElts:
        if isinstance(elt, ast.ColumnDef):
            out.append(elt)
        elif isinstance(elt, ast.TableLikeClause):
            out += _column_defs(flavor, elt.relation.relname)
    return out


def _declared(flavor: str, table: str) -> list[tuple[str, str]]:
    """(column, udt_name) of a table in declaration order."""
    return [(c.colname, _type(c.typeName)) for c in _column_defs(flavor, table)]


def _output_names(view: ast.CreateTableAsStmt) -> list[str]:
    return [t.name or t.val.fields[-1].sval for t in view.query.targetList]


def _functions(flavor: str) -> dict[str, ast.CreateFunctionStmt]:
    return {s.funcname[-1].sval: s for s in _stmts(flavor) if isinstance(s, ast.CreateFunctionStmt)}


def _inputs(fn: ast.CreateFunctionStmt) -> list[str]:
    """Types of a function's input parameters (IN, INOUT, VARIADIC or unmarked)."""
    return [_type(p.argType) for p in fn.parameters or () if p.mode in ("i", "b", "v", "d")]


def _calls(flavor: str, func: str) -> list[tuple[str, dict[str, str]]]:
    """Top-level `SELECT func('relation', name => value...)`: (relation, {arg name: SQL})."""
    out = []
    for s in _stmts(flavor):
        if not isinstance(s, ast.SelectStmt) or s.fromClause or len(s.targetList) != 1:
            continue
        call = s.targetList[0].val
        if isinstance(call, ast.FuncCall) and call.funcname[-1].sval == func:
            first, *rest = call.args
            named = {a.name: _sql(a.arg) for a in rest if isinstance(a, ast.NamedArgExpr)}
            out.append((first.val.sval, named))
    return out


def _interval(node: ast.Node) -> str:
    """The literal of INTERVAL '...'."""
    assert isinstance(node, ast.TypeCast) and _type(node.typeName) == "interval", _sql(node)
    return node.arg.val.sval


def _col(node: ast.Node) -> str:
    assert isinstance(node, ast.ColumnRef), _sql(node)
    return node.fields[-1].sval


# --- syntax: both flavours ----------------------------------------------------


@pytest.mark.parametrize("flavor", ["postgres", "timescale"])
def test_file_parses_and_creates_every_relation_once(flavor: str) -> None:
    stmts = _stmts(flavor)
    assert stmts, "no statements"
    created = [*_tables(flavor), *_views(flavor)]
    assert sorted(created) == sorted(RELATIONS)
    assert len(created) == len(set(created)) == len(RELATIONS)


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


def test_request_id_index_in_both_flavors() -> None:
    for flavor in ("postgres", "timescale"):
        idx = [s for s in _stmts(flavor) if isinstance(s, ast.IndexStmt)]
        assert [(i.idxname, i.relation.relname, [p.name for p in i.indexParams]) for i in idx] == [
            ("usage_records_request_id_idx", "usage_records", ["request_id"])], flavor


def test_postgres_rollup_tables_have_the_rollup_columns() -> None:
    for r in ROLLUPS:
        assert [n for n, _ in _declared("postgres", r.table)] == rollup_columns(), r.table
        assert _declared("postgres", r.table) == _declared("postgres", "usage_1m")


def test_continuous_aggregates_have_the_rollup_columns_in_order() -> None:
    views = _views("timescale")
    for r in ROLLUPS:
        assert _output_names(views[r.table]) == rollup_columns(), r.table


def test_continuous_aggregates_are_real_time_hierarchical_and_without_data() -> None:
    views = _views("timescale")
    for r in ROLLUPS:
        view = views[r.table]
        options = {(o.defnamespace, o.defname): o.arg.sval if o.arg else None for o in view.into.options}
        assert options == {("timescaledb", "continuous"): None,
                           ("timescaledb", "materialized_only"): "false"}, r.table
        assert view.into.skipData, f"{r.table} must be created WITH NO DATA (inside a transaction)"
        source, time_col = SOURCES[r.table]
        q = view.query
        assert [f.relname for f in q.fromClause] == [source], r.table
        assert q.whereClause is None and q.havingClause is None, r.table
        # bucket = time_bucket(INTERVAL '<width>', <time column of the source>)
        bucket = q.targetList[0].val
        assert isinstance(bucket, ast.FuncCall) and bucket.funcname[-1].sval == "time_bucket", r.table
        assert _interval(bucket.args[0]) == r.width and _col(bucket.args[1]) == time_col, r.table
        # GROUP BY the bucket EXPRESSION (a bare `bucket` would be the source's column) and the dimensions
        group = list(q.groupClause)
        assert _sql(group[0]) == _sql(bucket), f"{r.table}: GROUP BY must repeat the time_bucket call"
        assert [_col(g) for g in group[1:]] == list(DIMENSIONS), r.table
        assert [_col(t.val) for t in q.targetList[1 : 1 + len(DIMENSIONS)]] == list(DIMENSIONS)


def test_continuous_aggregate_measures_follow_rollups_and_postgres_types() -> None:
    pg_types = dict(_declared("postgres", "usage_1m"))
    views = _views("timescale")
    for r in ROLLUPS:
        targets = {t.name: t.val for t in views[r.table].query.targetList}
        for m in MEASURES:
            node = targets[m.column]
            assert isinstance(node, ast.TypeCast), f"{r.table}.{m.column} must be cast to the table type"
            assert _type(node.typeName) == pg_types[m.column], f"{r.table}.{m.column}"
            agg = node.arg
            assert isinstance(agg, ast.FuncCall) and agg.funcname[-1].sval == "sum", f"{r.table}.{m.column}"
            (arg,) = agg.args
            if r.table == "usage_1m":
                expected = parse_sql(f"SELECT {m.raw_expr}")[0].stmt.targetList[0].val
                assert _sql(arg) == _sql(expected), f"{r.table}.{m.column}"
            else:
                assert _col(arg) == m.column, f"{r.table}.{m.column}"
        for prefix, raw_col in HISTOGRAMS:
            for part in ("keys", "counts"):
                call = targets[f"{prefix}_{part}"]
                assert isinstance(call, ast.FuncCall), f"{r.table}.{prefix}_{part}"
                args = [_col(a) for a in call.args]
                if r.table == "usage_1m":
                    assert (call.funcname[-1].sval, args) == (f"llmmeter_hist_{part}_agg", [raw_col])
                else:
                    assert (call.funcname[-1].sval, args) == (
                        f"llmmeter_hist_merge_{part}_agg", [f"{prefix}_keys", f"{prefix}_counts"])


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
    pg, ts = _functions("postgres")[func], _functions("timescale")[func]
    assert _inputs(ts) == _inputs(pg)
    assert [p.name for p in ts.parameters] == [p.name for p in pg.parameters]
    assert _setof_type(ts.returnType) == _setof_type(pg.returnType)
    expected = {"llmmeter_ensure_partitions": (["timestamptz", "timestamptz"], "void"),
                "llmmeter_apply_retention": (["interval", "interval", "interval"], "setof text")}
    assert (_inputs(pg), _setof_type(pg.returnType)) == expected[func]


def test_timescale_policies() -> None:
    hypertables = _calls("timescale", "create_hypertable")
    assert sorted(rel for rel, _ in hypertables) == sorted(RAW)
    for stmt in _stmts("timescale"):
        if isinstance(stmt, ast.SelectStmt) and "create_hypertable" in _sql(stmt):
            assert "by_range('start_time', CAST('1 day' AS interval))" in _sql(stmt)
    refresh = dict(_calls("timescale", "add_continuous_aggregate_policy"))
    assert set(refresh) == {r.table for r in ROLLUPS}
    assert refresh["usage_1m"] == {"start_offset": "CAST('14 days' AS interval)",
                                   "end_offset": "CAST('1 minute' AS interval)",
                                   "schedule_interval": "CAST('1 minute' AS interval)"}
    retention = {rel: args["drop_after"] for rel, args in _calls("timescale", "add_retention_policy")}
    days = "CAST('{} days' AS interval)".format
    assert retention == {"usage_records": days(14), "usage_payloads": days(14), "usage_1m": days(400),
                         "usage_1h": days(400), "usage_1d": days(400)}
    assert _calls("timescale", "add_compression_policy") == [
        ("usage_records", {"compress_after": days(2)})]
    (alter,) = [s for s in _stmts("timescale") if isinstance(s, ast.AlterTableStmt)]
    assert alter.relation.relname == "usage_records"
    settings = {(d.defnamespace, d.defname): d.arg.sval if d.arg else None for d in alter.cmds[0].def_}
    assert settings[("timescaledb", "compress_segmentby")] == "model"
    assert settings[("timescaledb", "compress_orderby")].startswith("start_time DESC")


def test_timescale_retention_drops_every_relation() -> None:
    body = _sql(_functions("timescale")["llmmeter_apply_retention"])
    for rel, keep in [("usage_records", "raw_keep"), ("usage_payloads", "payload_keep"),
                      ("usage_1m", "rollup_keep"), ("usage_1h", "rollup_keep"), ("usage_1d", "rollup_keep")]:
        assert f"drop_chunks('{rel}', older_than => {keep})" in body, rel


# --- live PostgreSQL ------------------------------------------------------------


async def _columns(conn: asyncpg.Connection, table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT column_name, udt_name FROM information_schema.columns
           WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position""",
        table,
    )
    return [(r[0], r[1]) for r in rows]


async def test_postgres_flavor_live_tables_have_the_declared_columns(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        for table in RELATIONS:
            live = await _columns(conn, table)
            assert live == _declared("postgres", table), table
            if table in RAW:
                assert live == _declared("timescale", table), table
            else:
                assert [n for n, _ in live] == rollup_columns(), table


_TIME_BUCKET_STANDIN = """
CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT date_bin(bucket_width, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')  -- TimescaleDB's default origin
$$"""


async def _install_timescale_plain_sql(conn: asyncpg.Connection) -> None:
    """The TimescaleDB flavour's histogram functions and aggregates, plus a time_bucket stand-in."""
    text = _text("timescale")
    for raw in _parse("timescale"):
        s = raw.stmt
        is_hist_fn = (isinstance(s, ast.CreateFunctionStmt)
                      and s.funcname[-1].sval.startswith("llmmeter_hist_"))
        is_agg = isinstance(s, ast.DefineStmt) and s.kind.name == "OBJECT_AGGREGATE"
        if is_hist_fn or is_agg:
            await conn.execute(text[raw.stmt_location : raw.stmt_location + raw.stmt_len])
    await conn.execute(_TIME_BUCKET_STANDIN)


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


async def test_continuous_aggregate_queries_reproduce_the_postgres_rollups(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await _install_timescale_plain_sql(conn)
        await conn.execute("SELECT llmmeter_ensure_partitions('2025-03-01', '2025-03-04')")
        # Two batches into the same buckets: the PostgreSQL rollups are upserted (histograms merged),
        # while the continuous aggregate queries recompute from scratch; both must agree.
        assert await conn.fetchval(_WRITE, 1, 600) == 600
        assert await conn.fetchval(_WRITE, 601, 1200) == 600
        order = ", ".join(str(i) for i in range(1, 2 + len(DIMENSIONS)))
        for r in ROLLUPS:
            query = _sql(_views("timescale")[r.table].query)
            computed = await conn.fetch(f"SELECT * FROM ({query}) AS q ORDER BY {order}")
            stored = await conn.fetch(f"SELECT * FROM {r.table} ORDER BY {order}")
            assert len(stored) > 10, r.table
            assert [dict(row) for row in computed] == [dict(row) for row in stored], r.table
            attrs = (await conn.prepare(query)).get_attributes()
            udt = await conn.fetchval(
                """SELECT array_agg(t.typname::text ORDER BY u.n)
                   FROM unnest($1::oid[]) WITH ORDINALITY AS u(o, n) JOIN pg_type AS t ON t.oid = u.o""",
                [a.type.oid for a in attrs])
            live = await _columns(conn, r.table)
            assert list(zip([a.name for a in attrs], udt, strict=True)) == live, r.table
        # The data exercised what it should: buckets with several histogram keys at every level.
        for r in ROLLUPS:
            multi = await conn.fetchval(f"SELECT count(*) FROM {r.table} WHERE cardinality(lat_keys) > 1")
            assert multi > 0, r.table
        assert await conn.fetchval("SELECT sum(request_count) FROM usage_1d") == 1200
