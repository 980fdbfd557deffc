"""Time windows: defaults, bucket widths, and which table answers which stretch of a window.

Long windows must read rollups, not millions of raw rows, yet totals must
equal what the raw rows give. So a window is cut into stretches: whole days
from the day rollup, the hours around them from the hour rollup, the minutes
around those from the minute rollup, and the sub-minute edges from the raw
rows. Every record's start time falls in exactly one stretch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_common.timeutil import floor_to
from llmmeter_query.filter_syntax import shown

DEFAULT_SPAN = timedelta(hours=24)
#: Most buckets of a series (or of an aggregate export by time) over its window.
MAX_POINTS = 20_000

#: Bucket widths a time series may use, by name.
GRANULARITIES: dict[str, timedelta] = {
    "1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1), "6h": timedelta(hours=6), "1d": timedelta(days=1),
}


@dataclass(frozen=True)
class Level:
    """A rollup table and its bucket width."""

    table: str
    width: timedelta


LEVELS: tuple[Level, ...] = (
    Level("usage_1d", timedelta(days=1)),
    Level("usage_1h", timedelta(hours=1)),
    Level("usage_1m", timedelta(minutes=1)),
)


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC."""

    start: datetime
    end: datetime

    @property
    def minutes(self) -> float:
        """Length in minutes (for per-minute rates)."""
        return (self.end - self.start).total_seconds() / 60

    def overlap(self, start: datetime, end: datetime) -> timedelta:
        """How much of the bucket [start, end) lies inside the window: per-bucket rates divide
        by it, so the buckets the window's ends cut show no false dips."""
        return min(end, self.end) - max(start, self.start)


@dataclass(frozen=True)
class Stretch:
    """[start, end) answered by `level` (None: the raw rows)."""

    level: Level | None
    start: datetime
    end: datetime


def resolve_window(start: datetime | None, end: datetime | None, now: datetime) -> Window:
    """Apply the defaults (end = now, start = end - 24h) and check the order."""
    end = end or now
    start = start or end - DEFAULT_SPAN
    if start >= end:
        raise InvalidArgument("start_time must be before end_time",
                              [FieldViolation("start_time", "must be before end_time")])
    return Window(start, end)


def ceil_to(t: datetime, width: timedelta) -> datetime:
    """The bucket start at or after t."""
    f = floor_to(t, width)
    return f if f == t else f + width


def parse_granularity(name: str, window: Window, max_points: int = 200) -> tuple[str, timedelta]:
    """A named bucket width, or (empty / `auto`) the finest giving at most `max_points` points."""
    if name in ("", "auto"):
        span = window.end - window.start
        for key, width in GRANULARITIES.items():
            if span / width <= max_points:
                return key, width
        if span / GRANULARITIES["1d"] > MAX_POINTS:
            raise InvalidArgument(
                f"start_time: a series window spans at most {MAX_POINTS} days",
                [FieldViolation("start_time", f"a series window of at most {MAX_POINTS} days")])
        return "1d", GRANULARITIES["1d"]
    if name not in GRANULARITIES:
        raise InvalidArgument(
            f"granularity: {shown(name)} is not one of {', '.join(GRANULARITIES)} or auto",
            [FieldViolation("granularity", f"one of {', '.join(GRANULARITIES)}, auto")],
        )
    width = GRANULARITIES[name]
    if (window.end - window.start) / width > MAX_POINTS:
        raise InvalidArgument(
            f"granularity: {name} gives more than {MAX_POINTS} points over this window",
            [FieldViolation("granularity", "too fine for the window")],
        )
    return name, width


def usable_levels(bucket: timedelta | None) -> tuple[Level, ...]:
    """Rollup levels whose buckets nest inside time-series buckets of width `bucket`."""
    if bucket is None:
        return LEVELS
    return tuple(lv for lv in LEVELS if lv.width <= bucket and bucket % lv.width == timedelta(0))


def plan(start: datetime, end: datetime, levels: tuple[Level, ...]) -> list[Stretch]:
    """Cut [start, end) into stretches, coarsest rollup in the middle, raw rows at the edges."""
    if start >= end:
        return []
    if not levels:
        return [Stretch(None, start, end)]
    level, finer = levels[0], levels[1:]
    a, b = ceil_to(start, level.width), floor_to(end, level.width)
    if a >= b:
        return plan(start, end, finer)
    return [*plan(start, a, finer), Stretch(level, a, b), *plan(b, end, finer)]


def _buckets(s: Stretch) -> int:
    """Rows per group a stretch reads: its rollup buckets, or 1 for a raw edge."""
    return 1 if s.level is None else (s.end - s.start) // s.level.width


def rollup_buckets(stretches: list[Stretch]) -> int:
    """How many rollup buckets (rows per group) the stretches read."""
    return sum(_buckets(s) for s in stretches if s.level is not None)


def split(stretches: list[Stretch], parts: int) -> list[list[Stretch]]:
    """Cut stretches into at most `parts` runs reading about equally many rollup buckets, for
    statements run side by side. A rollup stretch is cut on a bucket boundary of its level, so
    every record still falls in exactly one stretch of one part."""
    total = sum(_buckets(s) for s in stretches)
    target = total / max(parts, 1)
    out: list[list[Stretch]] = [[]]
    done = 0
    for whole in stretches:
        s: Stretch | None = whole
        while s is not None:
            weight, room = _buckets(s), target * len(out) - done
            if len(out) >= parts or weight <= room or s.level is None:
                out[-1].append(s)
                done += weight
                s = None
            elif room < 1:
                out.append([])
            else:
                cut = s.start + int(room) * s.level.width
                out[-1].append(Stretch(s.level, s.start, cut))
                done += int(room)
                out.append([])
                s = Stretch(s.level, cut, s.end)
    return [p for p in out if p]
