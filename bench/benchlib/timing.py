"""Repeated timed calls and how their samples are summarised.

Every figure in a report is a median and a p95 over several runs after untimed warm-ups (a
single run mostly measures caches and connection set-up); the service calls and their plain
SQL baselines are timed the same way so their ratio is fair.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median and nearest-rank p95 of samples in seconds, in ms (with the sample count)."""
    ms = sorted(s * 1000 for s in samples)
    return {"median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[max(math.ceil(0.95 * len(ms)), 1) - 1], 2), "n": len(ms)}


def time_sync(fn: Callable[[], Any], warmups: int, reps: int) -> tuple[dict[str, Any], Any]:
    """Time a blocking call (a gRPC call through the stubs); returns the summary and its last answer."""
    result = None
    for _ in range(warmups):
        result = fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t)
    return summarize(samples), result


async def time_async(fn: Callable[[], Awaitable[Any]], warmups: int,
                     reps: int) -> tuple[dict[str, Any], Any]:
    """Time an awaited call on the running loop; returns the summary and its last answer."""
    result = None
    for _ in range(warmups):
        result = await fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        result = await fn()
        samples.append(time.perf_counter() - t)
    return summarize(samples), result


async def time_sql(conn: Any, sql: str, params: Sequence[Any], warmups: int,
                   reps: int) -> tuple[dict[str, Any], Any]:
    """Time a plain SQL statement on an asyncpg connection; returns the summary and its rows."""
    return await time_async(lambda: conn.fetch(sql, *params), warmups, reps)
