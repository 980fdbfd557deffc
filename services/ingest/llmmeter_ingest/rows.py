"""Turns a valid usage record into the row tuples that COPY sends to the database.

This is the per-record hot path of ingest, so it does the derived work once
(latency, inter-token latency, time per output token, the redacted client IP,
exact decimal cost) and nothing else; everything is aggregated in SQL.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson
from google.protobuf import struct_pb2

from llmmeter.v1 import usage_pb2
from llmmeter_common.timeutil import from_us
from llmmeter_ingest.pricing import BUILTIN_ONLY, REPORTED, Pricer
from llmmeter_ingest.validation import Rejected, duration_us, timestamp_us

#: Columns of `usage_records` filled by COPY, in tuple order.
RECORD_COLUMNS: tuple[str, ...] = (
    "start_time", "request_id", "end_time", "latency_us", "ttft_us", "itl_us", "tpot_us",
    "streaming", "output_chunks", "status_code", "error_type", "error_message",
    "model", "response_model", "model_alias", "provider", "call_type", "model_id", "api_base",
    "user_name", "team", "account", "client_ip",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "images", "audio_seconds", "video_seconds", "characters",
    "cost", "cost_breakdown", "cache_hit", "gateway_overhead_us", "retries", "metadata", "has_payload",
    "cost_source",
)
#: Columns of `usage_payloads`, in tuple order.
PAYLOAD_COLUMNS: tuple[str, ...] = ("start_time", "request_id", "request", "response")

_ZERO = Decimal(0)

Row = tuple[Any, ...]


@lru_cache(maxsize=65_536)
def client_ip(raw: str, redact: bool) -> str:
    """The stored form of a client address: validated, and cut to its /24 or /48 network when
    `redact`."""
    try:
        addr = ipaddress.ip_address(raw.strip())
    except ValueError:
        raise Rejected("client_ip", f"client_ip {raw!r} is not an IPv4 or IPv6 address") from None
    if not redact:
        return str(addr)
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def to_decimal(value: float) -> Decimal:
    """The exact decimal of a float as sent (its shortest repr), a plain 0 for zero."""
    return Decimal(repr(value)) if value else _ZERO


def json_map(m: Any) -> str:
    """A protobuf map (or dict) as a JSON object."""
    # a comprehension over the map is twice as fast as dict(m), which goes through the Mapping ABC
    return orjson.dumps({k: m[k] for k in m}).decode() if m else "{}"


def _plain(v: struct_pb2.Value) -> Any:
    """A google.protobuf.Value as plain Python (json_format's generic walk cost ~50 µs a payload)."""
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        n = v.number_value
        if not math.isfinite(n):
            raise Rejected("payload", "payload numbers must be finite (JSON has no NaN or Infinity)")
        return int(n) if n.is_integer() and abs(n) < 2**53 else n
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        fields = v.struct_value.fields
        return {k: _plain(fields[k]) for k in fields}
    if kind == "list_value":
        return [_plain(x) for x in v.list_value.values]
    return None  # null_value, or no kind set


def _payload_json(value: struct_pb2.Value, present: bool) -> str | None:
    if not present:
        return None
    text = orjson.dumps(_plain(value)).decode()
    if "\\u0000" in text:  # jsonb cannot hold the NUL character
        raise Rejected("payload", "payload strings must not contain NUL characters")
    return text


def key_of(rec: usage_pb2.UsageRecord) -> tuple[str, int]:
    """The idempotency key: (request_id, start time in microseconds)."""
    return rec.request_id, timestamp_us(rec.start_time)


def to_rows(rec: usage_pb2.UsageRecord, redact_ip: bool,
            pricer: Pricer = BUILTIN_ONLY) -> tuple[Row, Row | None]:
    """The `usage_records` row of a valid record, and its `usage_payloads` row if it has one; a
    record sent without a cost is priced by `pricer`."""
    start_us = timestamp_us(rec.start_time)
    latency = timestamp_us(rec.end_time) - start_us
    start = from_us(start_us)
    ttft = duration_us(rec.time_to_first_token) if rec.HasField("time_to_first_token") else None
    itl: float | None = None
    if rec.HasField("mean_inter_token_latency"):
        itl = float(duration_us(rec.mean_inter_token_latency))
    elif ttft is not None and rec.output_chunks > 1:
        itl = (latency - ttft) / (rec.output_chunks - 1)
    out = rec.output_tokens
    tpot: float | None = None
    if ttft is not None and out > 1:
        tpot = (latency - ttft) / (out - 1)
    elif ttft is None and out > 0:
        tpot = latency / out
    media = rec.media
    has_payload = rec.HasField("payload")
    if rec.HasField("cost"):
        cost, breakdown, source = to_decimal(rec.cost), json_map(rec.cost_breakdown), REPORTED
    else:
        cost, parts, source = pricer.price(rec, start)
        breakdown = json_map(parts)
    row = (
        start, rec.request_id, from_us(start_us + latency), latency, ttft, itl, tpot,
        rec.streaming, rec.output_chunks, rec.status_code, rec.error_type, rec.error_message,
        rec.model, rec.response_model, rec.model_alias, rec.provider, rec.call_type, rec.model_id,
        rec.api_base, rec.user, rec.team, rec.account,
        client_ip(rec.client_ip, redact_ip) if rec.client_ip else "",
        rec.input_tokens, out, rec.cache_read_tokens, rec.cache_write_tokens, rec.reasoning_tokens,
        media.images, to_decimal(media.audio_seconds), to_decimal(media.video_seconds), media.characters,
        cost, breakdown, rec.cache_hit,
        duration_us(rec.gateway_overhead) if rec.HasField("gateway_overhead") else None,
        rec.retries, json_map(rec.metadata), has_payload, source,
    )
    return row, payload_row(rec.request_id, rec.payload, start) if has_payload else None


def payload_row(request_id: str, p: usage_pb2.Payload, start: datetime) -> Row:
    """The `usage_payloads` row of a valid record's payload, the record starting at `start`."""
    return (
        start, request_id,
        _payload_json(p.request, p.HasField("request")),
        _payload_json(p.response, p.HasField("response")),
    )
