"""The references the end-to-end figure is compared with: (b) raw COPY and (c) Store.write.

(b) is what the hardware can take at all, so (a)/(b) says how much the service adds; (c) is the
service's own database step without gRPC and conversion, which tells the SQL cost from the
Python cost.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from ..db import connection, create_migrated_db
from ..harness import BenchFailure
from .database import ensure_partitions


async def run_copy(server_dsn: str, rows: list[tuple[Any, ...]], chunk: int,
                   db_name: str = "bench_copy") -> dict[str, Any]:
    """(b): asyncpg COPY of the pre-built rows into a fresh database `db_name`, `chunk` rows at a
    time."""
    from llmmeter_ingest.rows import RECORD_COLUMNS

    dsn = await create_migrated_db(server_dsn, db_name)
    async with connection(dsn) as conn:
        await ensure_partitions(conn, rows)
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        for i in range(0, len(rows), chunk):
            await conn.copy_records_to_table(
                "usage_records", records=rows[i:i + chunk], columns=RECORD_COLUMNS
            )
        elapsed = time.perf_counter() - t0
        got = await conn.fetchval("SELECT count(*) FROM usage_records")
    return _rate("raw COPY", got, len(rows), elapsed)


async def run_store_path(
    server_dsn: str, rows: list[tuple[Any, ...]], payloads: list[tuple[Any, ...]], group: int
) -> dict[str, Any]:
    """(c): the service's Store.write on the pre-converted rows, in groups of the group-commit size."""
    import asyncpg

    from llmmeter_ingest.rows import RECORD_COLUMNS
    from llmmeter_ingest.store import Store

    dsn = await create_migrated_db(server_dsn, "bench_store")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        if "queue_for_rollups" in inspect.signature(Store).parameters:
            store = Store(pool, queue_for_rollups=True)
        else:  # a Store from before rollups were queued
            store = Store(pool)  # type: ignore[call-arg]
        await store.ensure_partitions([r[0] for r in rows])
        await pool.execute("CHECKPOINT")
        by_key: dict[tuple[Any, str], tuple[Any, ...]] = {(p[0], p[1]): p for p in payloads}
        has_payload = RECORD_COLUMNS.index("has_payload")  # (not the last column since cost_source)
        t0 = time.perf_counter()
        stored = 0
        for i in range(0, len(rows), group):
            part = rows[i:i + group]
            pays = [by_key[(r[0], r[1])] for r in part if r[has_payload]]
            stored += len(await store.write(part, pays))
        elapsed = time.perf_counter() - t0
    finally:
        await pool.close()
    return {**_rate("Store.write", stored, len(rows), elapsed), "group": group}


def _rate(what: str, stored: int, n: int, elapsed: float) -> dict[str, Any]:
    """A rate counts only if every row was stored."""
    if stored != n:
        raise BenchFailure(f"{what} stored {stored} rows, expected {n}")
    return {"seconds": round(elapsed, 3), "records_per_s": round(n / elapsed)}
