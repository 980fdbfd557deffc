"""`UsageRecord`s to `UsageColumns` and back: the column form of a batch (see usage.proto).

Why: a large batch sent as columns costs the ingest service a few microseconds a record to
read instead of reading every field of every record message, so a high-volume sender can
send columns. Both directions live here, in the client package the service also imports, so
the sender's encoding and the service's reading of a doubtful batch (record by record, to name
the field at fault) can never drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from operator import attrgetter, methodcaller

from google.protobuf import duration_pb2, timestamp_pb2

from llmmeter.v1 import usage_pb2

#: Columns that hold a record's `UsageRecord` field of the same name, as is.
PLAIN = (
    "request_id", "streaming", "output_chunks", "status_code", "error_type", "error_message", "model",
    "response_model", "model_alias", "provider", "call_type", "model_id", "api_base", "user", "team",
    "account", "client_ip", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "cache_hit", "retries",
)
#: Column -> the `MediaUsage` field it holds.
MEDIA = {"media_images": "images", "media_audio_seconds": "audio_seconds",
         "media_video_seconds": "video_seconds", "media_characters": "characters"}
#: Column -> the `Timestamp` field it holds, in nanoseconds.
TIMES = {"start_time_unix_nano": "start_time", "end_time_unix_nano": "end_time"}
#: Column -> the optional `Duration` field it holds, in nanoseconds (-1: unset).
DURATIONS = {"time_to_first_token_nanos": "time_to_first_token",
             "mean_inter_token_latency_nanos": "mean_inter_token_latency",
             "gateway_overhead_nanos": "gateway_overhead"}
#: What "not sent" is in a duration column.
UNSET = -1
_plain = attrgetter(*PLAIN)
_media = attrgetter(*(f"media.{f}" for f in MEDIA.values()))


class ColumnsError(ValueError):
    """A `UsageColumns` whose shape is wrong (not one of its values): names the column."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"columns.{field}: {reason}")
        self.field = f"columns.{field}"
        self.reason = reason


def _nanos(message: timestamp_pb2.Timestamp | duration_pb2.Duration) -> int:
    return message.seconds * 1_000_000_000 + message.nanos


def _representable(rec: usage_pb2.UsageRecord) -> bool:
    """Whether the columns can say what `rec` says: a NaN cost is a column's "no cost", and a time
    or duration is one number there, so the out-of-range nanos a record can carry (which the
    service refuses by name) would become a valid value."""
    if rec.HasField("cost") and math.isnan(rec.cost):
        return False
    if not all(0 <= getattr(rec, t).nanos < 1_000_000_000 for t in TIMES.values()):
        return False
    for name in DURATIONS.values():
        d = getattr(rec, name)
        mixed_signs = d.seconds < 0 < d.nanos or d.nanos < 0 < d.seconds
        if mixed_signs or not -1_000_000_000 < d.nanos < 1_000_000_000:
            return False
    return True


def to_columns(records: Iterable[usage_pb2.UsageRecord]) -> usage_pb2.UsageColumns:
    """The column form of `records` (every list filled, one value per record). Raises ValueError
    for a record the columns cannot carry as it is: a NaN cost, out-of-range nanos, or a time or
    duration beyond int64 nanoseconds (the year 2262); send such a batch as records."""
    records = list(records)
    if not all(map(_representable, records)):
        raise ValueError("a record has a NaN cost or a time or duration columns cannot hold")
    cols = usage_pb2.UsageColumns()
    for name, values in zip(PLAIN, zip(*map(_plain, records), strict=True), strict=True):
        getattr(cols, name).extend(values)
    for name, values in zip(MEDIA, zip(*map(_media, records), strict=True), strict=True):
        getattr(cols, name).extend(values)
    for name, field in TIMES.items():
        getattr(cols, name).extend(_nanos(getattr(r, field)) for r in records)
    for name, field in DURATIONS.items():
        has = methodcaller("HasField", field)
        getattr(cols, name).extend(_nanos(getattr(r, field)) if has(r) else UNSET for r in records)
    cols.cost.extend(r.cost if r.HasField("cost") else math.nan for r in records)
    for rec in records:
        cols.cost_breakdown.add().components.update(rec.cost_breakdown)
        cols.metadata.add().entries.update(rec.metadata)
    for i, rec in enumerate(records):
        if rec.HasField("payload"):
            cols.payloads.append(rec.payload)
            cols.payload_index.append(i)
    return cols


def record_count(cols: usage_pb2.UsageColumns) -> int:
    """How many records `cols` holds; raises ColumnsError when a list has another length or the
    payload positions are not strictly increasing positions of records."""
    n = len(cols.request_id)
    for field in usage_pb2.UsageColumns.DESCRIPTOR.fields:
        if field.name in ("request_id", "payloads", "payload_index"):
            continue
        size = len(getattr(cols, field.name))
        if size not in (0, n):
            raise ColumnsError(field.name, f"{size} values for {n} records: one per record or none")
    index = cols.payload_index
    if len(index) != len(cols.payloads):
        raise ColumnsError("payload_index", f"{len(index)} positions for {len(cols.payloads)} payloads")
    if index and (min(index) < 0 or max(index) >= n
                  or any(b <= a for a, b in pairwise(index))):
        raise ColumnsError("payload_index", f"positions must be strictly increasing and within 0..{n - 1}")
    return n


def _at(column: Sequence[object], i: int, default: object) -> object:
    return column[i] if column else default


def to_record(cols: usage_pb2.UsageColumns, i: int) -> usage_pb2.UsageRecord:
    """Record `i` of `cols` (of a shape `record_count` accepted) as a `UsageRecord`, with no payload."""
    rec = usage_pb2.UsageRecord()
    for name in PLAIN:
        column = getattr(cols, name)
        if column:
            setattr(rec, name, column[i])
    for name, field in MEDIA.items():
        column = getattr(cols, name)
        if column and column[i]:  # zeros leave `media` unset, as a record without media has it
            setattr(rec.media, field, column[i])
    for name, field in TIMES.items():
        column = getattr(cols, name)
        if column:  # a list left empty is a time not sent, as in a record
            getattr(rec, field).FromNanoseconds(column[i])
    for name, field in DURATIONS.items():
        nanos = _at(getattr(cols, name), i, UNSET)
        if nanos != UNSET:
            getattr(rec, field).FromNanoseconds(nanos)
    cost = _at(cols.cost, i, math.nan)
    if not math.isnan(cost):  # type: ignore[arg-type]
        rec.cost = cost  # type: ignore[assignment]
    if cols.cost_breakdown:
        rec.cost_breakdown.update(cols.cost_breakdown[i].components)
    if cols.metadata:
        rec.metadata.update(cols.metadata[i].entries)
    return rec


def to_records(cols: usage_pb2.UsageColumns) -> list[usage_pb2.UsageRecord]:
    """Every record of `cols` as a `UsageRecord`, payloads included (the inverse of `to_columns`)."""
    records = [to_record(cols, i) for i in range(record_count(cols))]
    for i, payload in zip(cols.payload_index, cols.payloads, strict=True):
        records[i].payload.CopyFrom(payload)
    return records
