"""What every llmmeter gRPC service shares: server assembly, health, reflection, signals.

Each service only registers its own servicers; the common parts (the error
interceptor, RPC metrics served to Prometheus, `grpc.health.v1` following the
database, server reflection, waiting for the database, a clean stop on SIGTERM
or Ctrl-C) are written once here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Protocol

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from llmmeter_common.auth.interceptor import AuthInterceptor
from llmmeter_common.auth.keystore import KeyStore
from llmmeter_common.dbprobe import DatabaseProbe
from llmmeter_common.grpc_errors import DomainErrorInterceptor
from llmmeter_common.heap import freeze_startup_objects
from llmmeter_common.metrics import MetricsInterceptor, ServiceMetrics
from llmmeter_common.security import SecuritySettings
from llmmeter_common.telemetry import JsonFormatter, server_interceptor

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """One log format for all services: JSON lines carrying the current trace and span ids
    (`json_lines=False`: plain text, for a developer's terminal)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


async def key_store(settings: SecuritySettings, pool: asyncpg.Pool) -> KeyStore | None:
    """The key store a service checks calls against (None when its operator disabled auth), with
    the operator's bootstrap admin key stored first when one is configured."""
    if settings.auth_disabled:
        log.warning("auth is disabled: every call is served as an admin of every team")
        return None
    store = KeyStore(pool, settings.auth_cache_seconds)
    bootstrap = settings.bootstrap_admin_key
    if bootstrap is not None and await store.ensure(bootstrap.get_secret_value(), "bootstrap admin"):
        log.info("stored the bootstrap admin key")
    return store


async def wait_for_database(dsn: str, max_wait: float) -> None:
    """Retry connecting until the database answers (it may start after us)."""
    deadline = time.monotonic() + max_wait
    delay = 0.2
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"database at {dsn} unreachable: {exc}") from exc
            log.warning("waiting for the database: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


#: Health service name that only says the process is up and answering, whatever the
#: database does: for liveness probes, so a database outage does not restart every pod.
LIVENESS = "liveness"


class GrpcServer:
    """A grpc.aio server with health checking, reflection, RPC metrics and domain-error mapping.

    `metrics` is the service's Prometheus registry (see `llmmeter_common.metrics`):
    services add their own counters and gauges to it; `start(..., metrics_port=N)`
    serves it over HTTP.
    """

    def __init__(self, service_names: list[str], *, keys: KeyStore | None,
                 metrics: ServiceMetrics | None = None,
                 tracer_provider: TracerProvider | None = None) -> None:
        """`keys` checks every call's API key against the access policy; None serves every call
        as an unscoped admin (only when the operator disabled auth: see `SecuritySettings`)."""
        self.metrics = metrics or ServiceMetrics()
        self.metrics_port = 0
        """The bound metrics HTTP port (0 when not served)."""
        # The first interceptor is the outermost: the span covers everything, metrics see the
        # status the error mapping chose.
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(self.metrics),
                                                          DomainErrorInterceptor(), AuthInterceptor(keys)]
        if tracer_provider is not None:
            interceptors.insert(0, server_interceptor(tracer_provider))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names = service_names
        self._probe: DatabaseProbe | None = None
        self._started = False
        self._stopping = False
        reflection.enable_server_reflection(
            [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )

    def add(self, register: Callable[[grpc.aio.Server], None]) -> None:
        """Register a servicer, e.g. `lambda s: add_FooServicer_to_server(impl, s)`."""
        register(self.server)

    def follow_database(self, dsn: str, interval: float = 2.0, timeout: float = 1.0) -> None:
        """Report NOT_SERVING while the database does not answer `SELECT 1` within `timeout`.

        Call before `start`; the probe runs every `interval` seconds until `stop`.
        """
        self._probe = DatabaseProbe(dsn, self._database_changed, interval, timeout)

    async def _database_changed(self, ok: bool) -> None:
        await self.set_serving(ok)

    async def start(self, host: str, port: int, metrics_port: int = 0,
                    credentials: grpc.ServerCredentials | None = None) -> int:
        """Listen and serve; returns the bound port (useful with port 0).

        With `metrics_port` (non-zero), `/metrics` is served over HTTP on that port; with
        `credentials`, the gRPC port serves TLS only.
        """
        address = f"{host}:{port}"
        bound: int = (self.server.add_insecure_port(address) if credentials is None
                      else self.server.add_secure_port(address, credentials))
        if bound == 0:
            raise RuntimeError(f"could not bind {host}:{port}")
        if metrics_port:
            self.metrics_port = self.metrics.serve(host, metrics_port)
        await self.server.start()
        self._started = True
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.set_serving(True)
        if self._probe is not None:
            self._probe.start()
        return bound

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the whole server and each service.

        SERVING needs a started server that is not shutting down and, when
        followed, a reachable database; asking for it otherwise reports NOT_SERVING.
        """
        serving = (serving and self._started and not self._stopping
                   and (self._probe is None or self._probe.ok))
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ["", *self._names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, stop taking calls, let in-flight ones finish within `grace` seconds."""
        self._stopping = True
        if self._probe is not None:
            await self._probe.stop()
        await self.set_serving(False)
        await self.server.stop(grace)
        await asyncio.to_thread(self.metrics.stop)


async def wait_for_shutdown_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown signal received")


class Service(Protocol):
    """What `run_service` needs of a service."""

    async def start(self) -> int:
        """Start serving; returns the port."""
        ...

    async def stop(self) -> None:
        """Stop gracefully."""
        ...


def run_service(service: Service) -> None:
    """`python -m` entry: serve until SIGTERM or Ctrl-C, then stop gracefully."""
    configure_logging()

    async def _main() -> None:
        await service.start()
        freeze_startup_objects()
        try:
            await wait_for_shutdown_signal()
        finally:
            await service.stop()

    asyncio.run(_main())
