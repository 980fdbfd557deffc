"""Loading the query benchmark's month through the production rollup SQL, and closing its buckets.

The read path is only measured fairly on rollups built the way production builds them, so the
generated rows are queued in usage_rollup_pending exactly as Store.write queues them and the
ingest service's own rollup and compaction SQL turns them into usage_1m/1h/1d. The load is
checked (N raw rows, N requests in every rollup) before anything is measured on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from ..db import connection
from ..harness import BenchFailure, log
from .data import catalog, generate_sql, plan_slices


async def load(dsn: str, n: int, days: int, end: datetime, chunk: int, seed: float,
               workers: int) -> dict[str, Any]:
    """Generate the raw rows slice by slice and queue them; materialise the rollups concurrently.

    workers == 1: the production `MATERIALIZE_SQL` verbatim (LIMIT `chunk` rows of the queue per
    transaction), on one connection, as the ingest service's rollup worker runs it.
    workers > 1: that many connections, each taking one committed slice at a time and running the
    production rollup CTEs (`rollups.rollup_ctes`, which MATERIALIZE_SQL is made of) on
    `DELETE FROM usage_rollup_pending WHERE start_time in the slice` instead of `LIMIT n`, so the
    workers never contend for the same queued rows (MATERIALIZE_SQL itself is single-worker by design).
    """
    import asyncpg

    from llmmeter_common.rollups import PENDING_COLUMNS, rollup_ctes
    from llmmeter_ingest.rollup_worker import MATERIALIZE_SQL

    gen_sql = generate_sql(catalog())
    pcols = ", ".join(PENDING_COLUMNS)
    pending_sql = (f"INSERT INTO usage_rollup_pending ({pcols}) SELECT {pcols} FROM usage_records "
                   "WHERE start_time >= $1 AND start_time < $2")
    range_sql = ("WITH batch AS (DELETE FROM usage_rollup_pending "
                 f"WHERE start_time >= $1 AND start_time < $2 RETURNING *),\n{rollup_ctes('batch')}\n"
                 "SELECT count(*) FROM batch")
    slices = plan_slices(n, end, days)
    gen = await asyncpg.connect(dsn)
    # more sort/hash memory than the server default (32MB) for the rollup statements: loading speed only
    mats = [await asyncpg.connect(dsn, server_settings={"work_mem": "256MB"}) for _ in range(workers)]
    timings = {"generate_s": 0.0, "materialize_s": 0.0, "materialize_calls": 0.0}
    done = asyncio.Event()
    ready: asyncio.Queue[tuple[datetime, datetime] | None] = asyncio.Queue(maxsize=workers + 1)
    t0 = time.perf_counter()
    try:
        await gen.execute("SELECT llmmeter_ensure_partitions($1, $2)", end - timedelta(days=days), end)
        await gen.execute("SELECT setseed($1)", seed)

        async def generator() -> None:
            try:
                for k, (s, i0, c) in enumerate(slices):
                    t = time.perf_counter()
                    frac = (s - s.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds() / 86_400
                    async with gen.transaction():
                        await gen.execute(gen_sql, s, 86_400.0, frac, i0, c)
                        await gen.execute(pending_sql, s, s + timedelta(days=1))
                    timings["generate_s"] += time.perf_counter() - t
                    log(f"  slice {k + 1}/{len(slices)}: {c:,} rows generated and queued in "
                        f"{time.perf_counter() - t:.1f}s ({time.perf_counter() - t0:.0f}s elapsed)")
                    if workers > 1:
                        await ready.put((s, s + timedelta(days=1)))
            finally:
                done.set()
                if workers > 1:
                    for _ in range(workers):
                        await ready.put(None)

        async def one(conn: Any, sql: str, *params: Any) -> int:
            t = time.perf_counter()
            async with conn.transaction():
                moved = int(await conn.fetchval(sql, *params))
            if moved:
                timings["materialize_s"] += time.perf_counter() - t
                timings["materialize_calls"] += 1
                log(f"  rollups: {moved:,} queued rows materialised in {time.perf_counter() - t:.1f}s "
                    f"({time.perf_counter() - t0:.0f}s elapsed)")
            return moved

        async def materializer(conn: Any) -> None:
            if workers > 1:
                while (item := await ready.get()) is not None:
                    await one(conn, range_sql, *item)
                return
            while True:
                if await one(conn, MATERIALIZE_SQL, chunk):
                    continue
                if done.is_set() and not await conn.fetchval("SELECT count(*) FROM usage_rollup_pending"):
                    return
                await asyncio.sleep(0.2)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(generator())
            for conn in mats:
                tg.create_task(materializer(conn))
        left = int(await gen.fetchval("SELECT count(*) FROM usage_rollup_pending"))
        if left:
            raise BenchFailure(f"{left} rows left in usage_rollup_pending")
        # what the worker does as buckets close, here once for the month
        await compact_closed(dsn, end - timedelta(days=days + 1), end, minutes=True, vacuum=False)
        rows_done = time.perf_counter()
        stored = await vacuum_and_check(gen, n, storage)
        total = time.perf_counter() - t0
        sizes, rollup_rows = stored["bytes"], stored["rollup_rows"]
    finally:
        await gen.close()
        for conn in mats:
            await conn.close()
    return {
        "seconds": round(total, 1), "rows_and_rollups_s": round(rows_done - t0, 1),
        "generate_busy_s": round(timings["generate_s"], 1),
        "materialize_busy_s": round(timings["materialize_s"], 1),
        "materialize_calls": int(timings["materialize_calls"]),
        "vacuum_analyze_s": round(total - (rows_done - t0), 1),
        "records_per_s": round(n / total), "rollup_rows": rollup_rows,
        "bytes": sizes, "chunk": chunk, "workers": workers, "slices": len(slices),
    }


async def vacuum_and_check(conn: Any, n: int,
                           stored: Callable[[Any], Awaitable[dict[str, dict[str, int]]]]) -> dict[str, Any]:
    """VACUUM ANALYZE the loaded month, check it (N raw rows, N requests in every level: the
    measurements are only fair on a complete load), and return `stored(conn)`: its sizes."""
    from llmmeter_common.rollups import set_relation

    log("  VACUUM ANALYZE")
    await conn.execute("VACUUM ANALYZE")
    got = int(await conn.fetchval("SELECT count(*) FROM usage_records"))
    total = "SELECT coalesce(sum(request_count), 0) FROM {}"
    rolled = {t: int(await conn.fetchval(total.format(set_relation(t, 0))))
              for t in ("usage_1m", "usage_1h", "usage_1d")}
    if got != n or any(v != n for v in rolled.values()):
        raise BenchFailure(f"load check FAILED: {got} raw rows, rollup totals {rolled}, expected {n}")
    return await stored(conn)


async def storage(conn: Any) -> dict[str, dict[str, int]]:
    """Bytes on disk of the raw table and each rollup (partitions, indexes and TOAST included) and
    the rollups' row counts: what the storage table of bench/README.md reports."""
    sizes = {r[0]: int(r[1]) for r in await conn.fetch(
        "SELECT t, pg_total_relation_size(c.oid) "
        "+ coalesce((SELECT sum(pg_total_relation_size(i.inhrelid)) "
        "FROM pg_inherits i WHERE i.inhparent = c.oid), 0) "
        "FROM unnest(ARRAY['usage_records', 'usage_1m', 'usage_1h', 'usage_1d']) AS t "
        "JOIN pg_class c ON c.relname = t")}
    rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
            for t in ("usage_1m", "usage_1h", "usage_1d")}
    return {"bytes": sizes, "rollup_rows": rows}


