"""The services' own traces and logs: RPC and database spans over OTLP, JSON logs with trace ids.

When a service is given an OTLP endpoint, `tracing` builds its tracer
provider (batched OTLP/gRPC export) and instruments asyncpg, so every RPC
(the gRPC server interceptor `GrpcServer` installs) and every statement it
runs become spans of one trace. Calls between services carry the trace
context when their channels use `client_interceptors` (W3C traceparent), so
an alert evaluation that queries the query service is one trace.

Logs are one JSON object per line carrying `trace_id` and `span_id` of the
span current when the line was logged, so a log line leads to its trace.
Without an endpoint nothing here costs anything: no spans are created.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, trace ids, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = f"{ctx.trace_id:032x}"
            out["span_id"] = f"{ctx.span_id:016x}"
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_asyncpg_owner: list[TracerProvider] = []


def tracing(endpoint: str, service_name: str) -> TracerProvider | None:
    """The service's tracer provider exporting to `endpoint` (None when empty); instruments asyncpg.

    asyncpg is patched process-wide, for the provider started last (one service
    per process in production; tests start several in turn).
    """
    if not endpoint:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    _asyncpg_owner[:] = [provider]
    return provider


def shutdown(provider: TracerProvider) -> None:
    """Flush and stop a provider of `tracing`, un-patching asyncpg if it was for this one (blocking)."""
    if _asyncpg_owner and _asyncpg_owner[0] is provider:
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        _asyncpg_owner.clear()
    provider.shutdown()


def server_interceptor(provider: TracerProvider) -> Any:
    """A SERVER span per RPC (health checks excluded), continuing the caller's trace."""
    return aio_server_interceptor(tracer_provider=provider,  # type: ignore[no-untyped-call]
                                  filter_=filters.negate(filters.health_check()))


def client_interceptors(provider: TracerProvider | None = None) -> list[Any]:
    """Interceptors for a `grpc.aio` channel to another llmmeter service: a CLIENT span per call
    and the trace context sent along (`traceparent`), so the callee's spans join the caller's trace."""
    return list(aio_client_interceptors(tracer_provider=provider))  # type: ignore[no-untyped-call]
