"""Unpriced requests (sent without a cost, no price known) per group, from the raw rows.

The rollups do not keep the cost source, so these counts come from `usage_records` through the
partial index `usage_records_unpriced_idx` (migration 0010), which holds only unpriced rows: cheap
while they are rare, and exactly the window and filter of the summary or breakdown they go with.
Raw rows are kept `RAW_RETENTION_DAYS`, so a longer window counts the unpriced requests of the
retained part only.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from typing import Any

import asyncpg

from llmmeter.v1 import usage_pb2
from llmmeter_query.aggregate import Grouping
from llmmeter_query.filters import Filter
from llmmeter_query.window import Window

UNPRICED = usage_pb2.COST_SOURCE_UNPRICED


async def unpriced_counts(pool: asyncpg.Pool, window: Window, filt: Filter,
                          group: Grouping | None) -> dict[str, int]:
    """Unpriced requests of the window and filter per group value ("" without a grouping)."""
    params: list[Any] = [window.start, window.end]
    where = filt.sql(params)
    key = group.expr if group is not None else "''"
    sql = (f"SELECT {key} AS g, count(*) AS n FROM usage_records "
           f"WHERE cost_source = {UNPRICED} AND start_time >= $1 AND start_time < $2 AND ({where}) "
           "GROUP BY 1")
    rows = await pool.fetch(sql, *params)
    return {r["g"]: r["n"] for r in rows}


async def unpriced_by_bucket(pool: asyncpg.Pool, window: Window, filt: Filter, group: Grouping,
                             starts: list[datetime] | None) -> dict[tuple[str, datetime | None], int]:
    """Unpriced requests per (group value, bucket start of `starts`; None without buckets). Counted
    per minute in SQL (every bucket, time zones included, is whole minutes) and put in buckets here."""
    params: list[Any] = [window.start, window.end]
    where = filt.sql(params)
    minute = "date_bin('1 minute', start_time, TIMESTAMPTZ '2000-01-01 00:00:00+00')" if starts else "NULL"
    rows = await pool.fetch(
        f"SELECT {group.expr} AS g, {minute} AS m, count(*) AS n FROM usage_records "
        f"WHERE cost_source = {UNPRICED} AND start_time >= $1 AND start_time < $2 AND ({where}) "
        "GROUP BY 1, 2", *params)
    out: dict[tuple[str, datetime | None], int] = {}
    for r in rows:
        at = None
        if starts:
            i = bisect.bisect_right(starts, max(r["m"], window.start)) - 1
            at = starts[max(i, 0)]
        out[(r["g"], at)] = out.get((r["g"], at), 0) + r["n"]
    return out
