"""Stored records out as OTLP GenAI spans and histograms, received by a real in-process OTLP collector.

The collector is a gRPC server implementing the OTLP TraceService and
MetricsService from the `opentelemetry-proto` package; the ingest service's
real OTLP exporter (its own thread) sends to it over loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc
from llmmeter_common.timeutil import to_us
from llmmeter_ingest import genai
from llmmeter_ingest.otel_out import UsageExporter, span_ids
from llmmeter_ingest.otlp_in import attributes
from llmmeter_ingest.rows import to_rows
from llmmeter_ingest.server import IngestServer

from conftest import ingest_settings
from keyring import keyed_channel
from otlp_sink import serving
from records import record


class Collector(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """Keeps every usage span (not the service's own RPC spans) and metric it is sent."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.metrics: list[Any] = []

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self.spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
                           if attributes(rs.resource.attributes).get("service.name") == "llmmeter-usage"]
            return trace_service_pb2.ExportTraceServiceResponse()
        self.metrics += [m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    c = Collector()
    async with serving(c, trace_service_pb2_grpc.add_TraceServiceServicer_to_server,
                       metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server) as port:
        yield c, port


async def _until(check: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_stored_records_become_genai_spans_and_histograms(db_url, collector) -> None:
    coll, port = collector
    server = IngestServer(ingest_settings(db_url, otlp_endpoint=f"http://127.0.0.1:{port}",
                                          otlp_metrics_interval_seconds=0.5))
    await server.start()
    ok = record(model="gpt-4o", provider="openai", call_type="completion", response_model="gpt-4o-2024-08-06",
                input_tokens=1000, output_tokens=51, cache_read_tokens=600, latency_ms=1300, ttft_ms=300)
    failed = record(model="claude-3", provider="anthropic", call_type="chat", status_code=429,
                    error_type="rate_limit", error_message="slow down", ttft_ms=None, output_tokens=0)
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[ok]))
            streamed = await stub.StreamRecords(iter([ingest_pb2.StreamRecordsRequest(records=[failed])]))
            assert streamed.accepted_count == 1
            resp = await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[ok]))
            assert resp.duplicate_count == 1
        await _until(lambda: len(coll.spans) >= 2)
        wanted = {genai.OPERATION_DURATION, genai.TOKEN_USAGE, genai.TIME_TO_FIRST_TOKEN,
                  genai.TIME_PER_OUTPUT_TOKEN}
        await _until(lambda: {m.name for m in coll.metrics} >= wanted)
    finally:
        await server.stop()
    assert len(coll.spans) == 2, "a duplicate must not be exported again"
    spans = {s.name: s for s in coll.spans}
    assert set(spans) == {"chat gpt-4o", "chat claude-3"}
    span, a = spans["chat gpt-4o"], attributes(spans["chat gpt-4o"].attributes)
    start_us = to_us(ok.start_time.ToDatetime(tzinfo=UTC))
    trace_id, span_id = span_ids(ok.request_id, start_us)
    assert (span.trace_id.hex(), span.span_id.hex()) == (f"{trace_id:032x}", f"{span_id:016x}")
    assert span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert span.start_time_unix_nano == start_us * 1000
    assert span.end_time_unix_nano == (start_us + 1_300_000) * 1000
    assert a[genai.OPERATION] == "chat" and a[genai.PROVIDER] == "openai"
    assert (a[genai.REQUEST_MODEL], a[genai.RESPONSE_MODEL]) == ("gpt-4o", "gpt-4o-2024-08-06")
    assert (a[genai.INPUT_TOKENS], a[genai.OUTPUT_TOKENS], a[genai.CACHE_READ_TOKENS]) == (1000, 51, 600)
    assert a[genai.TIME_TO_FIRST_CHUNK] == pytest.approx(0.3)
    assert genai.ERROR_TYPE not in a
    assert [(e.name, e.time_unix_nano) for e in span.events] == [
        (genai.FIRST_TOKEN_EVENT, (start_us + 300_000) * 1000)]
    bad, b = spans["chat claude-3"], attributes(spans["chat claude-3"].attributes)
    assert b[genai.ERROR_TYPE] == "rate_limit"
    assert bad.status.code == trace_pb2.Status.STATUS_CODE_ERROR and bad.status.message == "slow down"
    assert not bad.events

    def histogram(name: str) -> Any:
        return next(m for m in reversed(coll.metrics) if m.name == name).histogram

    duration = histogram(genai.OPERATION_DURATION)
    assert list(duration.data_points[0].explicit_bounds) == list(genai.OPERATION_DURATION_BUCKETS)
    assert sum(p.count for p in duration.data_points) == 2
    tokens = histogram(genai.TOKEN_USAGE)
    assert list(tokens.data_points[0].explicit_bounds) == [float(b) for b in genai.TOKEN_USAGE_BUCKETS]
    by_type = {(attributes(p.attributes)[genai.TOKEN_TYPE], attributes(p.attributes)[genai.REQUEST_MODEL]):
               p.sum for p in tokens.data_points}
    assert by_type[("input", "gpt-4o")] == 1000 and by_type[("output", "gpt-4o")] == 51
    ttft = histogram(genai.TIME_TO_FIRST_TOKEN)
    assert list(ttft.data_points[0].explicit_bounds) == list(genai.TIME_TO_FIRST_TOKEN_BUCKETS)
    assert sum(p.count for p in ttft.data_points) == 1  # successful streamed calls only
    tpot = histogram(genai.TIME_PER_OUTPUT_TOKEN)
    assert list(tpot.data_points[0].explicit_bounds) == list(genai.TIME_PER_OUTPUT_TOKEN_BUCKETS)
    assert tpot.data_points[0].sum == pytest.approx((1.3 - 0.3) / 50)


async def test_a_full_export_queue_drops_and_counts_instead_of_blocking(db_url) -> None:
    dropped: list[int] = []
    exporter = UsageExporter("http://127.0.0.1:9", max_queued_records=3, metrics_interval=60,
                             on_drop=dropped.append)  # not started: nothing drains
    rows = [to_rows(record(), True)[0] for _ in range(5)]
    assert exporter.offer(rows[:2]) and exporter.offer(rows[2:3])
    assert not exporter.offer(rows[3:5])
    assert dropped == [2] and exporter.queued_records == 3
    exporter.tracer_provider.shutdown()
    exporter.meter_provider.shutdown()
