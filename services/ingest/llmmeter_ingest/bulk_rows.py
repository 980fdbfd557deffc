"""Checks and converts a whole message of records at once, field by field (the ingest hot path).

Why: `validation.validate` and `rows.to_rows` take one record at a time and cost about 35 µs
a record, nearly all of it Python calls and attribute look-ups, the largest part of the
service's CPU. Here the batch comes read into columns (`bulk_batch`, from record messages or
from `UsageColumns`), the numeric contract is checked with numpy over whole columns, the text
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
from typing import Any

import numpy as np
import orjson

from llmmeter_common.timeutil import EPOCH
from llmmeter_ingest import validation as v
from llmmeter_ingest.bulk_batch import TEXTS, Batch
from llmmeter_ingest.pricing import REPORTED, Pricer
from llmmeter_ingest.rows import Row, client_ip, json_map, payload_row, to_decimal
from llmmeter_ingest.validation import Limits, Rejected

_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_good_keys: set[str] = set()
_micros = partial(timedelta, 0, 0)
_TEAM = TEXTS.index("team")


def _keys_ok(keys: Iterable[str]) -> bool:
    """Every metadata or cost component name matches the contract (each distinct one checked once)."""
    for key in keys:
        if key not in _good_keys:
            if not _KEY.match(key):
                return False
            if len(_good_keys) < 100_000:
                _good_keys.add(key)
    return True


def _texts_ok(texts: list[Sequence[str]]) -> bool:
    """`validation._check_text`'s limits on the plain text fields, per column."""
    ids, message = texts[0], texts[1]
    return (min(map(len, ids)) > 0 and max(map(len, ids)) <= v._SHORT_TEXT
            and min(map(len, texts[2])) > 0 and max(map(len, message)) <= v._ERROR_MESSAGE
            and all(max(map(len, col)) <= v._SHORT_TEXT for col in texts[2:])
            and not any("\x00" in "".join(col) for col in texts))


def _numbers_ok(b: Batch, limits: Limits) -> bool:
    """`validation`'s time, usage, media and cost checks over whole columns."""
    col, start, end, has = b.ints, b.start_us, b.end_us, b.has
    latency = end - start
    ok = (end >= start) & (start >= limits.oldest_start_us) & (end <= limits.latest_end_us)
    ok &= latency <= v.MAX_DURATION_US
    ok &= (col["status_code"] >= 100) & (col["status_code"] <= 599)
    for d, value in b.durations.items():
        bad = (value < 0) | (value > v.MAX_DURATION_US)
        if d == "time_to_first_token":
            bad |= value > latency
        ok &= ~(has[d] & bad)
    for name, most in v._MAX_COUNT.items():
        ok &= (col[name] >= 0) & (col[name] <= most)
    ok &= col["cache_read_tokens"] + col["cache_write_tokens"] <= col["input_tokens"]
    ok &= col["reasoning_tokens"] <= col["output_tokens"]
    for name in ("images", "characters"):
        ok &= (col[f"media.{name}"] >= 0) & (col[f"media.{name}"] <= v._MAX_MEDIA[name])
    for name, seconds in (("audio_seconds", b.audio_seconds), ("video_seconds", b.video_seconds)):
        ok &= np.isfinite(seconds) & (seconds >= 0) & (seconds <= v._MAX_MEDIA[name])
    ok &= np.isfinite(b.cost) & (b.cost >= 0) & (b.cost <= v.MAX_COST_USD)
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


def _pin_team(b: Batch, team: str) -> bool:
    """`ingestor._pin_team` over the team column: False when a record names another team."""
    teams = b.texts[_TEAM]
    if any(t and t != team for t in teams):
        return False
    b.texts[_TEAM] = [team] * len(teams)
    return True


