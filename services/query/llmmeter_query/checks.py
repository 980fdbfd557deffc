"""Checks of the request fields every query call shares, and their limits, in one place.

Any caller may send any value in any field (see README, Security): a value the
service cannot use is INVALID_ARGUMENT naming the field, never an exception
escaping as UNKNOWN, a driver error passed off as UNAVAILABLE, or work that
grows without bound. The filter's own limits live with its grammar (filter_syntax.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_query.filter_syntax import shown

#: The instants a request may name: [MIN_TIME, MAX_TIME).
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(3000, 1, 1, tzinfo=UTC)
#: Largest `top_n` of a series or breakdown (0 means the default, or for a breakdown all groups).
MAX_TOP_N = 1_000
#: Most entries of a series' `metrics` (each metric once is 32) and of an export's `group_by`.
MAX_METRICS = 64
MAX_GROUP_BY = 8
#: Most points of one series response (metrics x series x buckets, every group `top_n` may show
#: and "other" counted before anything is read): about 11 bytes each, so the response stays under
#: the 4 MB a gRPC client receives by default; 20,000 minutes of 10 groups and "other" are 220,000.
MAX_SERIES_POINTS = 300_000
#: Longest `request_id` (as ingest accepts), `time_zone`, and other short names.
MAX_ID_LENGTH = 256
MAX_NAME_LENGTH = 128


def bad(field: str, message: str, description: str | None = None) -> InvalidArgument:
    """INVALID_ARGUMENT naming `field`."""
    return InvalidArgument(f"{field}: {message}", [FieldViolation(field, description or message)])


def request_time(msg: Any, field: str) -> datetime | None:
    """A Timestamp field as an aware datetime (None when unset), within [MIN_TIME, MAX_TIME)."""
    if not msg.HasField(field):
        return None
    allowed = f"a valid timestamp from {MIN_TIME:%Y-%m-%d} up to {MAX_TIME:%Y-%m-%d}"
    try:
        when: datetime = getattr(msg, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise bad(field, f"not a valid timestamp ({exc})", allowed) from None
    if not MIN_TIME <= when < MAX_TIME:
        raise bad(field, f"{when.isoformat()} is out of range", allowed)
    return when


def text(value: str, field: str, limit: int = MAX_NAME_LENGTH) -> str:
    """A short text field: at most `limit` characters and no NUL (PostgreSQL text cannot hold it)."""
    if len(value) > limit:
        raise bad(field, f"longer than {limit} characters", f"at most {limit} characters")
    if "\x00" in value:
        raise bad(field, "contains a NUL character", "no NUL characters")
    return value


def enum(value: int, field: str, enum_type: Any, allow_unspecified: bool = True) -> int:
    """A known value of the generated enum `enum_type` (UNSPECIFIED, 0, only when allowed)."""
    if value not in enum_type.values() or (value == 0 and not allow_unspecified):
        names = ", ".join(n for n, v in enum_type.items() if v or allow_unspecified)
        raise bad(field, f"{value} is not a known value", f"one of {names}")
    return value


def top_n(value: int, field: str = "top_n") -> int:
    """0 (the default) up to MAX_TOP_N."""
    if not 0 <= value <= MAX_TOP_N:
        raise bad(field, f"{value} is not between 0 and {MAX_TOP_N}", f"0..{MAX_TOP_N}")
    return value


def series_points(metrics: int, series: int, buckets: int) -> None:
    """Refuse a series response of more than MAX_SERIES_POINTS points, naming the three fields that
    make it (a million-point response had held the event loop for seconds, and 32 metrics of 201
    users by minute over 13 days, 120 million points, froze the service for minutes)."""
    points = metrics * series * buckets
    if points > MAX_SERIES_POINTS:
        message = (f"{metrics} metrics x {series} series x {buckets} buckets is {points} points, more "
                   f"than {MAX_SERIES_POINTS}: ask for fewer metrics, a smaller top_n or a coarser "
                   "granularity")
        raise InvalidArgument(f"granularity: {message}", [
            FieldViolation(f, message) for f in ("granularity", "metrics", "top_n")])


__all__ = ["MAX_TIME", "MIN_TIME", "bad", "enum", "request_time", "series_points", "shown", "text", "top_n"]
