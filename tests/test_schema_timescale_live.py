"""On a real TimescaleDB (`timescale_flavor_only`): the rollups of migration 0014.

The migrated schema, its views against raw rows (real-time and materialised), the policies, the
retention function, and the migration of a database holding 0013's rollups, whose history must
come through unchanged.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from timescale_rollups import _RAW, OLD_MASKS, REFRESH, _aggregate, _decoded, _pg_types

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
    set_relation,
)

from migration_sql import _columns

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
async def test_timescaledb_dims_mask_or_set_relation_reads_one_aggregate(db_pool: asyncpg.Pool) -> None:
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
                # the set's own relation (0016) reads just that aggregate too
                own = {n.rsplit("_s", 1)[1] for n in await read("", set_relation(r.table, mask))}
                assert own == {str(mask)}, (r.table, mask)


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
async def test_timescaledb_migration_carries_the_old_rollups_over(empty_db_url: str) -> None:
    url = empty_db_url
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
