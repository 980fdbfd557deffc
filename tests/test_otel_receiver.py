"""The OTLP trace receiver on the ingest port, fed by the real OpenTelemetry SDK and OTLP/gRPC exporter.

The exporter is synchronous and runs on the SDK's own thread (or a worker
thread here), never on the event loop that serves the receiver.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from llmmeter_ingest.server import IngestServer

from keyring import ADMIN, keyed_channel

S = 1_000_000_000  # nanoseconds per second


class Sdk:
    """A tracer provider exporting over OTLP/gRPC to the ingest service, keeping a copy of each span."""

    def __init__(self, port: int) -> None:
        self.exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=10,
                                         headers={"authorization": f"Bearer {ADMIN.token}"})
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": "chatbot"}))
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("test-app")

    def span(self, name: str, attributes: dict[str, object], start_ns: int, seconds: float,
             events: list[tuple[str, int]] = (), error: str | None = None) -> None:  # type: ignore[assignment]
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, start_time=start_ns,
                                      attributes=attributes)  # type: ignore[arg-type]
        for event, at in events:
            span.add_event(event, timestamp=at)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=start_ns + int(seconds * S))

    async def flush(self) -> None:
        assert await asyncio.to_thread(self.provider.force_flush, 20_000)


@pytest.fixture
async def sdk(ingest_server: IngestServer) -> AsyncIterator[Sdk]:
    s = Sdk(ingest_server.port)
    try:
        yield s
    finally:  # shutdown exports what is left: off the loop that serves the receiver
        await asyncio.to_thread(s.provider.shutdown)


def _start() -> int:
    return time.time_ns() - 60 * S


async def test_genai_spans_become_records_and_others_are_ignored(sdk: Sdk, db_pool) -> None:
    start = _start()
    sdk.span("chat gpt-4o", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 45,
        "gen_ai.usage.cache_read.input_tokens": 100, "gen_ai.response.time_to_first_chunk": 0.25,
        "gen_ai.response.id": "chatcmpl-1", "server.address": "api.openai.com", "server.port": 443,
    }, start, 1.5)
    sdk.span("text_completion claude-2", {  # the deprecated names
        "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-2",
        "gen_ai.usage.prompt_tokens": 30, "gen_ai.usage.completion_tokens": 7,
    }, start + S, 0.5, events=[("gen_ai.first_token", start + S + int(0.2 * S))])
    sdk.span("chat gpt-4o-mini", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini", "error.type": "rate_limit_exceeded",
    }, start + 2 * S, 0.1, error="429 Too Many Requests")
    sdk.span("GET /users", {"http.request.method": "GET", "http.route": "/users"}, start, 0.01)
    sdk.span("execute_tool search", {"gen_ai.operation.name": "execute_tool"}, start, 0.01)  # no model
    sdk.span("invoke_agent planner", {  # wraps model calls reported on their own
        "gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 999}, start, 0.5)
    sdk.span("chat gpt-4o", {  # a span llmmeter exported itself, forwarded back by a collector
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "looped-model",
        "llmmeter.request_id": "chatcmpl-1"}, start, 0.5)
    await sdk.flush()

    rows = {r["model"]: r for r in await db_pool.fetch("SELECT * FROM usage_records")}
    assert set(rows) == {"gpt-4o", "claude-2", "gpt-4o-mini"}
    chat = rows["gpt-4o"]
    original = next(s for s in sdk.memory.get_finished_spans() if s.name == "chat gpt-4o")
    ctx = original.get_span_context()
    assert chat["request_id"] == f"otel-{ctx.trace_id:032x}-{ctx.span_id:016x}"
    assert chat["start_time"].timestamp() == pytest.approx(start / S, abs=1e-6)
    assert chat["latency_us"] == 1_500_000
    assert chat["ttft_us"] == 250_000 and chat["streaming"]
    assert (chat["provider"], chat["response_model"], chat["call_type"]) == (
        "openai", "gpt-4o-2024-08-06", "chat")
    assert (chat["input_tokens"], chat["output_tokens"], chat["cache_read_tokens"]) == (120, 45, 100)
    assert chat["status_code"] == 200 and chat["error_type"] == ""
    assert chat["api_base"] == "api.openai.com:443"
    assert json.loads(chat["metadata"])["service.name"] == "chatbot"
    old = rows["claude-2"]
    assert (old["provider"], old["input_tokens"], old["output_tokens"]) == ("anthropic", 30, 7)
    assert old["ttft_us"] == 200_000
    failed = rows["gpt-4o-mini"]  # only the error class: its status (ERROR_STATUS), not a blanket 500
    assert (failed["status_code"], failed["error_type"], failed["error_message"]) == (
        429, "rate_limit_exceeded", "429 Too Many Requests")


async def test_re_export_is_idempotent(sdk: Sdk, db_pool) -> None:
    start = _start()
    for i in range(20):
        sdk.span("chat gpt-4o", {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                 "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": i},
                 start + i * 1000, 0.3)
    await sdk.flush()
    spans: list[ReadableSpan] = list(sdk.memory.get_finished_spans())
    assert await asyncio.to_thread(sdk.exporter.export, spans) == SpanExportResult.SUCCESS
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 20


async def test_refused_spans_are_reported_in_partial_success(sdk: Sdk, ingest_addr: str, db_pool) -> None:
    now = time.time_ns()
    sdk.span("chat gpt-4o", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"},
             now - 60 * S, 1.0)
    sdk.span("chat gpt-4o", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o"},
             now - int(timedelta(days=30).total_seconds()) * S, 1.0)  # older than the raw retention
    sdk.span("GET /", {"http.request.method": "GET"}, now, 0.1)
    spans = list(sdk.memory.get_finished_spans())
    async with keyed_channel(ingest_addr) as ch:
        resp = await trace_service_pb2_grpc.TraceServiceStub(ch).Export(encode_spans(spans))
    assert resp.partial_success.rejected_spans == 1
    assert "start_time" in resp.partial_success.error_message
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 1
