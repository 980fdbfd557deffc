"""Checks and converts a whole message of records at once, field by field (the ingest hot path).

Why: `validation.validate` and `rows.to_rows` take one record at a time and cost about 35 µs
a record, nearly all of it Python calls and attribute look-ups, the largest part of the
service's CPU. Here every field of the batch is read in one C-level pass (`attrgetter`,
`methodcaller`), the numeric contract is checked with numpy over whole columns, the text
limits over whole columns, and the rows are zipped together from the columns.

This path never decides what is rejected, only that nothing is: it returns None unless every
record passes every check `validate` makes (and no key repeats), and the caller then takes the
per-record path, which names the field at fault. The rows it builds are the ones `to_rows`
builds, value for value (tests feed both the same batches).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from decimal import Decimal
from functools import partial
from itertools import chain
from operator import attrgetter, methodcaller
from typing import Any

import numpy as np
import orjson

from llmmeter.v1 import usage_pb2
from llmmeter_common.timeutil import EPOCH
from llmmeter_ingest import validation as v
from llmmeter_ingest.pricing import REPORTED, Pricer
from llmmeter_ingest.rows import Row, client_ip, json_map, payload_row, to_decimal
from llmmeter_ingest.validation import Limits, Rejected

_TEXTS = ("request_id", "error_message", "model", "response_model", "model_alias", "provider",
          "call_type", "model_id", "api_base", "user", "team", "account", "client_ip", "error_type")
_DURATIONS = ("time_to_first_token", "mean_inter_token_latency", "gateway_overhead")
_INTS = (
    "start_time.seconds", "start_time.nanos", "end_time.seconds", "end_time.nanos",
    *(f"{d}.{part}" for d in _DURATIONS for part in ("seconds", "nanos")),
    "status_code", "output_chunks", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "retries", "media.images", "media.characters",
)
_FLOATS = ("cost", "media.audio_seconds", "media.video_seconds")
_OTHER = ("streaming", "cache_hit", "metadata", "cost_breakdown")
#: Every field read, in one pass over the records (one pass is cheaper than one per kind).
_fields = attrgetter(*_TEXTS, *_INTS, *_FLOATS, *_OTHER)
_has = {name: methodcaller("HasField", name) for name in (*_DURATIONS, "cost", "payload")}
_I = {name: i for i, name in enumerate(_INTS)}
#: Seconds beyond this (year ~36,800) would overflow int64 microseconds: left to the slow path.
_MAX_SECONDS = 1 << 40
_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_good_keys: set[str] = set()
_micros = partial(timedelta, 0, 0)


def _keys_ok(keys: Iterable[str]) -> bool:
    """Every metadata or cost component name matches the contract (each distinct one checked once)."""
    for key in keys:
        if key not in _good_keys:
            if not _KEY.match(key):
                return False
            if len(_good_keys) < 100_000:
                _good_keys.add(key)
    return True


def _texts_ok(texts: list[tuple[str, ...]]) -> bool:
    """`validation._check_text`'s limits on the plain text fields, per column."""
    ids, message = texts[0], texts[1]
    return (min(map(len, ids)) > 0 and max(map(len, ids)) <= v._SHORT_TEXT
            and min(map(len, texts[2])) > 0 and max(map(len, message)) <= v._ERROR_MESSAGE
            and all(max(map(len, col)) <= v._SHORT_TEXT for col in texts[2:])
            and not any("\x00" in "".join(col) for col in texts))


