"""On plain PostgreSQL: the TimescaleDB flavour's rollups (migration 0014) built as plain views.

The generated statements, with plain views for the continuous aggregates and stand-ins for
TimescaleDB's functions, must reproduce row for row and type for type the rollup tables the
PostgreSQL flavour's ingest path maintains, read one aggregate per constant dims_mask, and drop
each level at its horizon.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg
import pytest
from pglast import ast
from timescale_rollups import (
    _WRITE,
    TS,
    _aggregate,
    _decoded,
    _generated,
    _install_timescale_functions,
    _pg_types,
)

from llmmeter_common import sketch
from llmmeter_common.rollups import (
    DIMENSIONS,
    HISTOGRAMS,
    ROLLUPS,
)

from migration_sql import _columns, _sql

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



#: Raw rows i = $1..$2 from $3 on, spread over ~5 hours on each of 3 days, a few per minute and
#: dimension set, with NULL ttft/itl/tpot, tiny latencies (key 0) and dyadic floats (exact sums in
#: any order). `{rollups}` is where the PostgreSQL flavour's rollup statement goes.
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
