"""The OTLP trace receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).

Served on the ingest port beside `IngestService`, so an application's
OpenTelemetry SDK (or a Collector) can point its OTLP/gRPC trace exporter at
llmmeter directly; `otlp_http` serves the same export over OTLP/HTTP. GenAI
spans go through the same `Ingestor` as `WriteRecords`; spans refused by
validation are reported in the OTLP `partial_success` (the exporter must not
retry them) and logged (at most one line per `LOG_INTERVAL_SECONDS`), a full
queue is RESOURCE_EXHAUSTED and a database outage UNAVAILABLE, both of which
OTLP exporters retry with backoff; the retry is harmless (idempotent ids).
"""

from __future__ import annotations

import logging
import time

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from llmmeter_ingest.ingestor import Ingestor, Outcome
from llmmeter_ingest.otlp_in import convert

SERVICE_NAME = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
EXPORT_METHOD = f"/{SERVICE_NAME}/Export"
"""The full method name the access policy knows the receiver by (gRPC and HTTP alike)."""

LOG_INTERVAL_SECONDS = 10.0

log = logging.getLogger(__name__)


class RejectionLog:
    """Logs refused spans with their reason, at most once per interval (the rest are counted and
    reported with the next line), so a misbehaving exporter cannot flood the log."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def outcome(self, outcome: Outcome) -> None:
        if not outcome.rejections:
            return
        now = time.monotonic()
        if now < self._next:
            self._suppressed += len(outcome.rejections)
            return
        first = outcome.rejections[0]
        log.warning("OTLP: %d GenAI spans refused (%d more since the last report); first: %s: %s: %s",
                    len(outcome.rejections), self._suppressed, first.request_id, first.field, first.reason)
        self._suppressed = 0
        self._next = now + self._interval


async def export(ingestor: Ingestor, request: trace_service_pb2.ExportTraceServiceRequest,
                 rejections: RejectionLog) -> trace_service_pb2.ExportTraceServiceResponse:
    """Store the GenAI spans of one export; report the ones refused. A full queue raises
    `ResourceExhausted`, a database outage `Unavailable` (domain errors, for the transport to map)."""
    converted = convert(request)
    if not converted.records:
        return trace_service_pb2.ExportTraceServiceResponse()
    outcome = await ingestor.ingest(converted.records)
    rejections.outcome(outcome)
    response = trace_service_pb2.ExportTraceServiceResponse()
    if outcome.rejections:
        first = outcome.rejections[0]
        response.partial_success.rejected_spans = len(outcome.rejections)
        response.partial_success.error_message = (
            f"{len(outcome.rejections)} GenAI spans refused; first: span {first.request_id}: "
            f"{first.field}: {first.reason}")
    return response


class OtlpTraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """Turns exported GenAI spans into stored usage records."""

    def __init__(self, ingestor: Ingestor, rejections: RejectionLog | None = None) -> None:
        self._ingestor = ingestor
        self._rejections = rejections or RejectionLog()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        """Store the GenAI spans of one export; report the ones refused."""
        return await export(self._ingestor, request, self._rejections)


def register(server: grpc.aio.Server, servicer: OtlpTraceServicer) -> None:
    """Add the receiver to a gRPC server."""
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
