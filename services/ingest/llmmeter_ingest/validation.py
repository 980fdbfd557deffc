"""Checks one usage record against the contract before anything is stored.

A record that would store a wrong number (negative tokens, a cost breakdown
that does not add up, an end before its start) is refused with the field that
is wrong, so the sender can fix it; the other records of the batch go on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from llmmeter.v1 import usage_pb2

#: The most one record may carry of each quantity: far above any real call (the largest context
#: windows hold ~10M tokens; a batch call ends within a day), and low enough that no rollup sum
#: (bigint, numeric, double precision) can overflow: 10^8 tokens x 9.2 * 10^10 records per bucket
#: would be needed. README.md ("Sending usage records") lists the same numbers.
MAX_TOKENS = 100_000_000
MAX_CHUNKS = 100_000_000
MAX_RETRIES = 1_000
MAX_COST_USD = 100_000.0
#: 1 h: latency, TTFT, inter-token latency, gateway overhead. The rollups sum latencies in bigint
#: microseconds: at 1 h a day bucket overflows only past 2.5 * 10^9 such records (29,000 a second
#: for a whole day); at 24 h, 10^8 would do.
MAX_DURATION_US = 3_600_000_000
MAX_IMAGES = 1_000_000
MAX_MEDIA_SECONDS = 1_000_000.0
MAX_CHARACTERS = 1_000_000_000
_MAX_COUNT = {
    "input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS, "cache_read_tokens": MAX_TOKENS,
    "cache_write_tokens": MAX_TOKENS, "reasoning_tokens": MAX_TOKENS, "output_chunks": MAX_CHUNKS,
    "retries": MAX_RETRIES,
}
_MAX_MEDIA = {"images": MAX_IMAGES, "audio_seconds": MAX_MEDIA_SECONDS,
              "video_seconds": MAX_MEDIA_SECONDS, "characters": MAX_CHARACTERS}

_SHORT_TEXT = 256
_ERROR_MESSAGE = 4096
_METADATA_KEYS = 64
_METADATA_VALUE = 1024
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_TOLERANCE = 1e-9

_SHORT_FIELDS = (
    "model", "response_model", "model_alias", "provider", "call_type", "model_id", "api_base",
    "user", "team", "account", "error_type", "client_ip",
)
_COUNTS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "output_chunks", "retries",
)


@dataclass(frozen=True)
class Limits:
    """The time window a record must fall in, in microseconds since the epoch."""

    oldest_start_us: int
    latest_end_us: int
    max_payload_bytes: int


class Rejected(Exception):
    """A record breaks the contract at `field`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def timestamp_us(ts: object) -> int:
    """Microseconds since the epoch of a google.protobuf.Timestamp (nanos truncated)."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000  # type: ignore[attr-defined, no-any-return]


def duration_us(d: object) -> int:
    """Microseconds of a google.protobuf.Duration (nanos truncated toward zero)."""
    return d.seconds * 1_000_000 + int(d.nanos / 1000)  # type: ignore[attr-defined, no-any-return]


def _check_time(rec: usage_pb2.UsageRecord, limits: Limits) -> None:
    if not rec.HasField("start_time"):
        raise Rejected("start_time", "start_time is required")
    if not rec.HasField("end_time"):
        raise Rejected("end_time", "end_time is required")
    for name in ("start_time", "end_time"):
        ts = getattr(rec, name)
        if not 0 <= ts.nanos < 1_000_000_000:
            raise Rejected(name, f"{name}.nanos must be in [0, 1e9)")
    start, end = timestamp_us(rec.start_time), timestamp_us(rec.end_time)
    if end < start:
        raise Rejected("end_time", "end_time is before start_time")
    if start < limits.oldest_start_us:
        raise Rejected("start_time", "start_time is older than the raw retention window")
    if end > limits.latest_end_us:
        raise Rejected("end_time", "end_time is in the future")
    latency = end - start
    if latency > MAX_DURATION_US:
        raise Rejected("end_time", "end_time is more than 1 hour after start_time")
    for name in ("time_to_first_token", "mean_inter_token_latency", "gateway_overhead"):
        if rec.HasField(name):  # type: ignore[arg-type]
            d = getattr(rec, name)
            if not -999_999_999 <= d.nanos <= 999_999_999:
                raise Rejected(name, f"{name}.nanos must be in (-1e9, 1e9)")
            value = duration_us(d)
            if value < 0:
                raise Rejected(name, f"{name} must not be negative")
            if value > MAX_DURATION_US:
                raise Rejected(name, f"{name} must be at most 1 hour")
            if name == "time_to_first_token" and value > latency:
                raise Rejected(name, "time_to_first_token exceeds the latency (end_time - start_time)")


def _first_bad(names: tuple[str, ...], obj: object, bad: object) -> str:
    """The first field of `names` whose value is bad (the slow path, once a fast check failed)."""
    return next(n for n in names if bad(getattr(obj, n)))  # type: ignore[operator]


def _check_usage(rec: usage_pb2.UsageRecord) -> None:
    if min(rec.input_tokens, rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens,
           rec.reasoning_tokens, rec.output_chunks, rec.retries) < 0:
        name = _first_bad(_COUNTS, rec, lambda v: v < 0)
        raise Rejected(name, f"{name} must not be negative")
    for name, most in _MAX_COUNT.items():
        if getattr(rec, name) > most:
            raise Rejected(name, f"{name} must be at most {most:,}")
    if rec.cache_read_tokens + rec.cache_write_tokens > rec.input_tokens:
        raise Rejected("cache_read_tokens",
                       "cache_read_tokens + cache_write_tokens exceed input_tokens (which includes them)")
    if rec.reasoning_tokens > rec.output_tokens:
        raise Rejected("reasoning_tokens", "reasoning_tokens exceed output_tokens (which includes them)")
    if not rec.HasField("media"):
        return
    media = rec.media
    for name in ("images", "audio_seconds", "video_seconds", "characters"):
        value = getattr(media, name)
        if not math.isfinite(value) or value < 0:
            raise Rejected(f"media.{name}", f"media.{name} must be a finite, non-negative number")
        if value > _MAX_MEDIA[name]:
            raise Rejected(f"media.{name}", f"media.{name} must be at most {_MAX_MEDIA[name]:,}")


def _check_cost(rec: usage_pb2.UsageRecord) -> None:
    if not math.isfinite(rec.cost) or rec.cost < 0:
        raise Rejected("cost", "cost must be a finite, non-negative number")
    if rec.cost > MAX_COST_USD:
        raise Rejected("cost", f"cost must be at most {MAX_COST_USD:,.0f} USD per call")
    breakdown = rec.cost_breakdown
    if not breakdown:
        return
    values = [breakdown[key] for key in breakdown]  # (the map's .items() goes through the slow Mapping ABC)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        key = next(k for k in breakdown if not (math.isfinite(breakdown[k]) and breakdown[k] >= 0))
        raise Rejected(f"cost_breakdown.{key}", "cost components must be finite and non-negative")
    if len(breakdown) > _METADATA_KEYS:
        raise Rejected("cost_breakdown", f"more than {_METADATA_KEYS} cost components")
    for key in breakdown:
        if not _METADATA_KEY.match(key):
            raise Rejected("cost_breakdown", "cost component names are 1..64 characters of [A-Za-z0-9_.-]")
    total = math.fsum(values)  # exactly rounded, so the tolerance is all that is allowed
    if abs(total - rec.cost) > _TOLERANCE:
        raise Rejected("cost_breakdown", f"cost components add up to {total!r}, not to cost {rec.cost!r}")


def _check_text(rec: usage_pb2.UsageRecord, limits: Limits) -> None:
    if not rec.request_id:
        raise Rejected("request_id", "request_id is required")
    if len(rec.request_id) > _SHORT_TEXT:
        raise Rejected("request_id", f"request_id is longer than {_SHORT_TEXT} characters")
    if not rec.model:
        raise Rejected("model", "model is required")
    if max(map(len, (rec.model, rec.response_model, rec.model_alias, rec.provider, rec.call_type,
                     rec.model_id, rec.api_base, rec.user, rec.team, rec.account, rec.error_type,
                     rec.client_ip))) > _SHORT_TEXT:
        name = _first_bad(_SHORT_FIELDS, rec, lambda v: len(v) > _SHORT_TEXT)
        raise Rejected(name, f"{name} is longer than {_SHORT_TEXT} characters")
    if len(rec.error_message) > _ERROR_MESSAGE:
        raise Rejected("error_message", f"error_message is longer than {_ERROR_MESSAGE} characters")
    if "\x00" in rec.request_id or "\x00" in rec.error_message or any(
            "\x00" in getattr(rec, name) for name in _SHORT_FIELDS):
        name = _first_bad(("request_id", *_SHORT_FIELDS, "error_message"), rec, lambda v: "\x00" in v)
        raise Rejected(name, f"{name} must not contain NUL characters")
    metadata = rec.metadata
    if not metadata:
        pass
    elif len(metadata) > _METADATA_KEYS:
        raise Rejected("metadata", f"more than {_METADATA_KEYS} metadata keys")
    for key in metadata:
        if not _METADATA_KEY.match(key):
            raise Rejected(f"metadata.{key}", "metadata keys are 1..64 characters of [A-Za-z0-9_.-]")
        if len(metadata[key]) > _METADATA_VALUE:
            raise Rejected(f"metadata.{key}", f"metadata values are at most {_METADATA_VALUE} characters")
        if "\x00" in metadata[key]:
            raise Rejected(f"metadata.{key}", "metadata values must not contain NUL characters")
    if rec.HasField("payload") and rec.payload.ByteSize() > limits.max_payload_bytes:
        raise Rejected("payload", f"payload is larger than {limits.max_payload_bytes} bytes")


def validate(rec: usage_pb2.UsageRecord, limits: Limits) -> None:
    """Raise `Rejected` naming the first field of `rec` that breaks the contract."""
    _check_text(rec, limits)
    if not 100 <= rec.status_code <= 599:
        raise Rejected("status_code", "status_code must be an HTTP status code (100..599)")
    _check_time(rec, limits)
    _check_usage(rec)
    _check_cost(rec)
