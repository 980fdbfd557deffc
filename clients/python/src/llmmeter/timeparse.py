"""Time arguments of the query commands: spans like `24h` and points like `2h` (ago) or RFC 3339.

Every read command takes the same window flags, so they are parsed in one
place, with errors worded for a command line (argparse turns the ValueError
of a `type=` function into a usage error naming the flag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

DEFAULT_SPAN = timedelta(hours=24)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_span(text: str) -> timedelta:
    """`30s`, `15m`, `24h`, `7d`, `2w` or combinations like `1h30m` -> a positive timedelta."""
    compact = text.strip().lower()
    pos, seconds = 0, 0.0
    while pos < len(compact):
        match = _SPAN.match(compact, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration like 30s, 15m, 24h or 7d")
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not compact or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration like 30s, 15m, 24h or 7d")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class TimePoint:
    """A point given on the command line: absolute, or `ago` before the time the command runs."""

    absolute: datetime | None = None
    ago: timedelta | None = None

    def resolve(self, now: datetime) -> datetime:
        """The point as an aware UTC datetime."""
        if self.absolute is not None:
            return self.absolute
        assert self.ago is not None
        return now - self.ago


def parse_time(text: str) -> TimePoint:
    """RFC 3339 (`2025-06-01T12:00:00Z`; no offset means UTC; a bare date is its midnight) or `2h` ago."""
    stripped = text.strip()
    try:
        return TimePoint(ago=parse_span(stripped))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(stripped.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 time (2025-06-01T12:00:00Z) nor a time ago (2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return TimePoint(absolute=when.astimezone(UTC))


@dataclass(frozen=True)
class Window:
    """A resolved request window; None ends are left to the server's defaults."""

    start: datetime | None
    end: datetime | None

    def describe(self) -> str:
        """`2025-06-01 12:00:00Z .. now`, for report headers."""
        start = format_time(self.start) if self.start else "(end - 24h)"
        end = format_time(self.end) if self.end else "now"
        return f"{start} .. {end}"


def resolve_window(
    since: timedelta | None,
    start: TimePoint | None,
    end: TimePoint | None,
    now: datetime | None = None,
    default_span: timedelta = DEFAULT_SPAN,
) -> Window:
    """Turns `--since`, `--from` and `--to` into a window.

    `--since` is a span ending at `--to` (default: now); `--from` without
    `--to` runs until now; with neither `--since` nor `--from`, the window is
    the `default_span` before the end. Raises ValueError when the start is not
    before the end, so no call is made.
    """
    now = now or datetime.now(UTC)
    end_at = end.resolve(now) if end else None
    if start is None:
        window = Window((end_at or now) - (since or default_span), end_at)
    else:
        window = Window(start.resolve(now), end_at)
    assert window.start is not None
    if window.start >= (window.end or now):
        raise ValueError(
            f"the window would start at {format_time(window.start)}, "
            f"not before its end at {format_time(window.end or now)}"
        )
    return window


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def format_time(when: datetime) -> str:
    """`2025-06-01 12:00:00.250Z`: UTC, milliseconds only when there are any."""
    when = when.astimezone(UTC)
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond // 1000:03d}"
    return text + "Z"


def format_timestamp(ts: timestamp_pb2.Timestamp) -> str:
    """A protobuf Timestamp as :func:`format_time` writes it."""
    return format_time(ts.ToDatetime(tzinfo=UTC))
