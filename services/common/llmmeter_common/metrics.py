"""Prometheus metrics of one service: RPC counts and latencies, plus what the service adds.

Each service process owns one `ServiceMetrics` (its own registry, not the
process-global one, so services started in one process, as the tests do,
never mix their numbers) and serves it on a side HTTP port (`metrics_port`).
`MetricsInterceptor` counts every RPC by method and final status code and
times it, so the services' own code only adds what is specific to it:

    metrics = grpc_server.metrics
    evaluations = metrics.counter("llmmeter_alert_evaluations_total",
                                  "Alert rule evaluations by outcome.", ["outcome"])
    evaluations.labels(outcome="firing").inc()

`counter`, `gauge` and `histogram` return the existing metric when called
again with the same name, so callers need not keep them anywhere special.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from llmmeter_common.grpc_errors import wrap_handler

log = logging.getLogger(__name__)

#: RPC latency buckets (seconds): sub-millisecond health checks up to minute-long exports.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0, 60.0)


class ServiceMetrics:
    """The registry of one service, its RPC metrics, and a small API to add more."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.rpcs = self.counter(
            "grpc_server_handled_total", "RPCs completed, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"])
        self.rpc_seconds = self.histogram(
            "grpc_server_handling_seconds", "RPC latency (whole stream for streaming RPCs).",
            ["grpc_service", "grpc_method"], RPC_BUCKETS)

    def _get(self, name: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._metrics:
                self._metrics[name] = make()
            return self._metrics[name]

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """A counter in this service's registry (the same one on every call with `name`)."""
        return self._get(name, lambda: Counter(name, documentation, labelnames, registry=self.registry))  # type: ignore[no-any-return]

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = (),
              function: Callable[[], float] | None = None) -> Gauge:
        """A gauge; with `function`, its value is read from it at every scrape."""
        def make() -> Gauge:
            g = Gauge(name, documentation, labelnames, registry=self.registry)
            if function is not None:
                g.set_function(function)
            return g
        return self._get(name, make)  # type: ignore[no-any-return]

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = RPC_BUCKETS) -> Histogram:
        """A histogram with explicit bucket upper bounds."""
        return self._get(name, lambda: Histogram(  # type: ignore[no-any-return]
            name, documentation, labelnames, buckets=buckets, registry=self.registry))

    def serve(self, host: str, port: int) -> int:
        """Serve `/metrics` over HTTP on a background thread; returns the bound port."""
        self._http, self._thread = start_http_server(port, host, registry=self.registry)
        bound: int = self._http.server_port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if exc is None:
        return "OK"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every RPC by method and final code and observes its duration."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._m = metrics

    def _done(self, service: str, method: str, context: grpc.aio.ServicerContext,
              start: float, exc: BaseException | None) -> None:
        self._m.rpcs.labels(service, method, _code(context, exc)).inc()
        self._m.rpc_seconds.labels(service, method).observe(time.perf_counter() - start)

    def _unary(self, fn: Callable[..., Awaitable[Any]], service: str, method: str) -> Callable[..., Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                result = await fn(request, context)
            except BaseException as exc:
                self._done(service, method, context, start, exc)
                raise
            self._done(service, method, context, start, None)
            return result
        return handler

    def _stream(self, fn: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(fn):  # a coroutine writing with context.write
            return self._unary(fn, service, method)

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                async for item in fn(request, context):
                    yield item
            except BaseException as exc:
                self._done(service, method, context, start, exc)
                raise
            self._done(service, method, context, start, None)
        return handler

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split(handler_call_details.method)
        return wrap_handler(handler, lambda fn: self._unary(fn, service, method),
                            lambda fn: self._stream(fn, service, method))
