"""Checks of every QueryService request field besides the filter (see `filters.LIMITS` for that).

A value a handler cannot use is INVALID_ARGUMENT naming its field, before any of the work: times
outside what a timestamp of usage can be, windows longer than any retention, enum numbers this
version does not know, sizes whose answer would not fit in a response. Values echoed in messages
are cut short (`filters.shown`), so a refusal is never larger than the request's limits allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from llmmeter_common.errors import FieldViolation, InvalidArgument


@dataclass(frozen=True)
class RequestLimits:
    """The bounds of the request fields (README, Querying usage)."""

    earliest: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    """no `start_time` / `end_time` before this"""
    latest: datetime = datetime(2200, 1, 1, tzinfo=UTC)
    """nor at or after this"""
    window: timedelta = timedelta(days=3660)
    """the longest window (10 years; the rollups keep 400 days)"""
    top_n: int = 1000
    """groups of a breakdown or series (0: all for a breakdown, 10 for a series)"""
    metrics: int = 32
    """entries of `metrics` in one series request (every metric once)"""
    series_points: int = 300_000
    """points of one series response: metrics x series x buckets (about 11 bytes each: the response
    stays under the 4 MB a gRPC client receives by default; 20,000 minutes of 10 groups and
    "other" are 220,000)"""
    group_by: int = 10
    """grouping columns of one aggregate export"""
    text: int = 256
    """characters of `request_id`, `group_by`, `order_by`, `granularity`, `time_zone`"""
    page_token: int = 4096
    """characters of a page token (ours are a few hundred)"""


LIMITS = RequestLimits()


def refuse(field: str, description: str) -> InvalidArgument:
    """INVALID_ARGUMENT naming `field`, with a BadRequest violation saying why."""
    return InvalidArgument(f"{field}: {description}", [FieldViolation(field, description)])


def time_field(msg: Any, field: str, limits: RequestLimits = LIMITS) -> datetime | None:
    """A Timestamp field as an aware datetime (None when unset), inside the limits: a timestamp
    protobuf accepts may lie in year 1 or 9999 or carry nanos past a second, which datetime,
    bucket arithmetic or PostgreSQL cannot all take."""
    if not msg.HasField(field):
        return None
    t = getattr(msg, field)
    lo, hi = int(limits.earliest.timestamp()), int(limits.latest.timestamp())
    if not (0 <= t.nanos < 1_000_000_000 and lo <= t.seconds < hi):
        raise refuse(field, f"must be a time from {limits.earliest:%Y-%m-%d} to before "
                            f"{limits.latest:%Y-%m-%d} (nanos 0..999,999,999)")
    return t.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def window_length(start: datetime, end: datetime, limits: RequestLimits = LIMITS) -> None:
    """Refuse a window longer than `limits.window` (naming `start_time`)."""
    if end - start > limits.window:
        raise refuse("start_time", f"the window may be at most {limits.window.days:,} days long")


def enum_value(enum: Any, value: int, field: str, allow_unspecified: bool = True) -> int:
    """`value` when `enum` (a generated enum, e.g. `query_pb2.Metric`) defines it, and it is not the
    zero value unless allowed."""
    if value not in enum.values() or (value == 0 and not allow_unspecified):
        known = ", ".join(n for n, v in enum.items() if v or allow_unspecified)
        raise refuse(field, f"{value} is not one of {known}")
    return value


def metric_list(values: Sequence[int], enum: Any, limits: RequestLimits = LIMITS) -> None:
    """Refuse a series' metrics unless there are 1 to `limits.metrics`, each a known metric."""
    if not values:
        raise refuse("metrics", "at least one, not METRIC_UNSPECIFIED")
    if len(values) > limits.metrics:
        raise refuse("metrics", f"at most {limits.metrics} metrics")
    for v in values:
        enum_value(enum, v, "metrics", allow_unspecified=False)


def top_n(value: int, limits: RequestLimits = LIMITS) -> int:
    """`top_n` between 0 and `limits.top_n`."""
    if not 0 <= value <= limits.top_n:
        raise refuse("top_n", f"must be from 0 to {limits.top_n:,}")
    return value


def text(value: str, field: str, most: int = LIMITS.text) -> str:
    """A short text field: at most `most` characters, no NUL (PostgreSQL text cannot hold one)."""
    if len(value) > most:
        raise refuse(field, f"at most {most:,} characters")
    if "\x00" in value:
        raise refuse(field, "must not contain a NUL character")
    return value


def series_points(metrics: int, series: int, buckets: int, limits: RequestLimits = LIMITS) -> None:
    """Refuse a series response of more than `limits.series_points` points (counting every group a
    `top_n` may show, plus "other"), before any of it is read."""
    points = metrics * series * buckets
    if points > limits.series_points:
        description = (f"{metrics} metrics x {series} series x {buckets:,} buckets is {points:,} points, "
                       f"more than {limits.series_points:,}: ask for fewer metrics, a smaller top_n "
                       "or a coarser granularity")
        raise InvalidArgument(f"granularity: {description}", [
            FieldViolation(f, description) for f in ("granularity", "metrics", "top_n")])
