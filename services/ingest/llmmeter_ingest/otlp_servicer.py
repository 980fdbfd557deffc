"""The OTLP trace receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).

Served on the ingest port beside `IngestService`, so an application's
OpenTelemetry SDK (or a Collector) can point its OTLP/gRPC trace exporter at
llmmeter directly. GenAI spans go through the same `Ingestor` as
`WriteRecords`; spans refused by validation are reported in the OTLP
`partial_success` (the exporter must not retry them), a full queue is
RESOURCE_EXHAUSTED and a database outage UNAVAILABLE, both of which OTLP
exporters retry with backoff; the retry is harmless (idempotent ids).
"""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from llmmeter_ingest.ingestor import Ingestor
from llmmeter_ingest.otlp_in import convert

SERVICE_NAME = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


class OtlpTraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """Turns exported GenAI spans into stored usage records."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        """Store the GenAI spans of one export; report the ones refused."""
        converted = convert(request)
        if not converted.records:
            return trace_service_pb2.ExportTraceServiceResponse()
        outcome = await self._ingestor.ingest(converted.records)
        response = trace_service_pb2.ExportTraceServiceResponse()
        if outcome.rejections:
            first = outcome.rejections[0]
            response.partial_success.rejected_spans = len(outcome.rejections)
            response.partial_success.error_message = (
                f"{len(outcome.rejections)} GenAI spans refused; first: span {first.request_id}: "
                f"{first.field}: {first.reason}")
        return response


def register(server: grpc.aio.Server, servicer: OtlpTraceServicer) -> None:
    """Add the receiver to a gRPC server."""
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
