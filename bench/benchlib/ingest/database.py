"""What the ingest benchmark checks and resets in the database around its runs.

A throughput figure counts only if every record arrived once and the rollups count it; the
warm-up's rows must be gone before the measured run, and the rollup worker must have caught up
before the clock stops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..db import connection, execute
from ..harness import BenchFailure

ROLLUP_TABLES = ("usage_1m", "usage_1h", "usage_1d")


async def ensure_partitions(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    """Create the partitions the rows fall in beforehand, so the timed COPY only writes rows."""
    lo = min(r[0] for r in rows)
    hi = max(r[0] for r in rows)
    await conn.execute("SELECT llmmeter_ensure_partitions($1, $2)", lo, hi)


async def verify_e2e(dsn: str, n: int, n_payloads: int) -> dict[str, int]:
    """Fail unless the end-to-end run stored every record and payload once and every rollup counts
    all of them; returns the counts for the result."""
    async with connection(dsn) as conn:
        got = {"usage_records": int(await conn.fetchval("SELECT count(*) FROM usage_records"))}
        got["usage_payloads"] = int(await conn.fetchval("SELECT count(*) FROM usage_payloads"))
        for t in ROLLUP_TABLES:
            got[t] = int(await conn.fetchval(
                f"SELECT coalesce(sum(request_count), 0) FROM {t}{await _all_dims_filter(conn, t)}"
            ))
    want = {"usage_records": n, "usage_payloads": n_payloads, **dict.fromkeys(ROLLUP_TABLES, n)}
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if bad:
        raise BenchFailure(
            "end-to-end verification FAILED (table: got, expected): "
            + ", ".join(f"{k}: {g} != {w}" for k, (g, w) in bad.items())
        )
    return got


async def _all_dims_filter(conn: Any, table: str) -> str:
    """When a rollup stores several grouping sets (a `dims_mask` column), count the rows of the set
    keeping no dimension (every level stores it): each record once."""
    has_mask = await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = 'dims_mask'",
        table,
    )
    if not has_mask:
        return ""
    return " WHERE dims_mask = 0"


async def wait_rollups_drained(dsn: str, max_wait: float = 600.0) -> None:
    """Rollups are maintained by the service's background worker: wait until it has caught up."""
    async with connection(dsn) as conn:
        deadline = time.monotonic() + max_wait
        while await conn.fetchval("SELECT count(*) FROM usage_rollup_pending"):
            if time.monotonic() > deadline:
                raise BenchFailure("the rollup worker did not catch up")
            await asyncio.sleep(0.05)


async def truncate_all(dsn: str) -> None:
    """Empty every table the write path fills, so the measured run starts as the warm-up did."""
    await execute(
        dsn, f"TRUNCATE usage_records, usage_payloads, usage_rollup_pending, {', '.join(ROLLUP_TABLES)}")
