"""Microsecond timestamps, the unit every llmmeter table and token uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_us(us: int) -> datetime:
    """A UTC datetime from microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=us)


def to_us(t: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (t - EPOCH) // timedelta(microseconds=1)


#: Origin of every rollup bucket: UTC midnight, so buckets never depend on a session time zone
#: (the SQL side's `rollups.ORIGIN`).
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


def floor_to(t: datetime, width: timedelta) -> datetime:
    """The start of the rollup bucket of width `width` holding t."""
    return BUCKET_ORIGIN + ((t - BUCKET_ORIGIN) // width) * width