async def compact_closed(dsn: str, lo: datetime, hi: datetime, minutes: bool = False,
                      vacuum: bool = True) -> int:
    """Compact the closed hour and day rows (and minute rows with `minutes`), as the rollup
    worker does when a bucket closes, one day at a time (one statement over a month spilled its
    sort to disk). With `vacuum`, each rewritten table is vacuumed after (the fresh load vacuums
    everything itself). Returns rows rewritten."""
    from llmmeter_common.rollups import ROLLUPS, compact_sql
    from llmmeter_ingest.rollup_worker import CLOSE_COMPACT_OVER

    total = 0
    async with connection(dsn, server_settings={"work_mem": "256MB"}) as conn:
        for rollup in ROLLUPS:
            if rollup.width == "1 minute" and not minutes:
                continue
            t, n = time.perf_counter(), 0
            day = lo.replace(hour=0, minute=0, second=0, microsecond=0)
            while day < hi:
                last = day + timedelta(days=1, microseconds=-1)
                async with conn.transaction():
                    n += int(await conn.fetchval(compact_sql(rollup), day, last, CLOSE_COMPACT_OVER))
                day += timedelta(days=1)
            total += n
            if n:
                log(f"  {rollup.table}: {n:,} closed rows compacted "
                    f"in {time.perf_counter() - t:.1f}s")
            if n and vacuum:
                await conn.execute(f"VACUUM ANALYZE {rollup.table}")
    return total
