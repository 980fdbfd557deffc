"""OTLP spans from instrumented applications turned into usage records.

Applications instrumented with OpenTelemetry already describe every LLM call
as a span: model, provider, tokens, timing, error. This converts such spans
into `UsageRecord`s for the ordinary ingest path, so validation, deduplication
and storage are exactly those of `IngestService`. Spans that are not LLM calls
(no GenAI attributes, or no model: HTTP, database, tool and agent spans) are
skipped.

What is read from where is one table, `otlp_mapping.MAPPING` (the GenAI
semantic conventions and the dialects of the libraries that send GenAI spans);
for each record field the first attribute present wins. The status code has
its own order of evidence (`status_of`) and the error-class table
`otlp_mapping.ERROR_STATUS`.

A span with one inconsistent optional value (a time to first token longer
than the call, cached tokens above the input tokens) keeps the rest: that
value is dropped and named in the metadata key `llmmeter.dropped`
(e.g. `ttft>latency`); only what a record cannot be without (model, times)
refuses the span.

The record's `request_id` is `otel-<trace id>-<span id>` and its start the
span's, so an exporter re-sending a batch stores nothing twice.
No transport here: the receivers (gRPC and HTTP) hand in the decoded request.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from llmmeter.v1 import usage_pb2
from llmmeter_ingest import genai
from llmmeter_ingest.otlp_mapping import (
    ASSOCIATION_PREFIX,
    BY_FIELD,
    CHUNK_EVENTS,
    ERROR_STATUS,
    MAPPING,
    OPERATIONS,
)

_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
DROPPED_KEY = "llmmeter.dropped"
"""Metadata key naming the optional values dropped as inconsistent, comma-separated."""

_CLASS_REPR = re.compile(r"^<class '([^']+)'>$")
_ERROR_CODE = re.compile(r"\b(?:error code|status code|status|http)[: ]+([1-5]\d\d)\b", re.IGNORECASE)
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SHORT_TEXT = 256
_ERROR_MESSAGE = 4096
_METADATA_VALUE = 1024
_METADATA_KEYS = 64


@dataclass
class Converted:
    """The records of an export request, and how many spans were not LLM calls."""

    records: list[usage_pb2.UsageRecord] = field(default_factory=list)
    skipped: int = 0


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, kind)
    if kind == "array_value":  # e.g. gen_ai.response.finish_reasons
        items = [_value(x) for x in v.array_value.values]
        return tuple(x for x in items if x is not None and not isinstance(x, tuple))
    return None  # maps and bytes carry nothing we store


def attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    """OTLP key-values as a plain dict of scalars (arrays of scalars as tuples)."""
    return {kv.key: _value(kv.value) for kv in kvs}


def _timestamp(unix_nano: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=unix_nano // 1_000_000_000, nanos=unix_nano % 1_000_000_000)


def _duration_ns(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _first(a: Mapping[str, Any], names: Iterable[str]) -> Any:
    for name in names:
        v = a.get(name)
        if v is not None and v != "" and v != ():
            return v
    return None


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v)
    return str(v)


def _bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    if isinstance(v, int):
        return v != 0
    return None


class _Reader:
    """The attributes of one span, read through `MAPPING`."""

    def __init__(self, a: Mapping[str, Any]) -> None:
        self.a = a

    def text(self, field_name: str) -> str:
        return _text(_first(self.a, BY_FIELD[field_name]))

    def number(self, field_name: str) -> float | None:
        for name in BY_FIELD[field_name]:
            n = _number(self.a.get(name))
            if n is not None:
                return n
        return None

    def count(self, field_name: str) -> int:
        n = self.number(field_name)
        return int(n) if n is not None and math.isfinite(n) else 0

    def flag(self, field_name: str) -> bool | None:
        for name in BY_FIELD[field_name]:
            b = _bool(self.a.get(name))
            if b is not None:
                return b
        return None


def _flatten_litellm(a: dict[str, Any]) -> None:
    """LiteLLM's `hidden_params` is one JSON string; its keys become `hidden_params.<key>`."""
    raw = a.get("hidden_params")
    if not isinstance(raw, str) or not raw.startswith("{"):
        return
    try:
        hidden = json.loads(raw)
    except ValueError:
        return
    if isinstance(hidden, dict):
        for key, value in hidden.items():
            if isinstance(value, str | int | float | bool):
                a.setdefault(f"hidden_params.{key}", value)


