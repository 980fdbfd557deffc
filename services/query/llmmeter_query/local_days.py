"""Day buckets that start at midnight in a time zone of the caller's choosing, not UTC's.

"Spend per day" means the organisation's day: in New York a UTC day bucket
puts the evening's traffic on the next date. So a series or export by day may
name an IANA zone; its buckets are then the zone's local days (23 or 25 hours
long across a DST change). UTC day rollups do not nest in those days, hour
rollups do wherever the zone's offset is whole hours (nearly everywhere), and
minute rollups always do: the planner reads the coarsest that nests.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_common.timeutil import floor_to
from llmmeter_query.filter_syntax import shown
from llmmeter_query.window import LEVELS, Level, Window

_UTC_NAMES = frozenset(("", "UTC", "Etc/UTC", "Z"))


@dataclass(frozen=True)
class LocalDays:
    """The local days of one time zone, as UTC instants."""

    zone: ZoneInfo

    @property
    def sql(self) -> str:
        """The zone as an SQL string literal (its IANA key was checked when it was loaded)."""
        return "'" + self.zone.key.replace("'", "''") + "'"

    def floor(self, t: datetime) -> datetime:
        """The local midnight at or before `t`."""
        local = t.astimezone(self.zone)
        return datetime.combine(local.date(), time(), tzinfo=self.zone).astimezone(UTC)

    def after(self, day: datetime) -> datetime:
        """The local midnight that ends the day starting at `day`."""
        local = day.astimezone(self.zone)
        return datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=self.zone).astimezone(UTC)

    def levels(self, window: Window) -> tuple[Level, ...]:
        """Rollup levels that nest in this zone's days over the window: hours when every offset
        it has there is whole hours, else minutes only."""
        first, last = (window.start - timedelta(days=1)).year, (window.end + timedelta(days=1)).year
        whole = all(_whole_hours(self.zone, year) for year in range(first, last + 1))
        minute = timedelta(minutes=1)
        return tuple(lv for lv in LEVELS if lv.width < timedelta(days=1) and (whole or lv.width == minute))


@functools.lru_cache(maxsize=4096)
def _whole_hours(zone: ZoneInfo, year: int) -> bool:
    """Whether every offset `zone` has in `year` (looked at every 12 hours) is whole hours: once
    per zone and year, not per call (a decade is 7,000 lookups)."""
    t, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    while t < end:
        if (t.astimezone(zone).utcoffset() or timedelta(0)) % timedelta(hours=1):
            return False
        t += timedelta(hours=12)
    return True


def parse_time_zone(name: str) -> LocalDays | None:
    """An IANA zone name (`Europe/Berlin`); None for UTC or empty, whose days are the rollups'."""
    if name.strip() in _UTC_NAMES:
        return None
    hint = "an IANA time zone such as Europe/Berlin"
    if len(name) > 64 or "\x00" in name:  # no zone name is longer; the OS refuses such paths
        raise InvalidArgument(f"time_zone: {shown(name)} is not an IANA time zone",
                              [FieldViolation("time_zone", hint)])
    try:
        return LocalDays(ZoneInfo(name.strip()))
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a folder, say "Europe"
        raise InvalidArgument(f"time_zone: {shown(name)} is not an IANA time zone",
                              [FieldViolation("time_zone", hint)]) from exc


@dataclass(frozen=True)
class Calendar:
    """Where the buckets of a series or export start and end: fixed widths from the UTC origin,
    or, for day buckets with a time zone, its local days."""

    width: timedelta
    days: LocalDays | None = None

    @classmethod
    def of(cls, width: timedelta, days: LocalDays | None) -> Calendar:
        """A time zone only moves day buckets; shorter ones stay on the UTC grid."""
        return cls(width, days if width == timedelta(days=1) else None)

    def starts(self, window: Window) -> list[datetime]:
        """The starts of the buckets that meet the window, in order."""
        t = self.days.floor(window.start) if self.days is not None else floor_to(window.start, self.width)
        out = []
        while t < window.end:
            out.append(t)
            t = self.end(t)
        return out

    def count(self, window: Window) -> int:
        """How many buckets `starts` gives (local days: at most one more), without making them."""
        first = floor_to(window.start, self.width)
        return -((first - window.end) // self.width) + (1 if self.days is not None else 0)

    def end(self, start: datetime) -> datetime:
        """Where the bucket starting at `start` ends."""
        return self.days.after(start) if self.days is not None else start + self.width