def convert(b: Batch, limits: Limits, redact_ip: bool, pricer: Pricer,
            team: str | None) -> tuple[list[Row], list[Row]] | None:
    """The rows and payload rows of a batch every record of which is valid, keys unique; None
    when any record might not be (the caller then checks them one by one)."""
    if team is not None and not _pin_team(b, team):
        return None
    if not (_texts_ok(b.texts) and _numbers_ok(b, limits) and _maps_ok(b.metadata, b.breakdowns, b.cost)):
        return None
    with_payload = np.flatnonzero(b.has["payload"]).tolist()
    if any(b.payload(i).ByteSize() > limits.max_payload_bytes for i in with_payload):
        return None
    try:
        return _rows(b, with_payload, redact_ip, pricer)
    except Rejected:  # an address or a payload the per-record path refuses with its reason
        return None


def _rows(b: Batch, with_payload: list[int], redact_ip: bool,
          pricer: Pricer) -> tuple[list[Row], list[Row]] | None:
    """`rows.to_rows` over columns, for records known valid."""
    col, has, texts = b.ints, b.has, b.texts
    ids = texts[0]
    if len(set(zip(ids, b.start_us.tolist(), strict=True))) < len(ids):
        return None  # a key repeats inside the batch: the per-record path counts the duplicates
    latency = b.end_us - b.start_us
    ttft_us = b.durations["time_to_first_token"]
    has_ttft = has["time_to_first_token"]
    chunks, out = col["output_chunks"], col["output_tokens"]
    after_first = (latency - ttft_us).astype(np.float64)
    has_itl = has["mean_inter_token_latency"]
    derived_itl = ~has_itl & has_ttft & (chunks > 1)
    itl = np.where(has_itl, b.durations["mean_inter_token_latency"].astype(np.float64),
                   after_first / np.where(chunks > 1, chunks - 1, 1))
    tpot_after = has_ttft & (out > 1)
    tpot_whole = ~has_ttft & (out > 0)
    tpot = np.where(has_ttft, after_first / np.where(out > 1, out - 1, 1),
                    latency / np.where(out > 0, out, 1))
    starts = list(map(EPOCH.__add__, map(_micros, b.start_us.tolist())))
    ends = list(map(EPOCH.__add__, map(_micros, b.end_us.tolist())))
    costs: list[Any] = _decimals(b.cost)
    cost_json = _json(b.breakdowns)
    sources = [REPORTED] * len(ids)
    for i in np.flatnonzero(~has["cost"]).tolist():  # sent without a cost: priced here
        cost, parts, sources[i] = pricer.price(b.priced(i), starts[i])
        costs[i], cost_json[i] = cost, json_map(parts)
    gateway = b.durations["gateway_overhead"]
    rows = list(zip(
        starts, ids, ends, latency.tolist(), _where(ttft_us.tolist(), has_ttft),
        _where(itl.tolist(), has_itl | derived_itl), _where(tpot.tolist(), tpot_after | tpot_whole),
        b.streaming, chunks.tolist(), col["status_code"].tolist(), texts[13], texts[1], *texts[2:12],
        [client_ip(ip, redact_ip) if ip else "" for ip in texts[12]],
        col["input_tokens"].tolist(), out.tolist(), col["cache_read_tokens"].tolist(),
        col["cache_write_tokens"].tolist(), col["reasoning_tokens"].tolist(), col["media.images"].tolist(),
        _decimals(b.audio_seconds), _decimals(b.video_seconds), col["media.characters"].tolist(), costs,
        cost_json, b.cache_hit, _where(gateway.tolist(), has["gateway_overhead"]), col["retries"].tolist(),
        _json(b.metadata), has["payload"].tolist(), sources, strict=True,
    ))
    payloads = [payload_row(ids[i], b.payload(i), starts[i]) for i in with_payload]
    return rows, payloads


def _json(maps: list[dict[str, Any]]) -> list[str]:
    """`rows.json_map` of maps already read into dicts (an empty one is "{}" either way)."""
    return list(map(bytes.decode, map(orjson.dumps, maps)))