def error_class(error_type: str) -> str:
    """The class name of an error type as libraries send it: `<class 'openai.RateLimitError'>`
    and `openai.RateLimitError` are `RateLimitError`; codes such as `rate_limit_exceeded` stay."""
    m = _CLASS_REPR.match(error_type.strip())
    name = m.group(1) if m else error_type.strip()
    if "." in name and " " not in name:
        name = name.rsplit(".", 1)[1]
    return name


def status_of_error(error_type: str) -> int | None:
    """The HTTP status an error class stands for (`ERROR_STATUS`, or a numeric `error.type`)."""
    name = error_class(error_type)
    if name.isdigit() and 100 <= int(name) <= 599:
        return int(name)
    return ERROR_STATUS.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def _http_status(v: float | None) -> int | None:
    if v is not None and math.isfinite(v) and 100 <= v <= 599 and v == int(v):
        return int(v)
    return None


def status_of(r: _Reader, failed: bool, error_type: str, messages: Iterable[str]) -> int:
    """The call's HTTP status: an attribute, else the code in an error message, else the error
    class, else 500 for a failed call and 200 for the rest."""
    for name in BY_FIELD["status_code"]:
        status = _http_status(_number(r.a.get(name)))
        if status is not None:
            return status
    if not failed:
        return 200
    for message in messages:
        m = _ERROR_CODE.search(message)
        if m:
            return int(m.group(1))
    return (status_of_error(error_type) if error_type else None) or 500


def _exception(span: trace_pb2.Span) -> dict[str, Any]:
    for event in span.events:
        if event.name == genai.EXCEPTION_EVENT:
            return attributes(event.attributes)
    return {}


def _ttft_ns(span: trace_pb2.Span, r: _Reader) -> int | None:
    seconds = r.number("time_to_first_token")
    if seconds is not None and math.isfinite(seconds):
        return int(seconds * 1_000_000_000)
    first = min((e.time_unix_nano for e in span.events if e.name in CHUNK_EVENTS), default=None)
    return None if first is None else int(first - span.start_time_unix_nano)


def _operation(a: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The operation named by the span (None: none named) and whether it is a model call."""
    for name in BY_FIELD["call_type"]:
        op = a.get(name)
        if isinstance(op, str) and op:
            return op, op in OPERATIONS
    return None, True


def is_genai(a: Mapping[str, Any]) -> bool:
    """A model call: GenAI attributes, a model, a model-call operation (when named), and not a
    span that llmmeter itself exported (a collector forwarding those back would loop)."""
    if "llmmeter.request_id" in a:
        return False
    operation, model_call = _operation(a)
    if not model_call:
        return False
    marked = operation is not None or genai.PROVIDER in a or genai.SYSTEM in a
    return marked and bool(_text(_first(a, BY_FIELD["model"])))


class _Notes:
    """Optional values dropped as inconsistent or out of bounds."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, note: str) -> None:
        if note not in self.items:
            self.items.append(note)


def _short(r: _Reader, field_name: str, notes: _Notes) -> str:
    value = r.text(field_name)
    if len(value) > _SHORT_TEXT:
        notes.add(f"{field_name}>{_SHORT_TEXT}chars")
        return ""
    return value


def _metadata(r: _Reader, resource: Mapping[str, Any], trace_id: str, span_id: str,
              notes: _Notes) -> dict[str, str]:
    metadata = {"otel.trace_id": trace_id, "otel.span_id": span_id}
    sources = {**r.a, **{k: v for k, v in resource.items() if k == "service.name"}}
    for source in MAPPING:
        if source.field.startswith("metadata."):
            value = _text(_first(sources, source.attributes))
            if value:
                metadata[source.field.removeprefix("metadata.")] = value
    used = {name for s in MAPPING if not s.field.startswith("metadata.") for name in s.attributes}
    for key, value in r.a.items():
        if key.startswith(ASSOCIATION_PREFIX) and key not in used and value not in (None, "", ()):
            metadata.setdefault(key.removeprefix(ASSOCIATION_PREFIX), _text(value))
    clean: dict[str, str] = {}
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key):
            notes.add(f"metadata.{key[:32]}:bad-key")
            continue
        if len(clean) >= _METADATA_KEYS - 1:  # one left for llmmeter.dropped
            notes.add("metadata:too-many-keys")
            break
        if len(value) > _METADATA_VALUE:
            notes.add(f"metadata.{key}>{_METADATA_VALUE}chars")
            value = value[:_METADATA_VALUE]
        clean[key] = value
    return clean


