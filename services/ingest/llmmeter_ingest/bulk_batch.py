"""A message's records read into columns (`Batch`), from record messages or from `UsageColumns`.

Why: the bulk checks and the row builder (`bulk_rows`) work on whole columns. Records sent one
message each are read here in one C-level pass (`attrgetter`); records sent as `UsageColumns`
are read list by list, at a few nanoseconds a number, which is what makes that form cheap.
Either reader returns None for a batch whose times or durations it cannot represent (the
per-record path then says what is wrong), so the checks downstream see one shape only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter, methodcaller
from typing import Any, NamedTuple

import numpy as np

from llmmeter.columns import DURATIONS as COLUMN_DURATIONS
from llmmeter.columns import MEDIA, UNSET, read_map
from llmmeter.v1 import usage_pb2
from llmmeter_ingest.pricing import Priced

TEXTS = ("request_id", "error_message", "model", "response_model", "model_alias", "provider",
         "call_type", "model_id", "api_base", "user", "team", "account", "client_ip", "error_type")
DURATIONS = ("time_to_first_token", "mean_inter_token_latency", "gateway_overhead")
#: Counts, as `UsageRecord` names them.
INTS = ("status_code", "output_chunks", "input_tokens", "output_tokens", "cache_read_tokens",
        "cache_write_tokens", "reasoning_tokens", "retries", "media.images", "media.characters")
_TIMES = ("start_time.seconds", "start_time.nanos", "end_time.seconds", "end_time.nanos",
          *(f"{d}.{part}" for d in DURATIONS for part in ("seconds", "nanos")))
_FLOATS = ("cost", "media.audio_seconds", "media.video_seconds")
_OTHER = ("streaming", "cache_hit", "metadata", "cost_breakdown")
#: Every field read, in one pass over the records (one pass is cheaper than one per kind).
_fields = attrgetter(*TEXTS, *_TIMES, *INTS, *_FLOATS, *_OTHER)
_has = {name: methodcaller("HasField", name) for name in (*DURATIONS, "cost", "payload")}
#: Seconds beyond this (year ~36,800) would overflow int64 microseconds: left to the slow path.
_MAX_SECONDS = 1 << 40
_COLUMN_OF = {**{v: k for k, v in COLUMN_DURATIONS.items()},
              **{f"media.{v}": k for k, v in MEDIA.items()}}


@dataclass
class Batch:
    """A message's records column by column: what the bulk checks and rows read."""

    texts: list[Any]
    """The text fields (each a sequence of str), in `TEXTS` order."""
    ints: dict[str, np.ndarray]
    """The counts of `INTS`."""
    start_us: np.ndarray
    end_us: np.ndarray
    durations: dict[str, np.ndarray]
    """Each of `DURATIONS` in microseconds, 0 where not sent."""
    cost: np.ndarray
    """USD, 0 where not sent."""
    audio_seconds: np.ndarray
    video_seconds: np.ndarray
    has: dict[str, np.ndarray]
    """Which records sent each of `DURATIONS`, `cost` and `payload`."""
    streaming: Sequence[bool]
    cache_hit: Sequence[bool]
    metadata: list[dict[str, str]]
    breakdowns: list[dict[str, float]]
    payload: Callable[[int], usage_pb2.Payload]
    """Record i's payload, for a record that has one."""
    records: Sequence[usage_pb2.UsageRecord] | None = None
    """The record messages, when the batch was read from them."""

    def __len__(self) -> int:
        return len(self.texts[0])

    def priced(self, i: int) -> Priced:
        """What pricing reads of record i (a record sent without a cost): the record message, or
        a view of the columns, so pricing never builds a message."""
        if self.records is not None:
            return self.records[i]
        ints, texts = self.ints, self.texts
        return _PricedView(
            model=texts[_MODEL][i], response_model=texts[_RESPONSE_MODEL][i], provider=texts[_PROVIDER][i],
            input_tokens=int(ints["input_tokens"][i]), output_tokens=int(ints["output_tokens"][i]),
            cache_read_tokens=int(ints["cache_read_tokens"][i]),
            cache_write_tokens=int(ints["cache_write_tokens"][i]),
            reasoning_tokens=int(ints["reasoning_tokens"][i]),
            media=_PricedMedia(int(ints["media.images"][i]), float(self.audio_seconds[i])))


_MODEL, _RESPONSE_MODEL, _PROVIDER = (TEXTS.index(t) for t in ("model", "response_model", "provider"))


class _PricedMedia(NamedTuple):
    images: int
    audio_seconds: float


class _PricedView(NamedTuple):
    """`pricing.Priced` of one record of a batch read from columns."""

    model: str
    response_model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    media: _PricedMedia


