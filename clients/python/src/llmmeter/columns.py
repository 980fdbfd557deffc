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
from itertools import islice, pairwise
from operator import attrgetter, methodcaller
from typing import Any

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
#: The record's maps, each flattened into `<name>_count`, `<name>_key` and `<name>_value`.
MAPS = ("metadata", "cost_breakdown")
#: Lists whose length is not the number of records.
_OWN_LENGTH = frozenset({"request_id", "payloads", "payload_index",
                         *(f"{m}_{p}" for m in MAPS for p in ("key", "value"))})
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
    for name in MAPS:
        counts, keys, values = (getattr(cols, f"{name}_{part}") for part in ("count", "key", "value"))
        for m in map(attrgetter(name), records):
            counts.append(len(m))
            if m:
                pairs = [(k, m[k]) for k in m]
                keys.extend(k for k, _ in pairs)
                values.extend(v for _, v in pairs)
    for i, rec in enumerate(records):
        if rec.HasField("payload"):
            cols.payloads.append(rec.payload)
            cols.payload_index.append(i)
    return cols


def record_count(cols: usage_pb2.UsageColumns) -> int:
    """How many records `cols` holds; raises ColumnsError when a list has another length, a map's
    counts do not add up to its keys and values, or the payload positions are not strictly
    increasing positions of records."""
    n = len(cols.request_id)
    for field in usage_pb2.UsageColumns.DESCRIPTOR.fields:
        if field.name not in _OWN_LENGTH and len(getattr(cols, field.name)) not in (0, n):
            raise ColumnsError(field.name, f"{len(getattr(cols, field.name))} values for {n} records: "
                                           "one per record or none")
    for name in MAPS:
        counts, keys, values = (getattr(cols, f"{name}_{part}") for part in ("count", "key", "value"))
        if counts and min(counts) < 0:
            raise ColumnsError(f"{name}_count", "counts must not be negative")
        if not sum(counts) == len(keys) == len(values):
            raise ColumnsError(f"{name}_key", f"{len(keys)} keys and {len(values)} values for "
                                              f"{sum(counts)} entries ({name}_count)")
    index = cols.payload_index
    if len(index) != len(cols.payloads):
        raise ColumnsError("payload_index", f"{len(index)} positions for {len(cols.payloads)} payloads")
    if index and (min(index) < 0 or max(index) >= n or any(b <= a for a, b in pairwise(index))):
        raise ColumnsError("payload_index", f"positions must be strictly increasing and within 0..{n - 1}")
    return n


def map_entries(counts: Sequence[int], keys: Sequence[Any], values: Sequence[Any],
                n: int) -> list[dict[Any, Any]]:
    """Each record's map from a flattened map column (of a shape `record_count` accepted)."""
    if not counts:
        return [{} for _ in range(n)]
    pairs = iter(list(zip(keys, values, strict=True)))
    return [dict(islice(pairs, c)) if c else {} for c in counts]


def read_map(cols: usage_pb2.UsageColumns, name: str) -> list[dict[Any, Any]]:
    """Each record's `name` map (one of `MAPS`)."""
    counts, keys, values = (getattr(cols, f"{name}_{part}") for part in ("count", "key", "value"))
    return map_entries(counts, keys, values, len(cols.request_id))


class ColumnRecords:
    """The records of one `UsageColumns` (of a shape `record_count` accepted) as `UsageRecord`s,
    one at a time: for a reader that checks a doubtful batch record by record (to name a fault)."""

    def __init__(self, cols: usage_pb2.UsageColumns) -> None:
        self._maps = {name: read_map(cols, name) for name in MAPS}

        def columns(names: Iterable[str]) -> list[tuple[str, Any]]:
            return [(name, getattr(cols, name)) for name in names if getattr(cols, name)]

        self._plain = columns(PLAIN)
        self._media = [(MEDIA[name], column) for name, column in columns(MEDIA)]
        self._times = [(TIMES[name], column) for name, column in columns(TIMES)]
        self._durations = [(DURATIONS[name], column) for name, column in columns(DURATIONS)]
        self._cost = cols.cost

    def record(self, i: int) -> usage_pb2.UsageRecord:
        """Record `i`, with no payload."""
        rec = usage_pb2.UsageRecord()
        for name, column in self._plain:
            if value := column[i]:  # a default is what an unset field reads as anyway
                setattr(rec, name, value)
        for name, column in self._media:
            if value := column[i]:  # zeros leave `media` unset, as a record without media has it
                setattr(rec.media, name, value)
        for name, column in self._times:  # a list left empty is a time not sent, as in a record
            getattr(rec, name).FromNanoseconds(column[i])
        for name, column in self._durations:
            if (value := column[i]) != UNSET:
                getattr(rec, name).FromNanoseconds(value)
        if self._cost and not math.isnan(self._cost[i]):
            rec.cost = self._cost[i]
        for name, maps in self._maps.items():
            if maps[i]:
                getattr(rec, name).update(maps[i])
        return rec


def to_records(cols: usage_pb2.UsageColumns) -> list[usage_pb2.UsageRecord]:
    """Every record of `cols` as a `UsageRecord`, payloads included (the inverse of `to_columns`)."""
    records = list(map(ColumnRecords(cols).record, range(record_count(cols))))
    for i, payload in zip(cols.payload_index, cols.payloads, strict=True):
        records[i].payload.CopyFrom(payload)
    return records