def _settle(rec: usage_pb2.UsageRecord, notes: _Notes) -> None:
    """Drop optional values that contradict the rest of the record, noting each."""
    latency_ns = ((rec.end_time.seconds - rec.start_time.seconds) * 1_000_000_000
                  + rec.end_time.nanos - rec.start_time.nanos)
    if rec.HasField("time_to_first_token"):
        ttft_ns = rec.time_to_first_token.seconds * 1_000_000_000 + rec.time_to_first_token.nanos
        if ttft_ns > latency_ns >= 0:
            rec.ClearField("time_to_first_token")
            notes.add("ttft>latency")
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens"):
        if getattr(rec, name) < 0:
            rec.ClearField(name)
            notes.add(f"{name}<0")
    if rec.cache_read_tokens + rec.cache_write_tokens > rec.input_tokens:
        rec.ClearField("cache_read_tokens")
        rec.ClearField("cache_write_tokens")
        notes.add("cached>input")
    if rec.reasoning_tokens > rec.output_tokens:
        rec.ClearField("reasoning_tokens")
        notes.add("reasoning>output")
    if not math.isfinite(rec.cost) or rec.cost < 0:
        rec.ClearField("cost")
        notes.add("cost<0")


def to_record(span: trace_pb2.Span, resource: Mapping[str, Any]) -> usage_pb2.UsageRecord | None:
    """The usage record of a GenAI span; None for any other span."""
    a = attributes(span.attributes)
    if not is_genai(a):
        return None
    _flatten_litellm(a)
    exception = _exception(span)
    for key in ("exception.type", "exception.message"):
        if key in exception:
            a.setdefault(key, exception[key])
    r = _Reader(a)
    notes = _Notes()
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    raw_error_type = r.text("error_type")
    failed = span.status.code == _ERROR or bool(raw_error_type)
    error_type = error_class(raw_error_type) if raw_error_type else ""
    messages = [m for m in (span.status.message, r.text("error_message")) if m]
    address = r.text("api_base")
    port = _number(a.get(genai.SERVER_PORT))
    if address and port and address == _text(a.get(genai.SERVER_ADDRESS)):
        address = f"{address}:{int(port)}"
    operation, _ = _operation(a)
    rec = usage_pb2.UsageRecord(
        request_id=f"otel-{trace_id}-{span_id}",
        start_time=_timestamp(span.start_time_unix_nano),
        end_time=_timestamp(span.end_time_unix_nano),
        status_code=status_of(r, failed, raw_error_type, messages),
        error_type=error_type[:_SHORT_TEXT] or ("error" if failed else ""),
        error_message=(messages[0][:_ERROR_MESSAGE] if failed and messages else ""),
        model=r.text("model"),
        response_model=_short(r, "response_model", notes),
        provider=_short(r, "provider", notes),
        call_type=OPERATIONS.get(operation, operation) if operation else "",
        api_base=address if len(address) <= _SHORT_TEXT else "",
        user=_short(r, "user", notes),
        team=_short(r, "team", notes),
        account=_short(r, "account", notes),
        input_tokens=r.count("input_tokens"),
        output_tokens=r.count("output_tokens"),
        cache_read_tokens=r.count("cache_read_tokens"),
        cache_write_tokens=r.count("cache_write_tokens"),
        reasoning_tokens=r.count("reasoning_tokens"),
        metadata=_metadata(r, resource, trace_id, span_id, notes),
    )
    cost = r.number("cost")
    if cost is not None:  # absent: priced at ingest (llmmeter_ingest.pricing)
        rec.cost = cost
    ttft = _ttft_ns(span, r)
    if ttft is not None and ttft < 0:
        notes.add("ttft<0")
    elif ttft is not None:
        rec.time_to_first_token.CopyFrom(_duration_ns(ttft))
    streaming = r.flag("streaming")
    rec.streaming = streaming if streaming is not None else ttft is not None
    _settle(rec, notes)
    if notes.items:
        rec.metadata[DROPPED_KEY] = ",".join(notes.items)[:_METADATA_VALUE]
    return rec


def convert(request: trace_service_pb2.ExportTraceServiceRequest) -> Converted:
    """Every GenAI span of an export request as a usage record."""
    out = Converted()
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                rec = to_record(span, resource)
                if rec is None:
                    out.skipped += 1
                else:
                    out.records.append(rec)
    return out
