"""OTLP spans from instrumented applications turned into usage records.

Applications instrumented with OpenTelemetry's GenAI conventions already
describe every LLM call as a span: model, provider, tokens, timing, error.
This converts such spans (current attribute names and the deprecated
`gen_ai.system`, `gen_ai.usage.prompt_tokens`/`completion_tokens`) into
`UsageRecord`s for the ordinary ingest path, so validation, deduplication and
storage are exactly those of `IngestService`. Spans that are not LLM calls
(no GenAI attributes, or no model: HTTP, database, tool spans) are skipped.

The record's `request_id` is `otel-<trace id>-<span id>` and its start the
span's, so an exporter re-sending a batch stores nothing twice.
No gRPC here: the receiver's servicer hands in the decoded request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from llmmeter.v1 import usage_pb2
from llmmeter_ingest import genai

_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass
class Converted:
    """The records of an export request, and how many spans were not LLM calls."""

    records: list[usage_pb2.UsageRecord] = field(default_factory=list)
    skipped: int = 0


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, kind)
    return None  # arrays, maps and bytes carry nothing we store


def attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    """OTLP key-values as a plain dict of scalars."""
    return {kv.key: _value(kv.value) for kv in kvs}


def _timestamp(unix_nano: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=unix_nano // 1_000_000_000, nanos=unix_nano % 1_000_000_000)


def _duration_ns(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _int(a: Mapping[str, Any], *names: str) -> int:
    for name in names:
        v = a.get(name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return int(v)
    return 0


def _str(a: Mapping[str, Any], *names: str) -> str:
    for name in names:
        v = a.get(name)
        if v is not None and v != "":
            return str(v)
    return ""


def _ttft_ns(span: trace_pb2.Span, a: Mapping[str, Any]) -> int | None:
    seconds = a.get(genai.TIME_TO_FIRST_CHUNK)
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return int(seconds * 1_000_000_000)
    for event in span.events:
        if event.name == genai.FIRST_TOKEN_EVENT:
            return int(event.time_unix_nano - span.start_time_unix_nano)
    return None


#: GenAI operations that are model calls; agent and tool spans wrap model calls that are
#: reported on their own, so counting them too would count tokens twice.
MODEL_CALLS = frozenset({"chat", "text_completion", "embeddings", "generate_content"})


def is_genai(a: Mapping[str, Any]) -> bool:
    """A model call: GenAI attributes, a model, a model-call operation (when named), and not a
    span that llmmeter itself exported (a collector forwarding those back would loop)."""
    if "llmmeter.request_id" in a:
        return False
    operation = a.get(genai.OPERATION)
    if operation is not None and operation not in MODEL_CALLS:
        return False
    marked = operation is not None or genai.PROVIDER in a or genai.SYSTEM in a
    return marked and bool(_str(a, genai.REQUEST_MODEL, genai.RESPONSE_MODEL))


def to_record(span: trace_pb2.Span, resource: Mapping[str, Any]) -> usage_pb2.UsageRecord | None:
    """The usage record of a GenAI span; None for any other span."""
    a = attributes(span.attributes)
    if not is_genai(a):
        return None
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    failed = span.status.code == _ERROR or bool(a.get(genai.ERROR_TYPE))
    status = _int(a, genai.HTTP_STATUS) or (500 if failed else 200)
    address = _str(a, genai.SERVER_ADDRESS)
    port = _int(a, genai.SERVER_PORT)
    metadata = {"otel.trace_id": trace_id, "otel.span_id": span_id}
    for key, value in (("gen_ai.response.id", _str(a, genai.RESPONSE_ID)),
                       ("service.name", _str(resource, "service.name"))):
        if value:
            metadata[key] = value
    rec = usage_pb2.UsageRecord(
        request_id=f"otel-{trace_id}-{span_id}",
        start_time=_timestamp(span.start_time_unix_nano),
        end_time=_timestamp(span.end_time_unix_nano),
        status_code=status,
        error_type=_str(a, genai.ERROR_TYPE) or ("error" if failed else ""),
        error_message=span.status.message if failed else "",
        model=_str(a, genai.REQUEST_MODEL, genai.RESPONSE_MODEL),
        response_model=_str(a, genai.RESPONSE_MODEL),
        provider=_str(a, genai.PROVIDER, genai.SYSTEM),
        call_type=_str(a, genai.OPERATION),
        api_base=f"{address}:{port}" if address and port else address,
        user=_str(a, genai.USER_ID, "enduser.id"),
        input_tokens=_int(a, genai.INPUT_TOKENS, genai.PROMPT_TOKENS),
        output_tokens=_int(a, genai.OUTPUT_TOKENS, genai.COMPLETION_TOKENS),
        cache_read_tokens=_int(a, genai.CACHE_READ_TOKENS),
        cache_write_tokens=_int(a, genai.CACHE_WRITE_TOKENS),
        reasoning_tokens=_int(a, genai.REASONING_TOKENS),
        metadata=metadata,
    )
    ttft = _ttft_ns(span, a)
    if ttft is not None:
        rec.time_to_first_token.CopyFrom(_duration_ns(ttft))
    rec.streaming = bool(a.get(genai.REQUEST_STREAM, ttft is not None))
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