def _us(seconds: np.ndarray, nanos: np.ndarray) -> np.ndarray:
    """`validation.duration_us` over columns: nanos truncated toward zero."""
    return seconds * 1_000_000 + np.where(nanos < 0, -(-nanos // 1000), nanos // 1000)


def _numbers_ok(n: np.ndarray, f: np.ndarray, has: dict[str, np.ndarray], limits: Limits) -> bool:
    """`validation`'s time, usage, media and cost checks over whole columns."""
    col = {name: n[:, i] for name, i in _I.items()}
    secs = np.abs(n[:, [_I[f"{t}.seconds"] for t in ("start_time", "end_time", *_DURATIONS)]])
    if secs.max() >= _MAX_SECONDS:
        return False
    ok = np.ones(len(n), bool)
    for t in ("start_time", "end_time"):
        ok &= (col[f"{t}.nanos"] >= 0) & (col[f"{t}.nanos"] < 1_000_000_000)
    start = col["start_time.seconds"] * 1_000_000 + col["start_time.nanos"] // 1000
    end = col["end_time.seconds"] * 1_000_000 + col["end_time.nanos"] // 1000
    latency = end - start
    ok &= (end >= start) & (start >= limits.oldest_start_us) & (end <= limits.latest_end_us)
    ok &= latency <= v.MAX_DURATION_US
    ok &= (col["status_code"] >= 100) & (col["status_code"] <= 599)
    for d in _DURATIONS:
        nanos = col[f"{d}.nanos"]
        value = _us(col[f"{d}.seconds"], nanos)
        bad = (np.abs(nanos) > 999_999_999) | (value < 0) | (value > v.MAX_DURATION_US)
        if d == "time_to_first_token":
            bad |= value > latency
        ok &= ~(has[d] & bad)
    for name, most in v._MAX_COUNT.items():
        ok &= (col[name] >= 0) & (col[name] <= most)
    ok &= col["cache_read_tokens"] + col["cache_write_tokens"] <= col["input_tokens"]
    ok &= col["reasoning_tokens"] <= col["output_tokens"]
    for name in ("images", "characters"):
        ok &= (col[f"media.{name}"] >= 0) & (col[f"media.{name}"] <= v._MAX_MEDIA[name])
    for i, name in enumerate(("audio_seconds", "video_seconds"), 1):
        ok &= np.isfinite(f[:, i]) & (f[:, i] >= 0) & (f[:, i] <= v._MAX_MEDIA[name])
    ok &= np.isfinite(f[:, 0]) & (f[:, 0] >= 0) & (f[:, 0] <= v.MAX_COST_USD)
    return bool(ok.all())


def _maps_ok(metadata: list[dict[str, str]], breakdowns: list[dict[str, float]], costs: np.ndarray) -> bool:
    """`validation`'s metadata and cost breakdown checks, over all the batch's entries at once."""
    values = list(chain.from_iterable(map(dict.values, metadata)))
    if values and (max(map(len, metadata)) > v._METADATA_KEYS or max(map(len, values)) > v._METADATA_VALUE
                   or "\x00" in "".join(values) or not _keys_ok(set(chain.from_iterable(metadata)))):
        return False
    parts = np.fromiter(chain.from_iterable(map(dict.values, breakdowns)), np.float64)
    if not len(parts):
        return True
    if not (np.isfinite(parts).all() and (parts >= 0).all()) or max(map(len, breakdowns)) > v._METADATA_KEYS:
        return False
    totals = np.fromiter(map(math.fsum, map(dict.values, breakdowns)), np.float64, len(breakdowns))
    sent = np.fromiter(map(bool, breakdowns), bool, len(breakdowns))
    return bool((np.abs(totals - costs)[sent] <= v._TOLERANCE).all()) and _keys_ok(
        set(chain.from_iterable(breakdowns)))


def _presence(records: Sequence[usage_pb2.UsageRecord], n: np.ndarray,
              f: np.ndarray) -> dict[str, np.ndarray]:
    """Which records carry the durations, the cost and the payload. A duration or cost that is
    not zero was sent; HasField is asked only of the zero ones. An unset start or end time reads
    as 0, which the time window refuses (`_numbers_ok`), so neither is asked about."""
    sent = {d: (n[:, _I[f"{d}.seconds"]] != 0) | (n[:, _I[f"{d}.nanos"]] != 0) for d in _DURATIONS}
    sent["cost"] = f[:, 0] != 0
    for name, known in sent.items():
        for i in np.flatnonzero(~known).tolist():
            known[i] = _has[name](records[i])
    sent["payload"] = np.fromiter(map(_has["payload"], records), bool, len(records))
    return sent


def _where(values: list[Any], present: np.ndarray) -> list[Any]:
    """values, None where not present."""
    if present.all():
        return values
    return [x if p else None for x, p in zip(values, present.tolist(), strict=True)]


def _decimals(values: np.ndarray) -> list[Any]:
    """`rows.to_decimal` over a column: the Decimal of each float's repr, a plain 0 for zero."""
    zero = to_decimal(0.0)
    if not values.any():
        return [zero] * len(values)
    out = list(map(Decimal, map(repr, values.tolist())))
    for i in np.flatnonzero(values == 0).tolist():
        out[i] = zero
    return out


def convert(records: Sequence[usage_pb2.UsageRecord], limits: Limits, redact_ip: bool,
            pricer: Pricer, team: str | None) -> tuple[list[Row], list[Row]] | None:
    """The rows and payload rows of a batch every record of which is valid, keys unique; None
    when any record might not be (the caller then checks them one by one)."""
    if not records:
        return None
    if team is not None:  # a team-bound key: `ingestor._pin_team`
        for rec in records:
            if not rec.team:
                rec.team = team
            elif rec.team != team:
                return None
    columns = list(zip(*map(_fields, records), strict=True))
    texts = columns[:len(_TEXTS)]
    if not _texts_ok(texts):
        return None
    n = np.array(columns[len(_TEXTS):len(_TEXTS) + len(_INTS)], dtype=np.int64).T
    f = np.array(columns[len(_TEXTS) + len(_INTS):-len(_OTHER)], dtype=np.float64).T
    has = _presence(records, n, f)
    if not _numbers_ok(n, f, has, limits):
        return None
    streaming, cache_hit, md_maps, cb_maps = columns[-len(_OTHER):]
    metadata = [{k: m[k] for k in m} if m else {} for m in md_maps]
    breakdowns = [{k: m[k] for k in m} if m else {} for m in cb_maps]
    if not _maps_ok(metadata, breakdowns, f[:, 0]):
        return None
    if has["payload"].any() and any(rec.payload.ByteSize() > limits.max_payload_bytes
                                    for rec, p in zip(records, has["payload"].tolist(), strict=True) if p):
        return None
    try:
        return _rows(records, texts, n, f, has, (streaming, cache_hit, metadata, breakdowns),
                     redact_ip, pricer)
    except Rejected:  # an address or a payload the per-record path refuses with its reason
        return None


def _rows(records: Sequence[usage_pb2.UsageRecord], texts: list[tuple[str, ...]], n: np.ndarray,
          f: np.ndarray, has: dict[str, np.ndarray], other: tuple[Any, ...], redact_ip: bool,
          pricer: Pricer) -> tuple[list[Row], list[Row]] | None:
    """`rows.to_rows` over columns, for records known valid."""
    col = {name: n[:, i] for name, i in _I.items()}
    start_us = col["start_time.seconds"] * 1_000_000 + col["start_time.nanos"] // 1000
    end_us = col["end_time.seconds"] * 1_000_000 + col["end_time.nanos"] // 1000
    ids = texts[0]
    if len(set(zip(ids, start_us.tolist(), strict=True))) < len(ids):
        return None  # a key repeats inside the batch: the per-record path counts the duplicates
    latency = end_us - start_us
    ttft_us = _us(col["time_to_first_token.seconds"], col["time_to_first_token.nanos"])
    has_ttft = has["time_to_first_token"]
    chunks, out = col["output_chunks"], col["output_tokens"]
    after_first = (latency - ttft_us).astype(np.float64)
    has_itl = has["mean_inter_token_latency"]
    derived_itl = ~has_itl & has_ttft & (chunks > 1)
    itl = np.where(has_itl, _us(col["mean_inter_token_latency.seconds"],
                                col["mean_inter_token_latency.nanos"]).astype(np.float64),
                   after_first / np.where(chunks > 1, chunks - 1, 1))
    tpot_after = has_ttft & (out > 1)
    tpot_whole = ~has_ttft & (out > 0)
    tpot = np.where(has_ttft, after_first / np.where(out > 1, out - 1, 1),
                    latency / np.where(out > 0, out, 1))
    starts = list(map(EPOCH.__add__, map(_micros, start_us.tolist())))
    ends = list(map(EPOCH.__add__, map(_micros, end_us.tolist())))
    streaming, cache_hit, metadata, breakdowns = other
    costs: list[Any] = _decimals(f[:, 0])
    cost_json = _json(breakdowns)
    sources = [REPORTED] * len(ids)
    for i in np.flatnonzero(~has["cost"]).tolist():  # sent without a cost: priced here
        cost, parts, sources[i] = pricer.price(records[i], starts[i])
        costs[i], cost_json[i] = cost, json_map(parts)
    gateway = _us(col["gateway_overhead.seconds"], col["gateway_overhead.nanos"])
    rows = list(zip(
        starts, ids, ends, latency.tolist(), _where(ttft_us.tolist(), has_ttft),
        _where(itl.tolist(), has_itl | derived_itl), _where(tpot.tolist(), tpot_after | tpot_whole),
        streaming, chunks.tolist(), col["status_code"].tolist(), texts[13], texts[1], *texts[2:12],
        [client_ip(ip, redact_ip) if ip else "" for ip in texts[12]],
        col["input_tokens"].tolist(), out.tolist(), col["cache_read_tokens"].tolist(),
        col["cache_write_tokens"].tolist(), col["reasoning_tokens"].tolist(), col["media.images"].tolist(),
        _decimals(f[:, 1]), _decimals(f[:, 2]), col["media.characters"].tolist(), costs, cost_json,
        cache_hit, _where(gateway.tolist(), has["gateway_overhead"]), col["retries"].tolist(),
        _json(metadata), has["payload"].tolist(), sources, strict=True,
    ))
    payloads = [payload_row(records[i], starts[i]) for i in np.flatnonzero(has["payload"]).tolist()]
    return rows, payloads


def _json(maps: list[dict[str, Any]]) -> list[str]:
    """`rows.json_map` of maps already read into dicts (an empty one is "{}" either way)."""
    return list(map(bytes.decode, map(orjson.dumps, maps)))
