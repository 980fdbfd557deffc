"""Histogram reads cut by time and run on two connections sharing one snapshot.

The cut must keep every record in exactly one part (so the split answer
equals the single read, value for value), the extra connection must see
exactly the calling transaction's snapshot, and a pool with no free
connection must fall back to reading on the calling one.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import asyncpg

from llmmeter_query.aggregate import ALL_PERCENTILES, Aggregator, Top, parse_group
from llmmeter_query.filters import parse_filter
from llmmeter_query.snapshot_fetch import fetch_all
from llmmeter_query.window import LEVELS, Window, plan, rollup_buckets, split, usable_levels

from conftest import drain_rollups
from records import alike, ingest, record


def test_split_keeps_every_instant_in_one_aligned_part() -> None:
    rng = random.Random(5)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for _ in range(300):
        start = base + timedelta(seconds=rng.uniform(0, 40 * 86400))
        end = start + timedelta(seconds=rng.uniform(1, 20 * 86400))
        levels = usable_levels(rng.choice([None, timedelta(hours=1), timedelta(minutes=1)]))
        stretches = plan(start, end, levels)
        for parts in (2, 3):
            cut = split(stretches, parts)
            assert 1 <= len(cut) <= parts
            flat = [s for part in cut for s in part]
            assert flat[0].start == start and flat[-1].end == end
            assert all(a.end == b.start for a, b in itertools.pairwise(flat))
            for s in flat:
                assert s.start < s.end
                if s.level is not None:
                    assert (s.start - base) % s.level.width == timedelta(0)
                    assert (s.end - base) % s.level.width == timedelta(0)
            weights = [rollup_buckets(p) + sum(1 for s in p if s.level is None) for p in cut]
            if rollup_buckets(stretches) >= 10 * parts:
                assert len(cut) == parts
                assert max(weights) - min(weights) <= 3, (weights, stretches)


def test_split_of_one_day_stretch_cuts_on_hours() -> None:
    day = datetime(2026, 3, 2, tzinfo=UTC)
    hour = next(lv for lv in LEVELS if lv.table == "usage_1h")
    cut = split(plan(day, day + timedelta(hours=10), (hour,)), 2)
    assert [[(s.start.hour, s.end.hour) for s in part] for part in cut] == [[(0, 5)], [(5, 10)]]


async def test_fetch_all_reads_the_callers_snapshot_on_a_second_backend(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute("CREATE TABLE snap_probe (v int); INSERT INTO snap_probe VALUES (1), (2)")
    # The helper lane steals work: with statements that return at once, the caller can finish
    # them all before a second backend is handed over. An idle connection waits in the pool and
    # every statement sleeps, so the helper is sure to take at least one.
    async with db_pool.acquire(), db_pool.acquire():
        pass
    assert db_pool.get_idle_size() >= 2
    statements = [("SELECT pg_backend_pid() AS pid, count(*) AS n FROM snap_probe, pg_sleep(0.2)", [])] * 6
    async with db_pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        assert await conn.fetchval("SELECT count(*) FROM snap_probe") == 2
        await db_pool.execute("INSERT INTO snap_probe VALUES (3)")  # committed after our snapshot
        results = await fetch_all(db_pool, conn, statements, lanes=2)
        own = await conn.fetchval("SELECT pg_backend_pid()")
    assert [r[0]["n"] for r in results] == [2] * 6
    pids = {r[0]["pid"] for r in results}
    assert own in pids and len(pids) == 2
    assert await db_pool.fetchval("SELECT count(*) FROM snap_probe") == 3


async def test_fetch_all_without_a_free_connection_reads_on_the_caller(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            results = await fetch_all(pool, conn, [("SELECT pg_backend_pid()", [])] * 3, lanes=2)
            own = await conn.fetchval("SELECT pg_backend_pid()")
        assert [r[0][0] for r in results] == [own] * 3
    finally:
        await pool.close()


async def test_split_reads_give_the_single_reads_answer(ingest_server, ingest_stub, db_url: str,
                                                     db_pool) -> None:
    rng = random.Random(3)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    models, users = ("m1", "m2", "m3", "m4"), ("ana", "bo", "cy", "di", "ed")
    recs = [record(now - timedelta(minutes=rng.uniform(2, 4 * 24 * 60)), model=rng.choice(models),
                   user=rng.choice(users), latency_ms=100 + rng.lognormvariate(6.5, 0.8),
                   ttft_ms=rng.choice([None, rng.uniform(20, 90)]), request_id=f"split-{i}")
            for i in range(1500)]
    await ingest(ingest_stub, recs[:1000])
    await drain_rollups(db_url)
    # On PostgreSQL the rest stays queued: both kinds of source in every part. TimescaleDB has no
    # queue: the rest is materialised as its refresh policies would (rows below the aggregates'
    # watermark are not read in real time).
    if ingest_server.rollups is not None:
        await ingest_server.rollups.stop()
    await ingest(ingest_stub, recs[1000:])
    if ingest_server.rollups is not None:
        assert await db_pool.fetchval("SELECT count(*) FROM usage_rollup_pending") == 500
    else:
        await drain_rollups(db_url)
    window = Window(now - timedelta(days=4, minutes=7), now + timedelta(seconds=1))
    single = Aggregator(db_pool, timedelta(hours=1), lanes=1)
    split_ = Aggregator(db_pool, timedelta(hours=1), lanes=2, split_min_rows=1)
    by_requests = Top(2, lambda t: sorted(t, key=lambda g: (-t[g].get("request_count"), str(g))), fold=True)
    cases = [
        (parse_group("model"), timedelta(hours=1), by_requests),
        (parse_group("user"), None, by_requests),
        (parse_group("model"), timedelta(minutes=1), None),
        (None, None, None),
    ]
    for group, bucket, top in cases:
        a = await single.run(window, parse_filter(""), group, bucket, top=top, percentiles=ALL_PERCENTILES)
        b = await split_.run(window, parse_filter(""), group, bucket, top=top, percentiles=ALL_PERCENTILES)
        assert not a.exact and a.shown == b.shown
        assert a.groups.keys() == b.groups.keys()
        for key, stats in a.groups.items():
            assert alike(stats.measures, b.groups[key].measures), key
            assert stats.quantiles == b.groups[key].quantiles, key
        assert sum(s.get("request_count") for s in a.groups.values()) == 1500