def _us(seconds: np.ndarray, nanos: np.ndarray) -> np.ndarray:
    """`validation.duration_us` over columns: nanos truncated toward zero."""
    return seconds * 1_000_000 + np.where(nanos < 0, -(-nanos // 1000), nanos // 1000)


def _dicts(maps: Sequence[Any]) -> list[dict[Any, Any]]:
    """Protobuf maps as dicts; a comprehension over a map is twice as fast as dict(m), which goes
    through the Mapping ABC."""
    return [{k: m[k] for k in m} if m else {} for m in maps]


def from_records(records: Sequence[usage_pb2.UsageRecord]) -> Batch | None:
    """The columns of record messages; None when a time or duration is out of its range."""
    columns = list(zip(*map(_fields, records), strict=True))
    k = len(TEXTS)
    times = np.array(columns[k:k + len(_TIMES)], dtype=np.int64)
    k += len(_TIMES)
    ints = np.array(columns[k:k + len(INTS)], dtype=np.int64)
    k += len(INTS)
    floats = np.array(columns[k:k + len(_FLOATS)], dtype=np.float64)
    if np.abs(times[0::2]).max() >= _MAX_SECONDS:
        return None
    stamp_nanos, duration_nanos = times[1:4:2], times[5::2]
    if ((stamp_nanos < 0) | (stamp_nanos >= 1_000_000_000)).any() or (np.abs(duration_nanos) >= 10**9).any():
        return None
    durations = {d: _us(times[4 + 2 * j], times[5 + 2 * j]) for j, d in enumerate(DURATIONS)}
    has = {d: (times[4 + 2 * j] != 0) | (times[5 + 2 * j] != 0) for j, d in enumerate(DURATIONS)}
    has["cost"] = floats[0] != 0
    for name, known in has.items():  # a value that is not zero was sent; HasField asks the zeros
        for i in np.flatnonzero(~known).tolist():
            known[i] = _has[name](records[i])
    has["payload"] = np.fromiter(map(_has["payload"], records), bool, len(records))
    streaming, cache_hit, metadata, breakdowns = columns[-len(_OTHER):]
    return Batch(
        texts=list(columns[:len(TEXTS)]), ints=dict(zip(INTS, ints, strict=True)),
        start_us=times[0] * 1_000_000 + times[1] // 1000, end_us=times[2] * 1_000_000 + times[3] // 1000,
        durations=durations, cost=floats[0], audio_seconds=floats[1], video_seconds=floats[2], has=has,
        streaming=streaming, cache_hit=cache_hit, metadata=_dicts(metadata), breakdowns=_dicts(breakdowns),
        payload=lambda i: records[i].payload, records=records,
    )


def _numbers(cols: usage_pb2.UsageColumns, name: str, n: int, dtype: type, default: float) -> np.ndarray:
    """A number column as an array (the repeated field's buffer, no per-value Python objects)."""
    column = getattr(cols, name)
    return np.array(column, dtype=dtype) if column else np.full(n, default, dtype)


def from_columns(cols: usage_pb2.UsageColumns, n: int) -> Batch | None:
    """The columns of a `UsageColumns` of `n` records (shape checked by `record_count`); None when
    a duration is negative but not "unset", which the per-record path names."""
    durations, has = {}, {}
    for d in DURATIONS:
        nanos = _numbers(cols, _COLUMN_OF[d], n, np.int64, UNSET)
        has[d] = nanos != UNSET
        if (nanos < UNSET).any():
            return None
        durations[d] = np.where(has[d], nanos // 1000, 0)
    cost = _numbers(cols, "cost", n, np.float64, np.nan)
    has["cost"] = ~np.isnan(cost)
    has["payload"] = np.zeros(n, bool)
    has["payload"][list(cols.payload_index)] = True
    payloads = dict(zip(cols.payload_index, cols.payloads, strict=True))
    return Batch(
        texts=[list(getattr(cols, t)) or [""] * n for t in TEXTS],
        ints={i: _numbers(cols, _COLUMN_OF.get(i, i), n, np.int64, 0) for i in INTS},
        start_us=_numbers(cols, "start_time_unix_nano", n, np.int64, 0) // 1000,
        end_us=_numbers(cols, "end_time_unix_nano", n, np.int64, 0) // 1000,
        durations=durations, cost=np.where(has["cost"], cost, 0.0),
        audio_seconds=_numbers(cols, "media_audio_seconds", n, np.float64, 0.0),
        video_seconds=_numbers(cols, "media_video_seconds", n, np.float64, 0.0), has=has,
        streaming=list(cols.streaming) or [False] * n, cache_hit=list(cols.cache_hit) or [False] * n,
        metadata=read_map(cols, "metadata"), breakdowns=read_map(cols, "cost_breakdown"),
        payload=payloads.__getitem__,
    )
