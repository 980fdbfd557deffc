"""The services' own telemetry: RPC and database spans over OTLP, trace context across services,
JSON logs carrying trace ids. Spans are received by a real in-process OTLP collector."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider

from llmmeter.v1 import query_pb2, query_pb2_grpc
from llmmeter_common.telemetry import JsonFormatter, client_interceptors
from llmmeter_ingest.otlp_in import attributes
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

from keyring import keyed_channel
from otlp_sink import serving
from records import ts


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span with its resource's service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        for rs in request.resource_spans:
            service = attributes(rs.resource.attributes).get("service.name", "")
            self.spans += [(service, s) for ss in rs.scope_spans for s in ss.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    c = Collector()
    async with serving(c, trace_service_pb2_grpc.add_TraceServiceServicer_to_server) as port:
        yield c, port


async def test_rpc_and_database_spans_join_the_callers_trace(db_url, collector) -> None:
    coll, port = collector
    server = QueryServer(QuerySettings(database_url=db_url, host="127.0.0.1", port=0, metrics_port=0,
                                       shutdown_grace_seconds=2.0, otlp_endpoint=f"http://127.0.0.1:{port}"))
    await server.start()
    caller = TracerProvider()  # another service (alerts) calling the query service
    now = datetime.now(UTC)
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}",
                                             interceptors=client_interceptors(caller)) as ch:
            with caller.get_tracer("alerts").start_as_current_span("evaluate rule") as parent:
                await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest(
                    start_time=ts(now - timedelta(hours=1)), end_time=ts(now)))
        trace_id = parent.get_span_context().trace_id.to_bytes(16, "big")
    finally:
        await server.stop()  # flushes the service's spans
        caller.shutdown()
    mine = [(svc, s) for svc, s in coll.spans if s.trace_id == trace_id]
    rpc = [s for svc, s in mine if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    assert [s.name for s in rpc] == ["/llmmeter.v1.QueryService/GetSummary"]
    assert {svc for svc, _ in mine} == {"llmmeter-query"}
    db = [s for _, s in mine if attributes(s.attributes).get("db.system") == "postgresql"
          or attributes(s.attributes).get("db.system.name") == "postgresql"]
    assert db, "no database spans in the RPC's trace"
    assert all(s.parent_span_id for s in db)
    assert not [s for _, s in coll.spans if "Health" in s.name]


def test_json_logs_carry_the_current_trace_and_span_ids() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("llmmeter.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("work") as span:
        logger.info("stored %d records", 5, extra={"batch": 7})
    logger.warning("outside any span")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    ctx = span.get_span_context()
    assert first["message"] == "stored 5 records" and first["level"] == "INFO" and first["batch"] == 7
    assert (first["trace_id"], first["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert "trace_id" not in second
    assert time.time() - datetime.fromisoformat(first["time"]).timestamp() < 60
