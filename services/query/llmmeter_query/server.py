"""Assembles the query service: pool, aggregator, live-tail hub and gRPC server.

`QueryServer` is what `python -m llmmeter_query` runs and what the tests
start in-process on port 0.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg
from opentelemetry.sdk.trace import TracerProvider

from llmmeter.v1 import query_pb2, query_pb2_grpc
from llmmeter_common import telemetry
from llmmeter_common.migrate import migrate
from llmmeter_common.serving import GrpcServer, key_store, wait_for_database
from llmmeter_query.aggregate import Aggregator
from llmmeter_query.servicer import QueryServicer
from llmmeter_query.settings import QuerySettings
from llmmeter_query.tail import TailHub

log = logging.getLogger(__name__)

SERVICE_NAME = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


class QueryServer:
    """One running query service."""

    def __init__(self, settings: QuerySettings) -> None:
        self.settings = settings
        self.port = 0
        self._pool: asyncpg.Pool | None = None
        self._hub: TailHub | None = None
        self._grpc: GrpcServer | None = None
        self._tracing: TracerProvider | None = None

    @property
    def grpc(self) -> GrpcServer:
        """The gRPC server (its `metrics` registry, health) once started."""
        assert self._grpc is not None
        return self._grpc

    async def start(self, db_wait_seconds: float = 120.0) -> int:
        """Wait for the database, migrate, start serving; returns the port."""
        s = self.settings
        await wait_for_database(s.database_url, db_wait_seconds)
        await migrate(s.database_url)
        self._pool = await asyncpg.create_pool(
            s.database_url, min_size=1, max_size=s.pool_max_size,
            # JIT compiles for 100+ ms once a plan looks costly: longer than these queries run
            server_settings={"statement_timeout": str(int(s.statement_timeout_seconds * 1000)), "jit": "off"},
        )
        self._hub = TailHub(s.database_url, self._pool, s.tail_queue_size)
        await self._hub.start()
        aggregator = Aggregator(self._pool, timedelta(seconds=s.exact_window_seconds), s.read_lanes)
        servicer = QueryServicer(self._pool, aggregator, self._hub)
        self._tracing = telemetry.tracing(s.otlp_endpoint, "llmmeter-query")
        self._grpc = GrpcServer([SERVICE_NAME], keys=await key_store(s, self._pool),
                                tracer_provider=self._tracing)
        self._grpc.follow_database(s.database_url, s.health_probe_interval_seconds,
                                   s.health_probe_timeout_seconds)
        self._grpc.add(lambda srv: query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, srv))
        self.port = await self._grpc.start(s.host, s.port, s.metrics_port, s.server_credentials())
        log.info("query service listening on %s:%d", s.host, self.port)
        return self.port

    async def stop(self) -> None:
        """End live tails, finish in-flight calls, close the pool."""
        if self._hub is not None:
            await self._hub.stop()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_grace_seconds)
        if self._pool is not None:
            await self._pool.close()
        if self._tracing is not None:
            await asyncio.to_thread(telemetry.shutdown, self._tracing)
        log.info("query service stopped")
