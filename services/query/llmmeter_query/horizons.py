"""Where the stored data begins and ends, as far as a window's answer is concerned.

At the end: a window that reaches up to now ends inside buckets the rollups hold up to now, so
when no stored record starts at or after the window's end (`nothing_after`), the last bucket can
be read whole instead of its minutes and seconds from finer levels and raw rows.

At the start: retention may have cut the rows a window's first stretches need.

Each source is kept for its own time: raw rows and the minute rollup about two
weeks, the hour and day rollups about a year. A long window is answered from
days in the middle and from hours, minutes and raw rows at its edges, so when
its start lies before the minute rollup's or the raw rows' horizon, the first
partial hour or minute is no longer there to be counted. Rather than answer
with those records silently missing, the answer says from when it counts
(`counted_from`). A source whose oldest row is merely young (a fresh install)
did not lose anything: a cut is reported only where the hour rollup shows
traffic before that oldest row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from llmmeter_common.rollups import set_relation
from llmmeter_common.timeutil import floor_to
from llmmeter_query.window import Stretch

_HOUR = timedelta(hours=1)
#: Sources kept short enough for retention to cut a window's start (the others are kept ~a year).
_OLDEST = {
    None: "SELECT min(start_time) FROM usage_records",
    "usage_1m": f"SELECT min(bucket) FROM {set_relation('usage_1m', 0)}",
}
#: Whether the hour rollup holds traffic in an hour that overlaps the stretch ($1 to $2) and lies
#: wholly before the source's oldest row ($3): rows of the stretch were there and are gone.
_DROPPED = f"""SELECT EXISTS (SELECT 1 FROM {set_relation('usage_1h', 0)} WHERE bucket >= $1 AND bucket < $2
                                 AND bucket + interval '1 hour' <= $3)"""
#: Windows starting later than this before now are never cut (retention keeps at least a day).
_YOUNG = timedelta(days=1)


#: Whether any stored record starts at or after $1 (queued rows are stored rows too).
_LATER = "SELECT EXISTS (SELECT 1 FROM usage_records WHERE start_time >= $1)"


async def nothing_after(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, end: datetime) -> bool:
    """Whether no stored record starts at or after `end` (in the caller's snapshot)."""
    return not await conn.fetchval(_LATER, end)


async def counted_from(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
                       stretches: list[Stretch], now: datetime) -> datetime | None:
    """From when the answer counts, when retention dropped rows its first stretches needed; None
    when nothing is missing. Stretches are in time order; only leading ones can be cut."""
    found: datetime | None = None
    oldest: dict[str | None, datetime | None] = {}
    for s in stretches:
        table = None if s.level is None else s.level.table
        if table not in _OLDEST or s.start >= now - _YOUNG:
            break
        if table not in oldest:
            oldest[table] = await conn.fetchval(_OLDEST[table])
        first = oldest[table] or now  # an empty source may have lost everything: see below
        if first <= s.start:
            break
        if not await conn.fetchval(_DROPPED, floor_to(s.start, _HOUR), s.end, first):
            break
        found = min(first, s.end)
        if first < s.end:
            break
    return found
