"""Assembles the alerts service: pool, query-service channel, evaluator, dispatcher, gRPC server.

`AlertsServer` is what `python -m llmmeter_alerts` runs and what the tests
start in-process on port 0 (with `evaluate=False` and a fake clock, driving
`evaluator.tick()` and `dispatcher.run_due()` by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import asyncpg
import grpc
from opentelemetry.sdk.trace import TracerProvider

from llmmeter.channels import TlsConfig, open_channel
from llmmeter.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    prices_pb2,
    prices_pb2_grpc,
    query_pb2_grpc,
)
from llmmeter_alerts.clock import Clock, SystemClock
from llmmeter_alerts.evaluator import Evaluator
from llmmeter_alerts.keys_servicer import KeysServicer
from llmmeter_alerts.leader import Leader
from llmmeter_alerts.metrics_source import MetricSource
from llmmeter_alerts.notify import DeliveryPolicy, Dispatcher
from llmmeter_alerts.prices_servicer import PricesServicer
from llmmeter_alerts.retention import HistoryPruner
from llmmeter_alerts.servicer import AlertsServicer
from llmmeter_alerts.settings import AlertsSettings
from llmmeter_alerts.store import AlertStore
from llmmeter_alerts.targets import TargetPolicy
from llmmeter_common import telemetry
from llmmeter_common.auth.keystore import KeyStore
from llmmeter_common.migrate import migrate
from llmmeter_common.serving import GrpcServer, key_store, wait_for_database

log = logging.getLogger(__name__)

SERVICE_NAME = alerts_pb2.DESCRIPTOR.services_by_name["AlertsService"].full_name
KEYS_SERVICE_NAME = keys_pb2.DESCRIPTOR.services_by_name["KeysService"].full_name
PRICES_SERVICE_NAME = prices_pb2.DESCRIPTOR.services_by_name["PricesService"].full_name


class AlertsServer:
    """One running alerts service replica."""

    def __init__(self, settings: AlertsSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.port = 0
        self._pool: asyncpg.Pool | None = None
        self._channel: grpc.aio.Channel | None = None
        self._grpc: GrpcServer | None = None
        self._tracing: TracerProvider | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.leader = Leader(settings.database_url)
        self.evaluator: Evaluator
        self.dispatcher: Dispatcher
        self.store: AlertStore

    async def start(self, db_wait_seconds: float = 120.0) -> int:
        """Wait for the database, migrate, start serving (and evaluating); returns the port."""
        s = self.settings
        await wait_for_database(s.database_url, db_wait_seconds)
        await migrate(s.database_url)
        self._pool = await asyncpg.create_pool(s.database_url, min_size=1, max_size=s.pool_max_size)
        self.store = AlertStore(self._pool)
        self._tracing = telemetry.tracing(s.otlp_endpoint, "llmmeter-alerts")
        query_key = s.query_api_key or s.bootstrap_admin_key
        self._channel = open_channel(
            s.query_addr, query_key.get_secret_value() if query_key else None,
            TlsConfig(s.query_tls_ca_file) if s.query_tls_ca_file else None,
            interceptors=telemetry.client_interceptors(self._tracing))
        source = MetricSource(query_pb2_grpc.QueryServiceStub(self._channel), s.query_timeout_seconds)
        targets = TargetPolicy.from_setting(s.webhook_allow_hosts, s.webhook_secret_env_prefix,
                                            s.webhook_secret_envs, s.webhook_resolve_timeout_seconds)
        self.dispatcher = Dispatcher(self.store, self.clock, self.leader, DeliveryPolicy(
            timeout=s.webhook_timeout_seconds, max_attempts=s.webhook_max_attempts,
            initial_backoff=timedelta(seconds=s.webhook_initial_backoff_seconds),
            max_backoff=timedelta(seconds=s.webhook_max_backoff_seconds)), targets)
        self.evaluator = Evaluator(self.store, source, self.clock, self.leader, self.dispatcher.wake,
                                   s.concurrency)
        servicer = AlertsServicer(self.store, source, self.evaluator, self.clock, s.database_url, targets)
        keys = await key_store(s, self._pool)
        self._grpc = GrpcServer([SERVICE_NAME, KEYS_SERVICE_NAME, PRICES_SERVICE_NAME], keys=keys,
                                tracer_provider=self._tracing)
        # keys are managed here even when this replica's auth is off (the other services may check them)
        key_admin = KeysServicer(keys or KeyStore(self._pool, s.auth_cache_seconds))
        self._grpc.add(lambda srv: keys_pb2_grpc.add_KeysServiceServicer_to_server(key_admin, srv))
        prices = PricesServicer(self._pool)
        self._grpc.add(lambda srv: prices_pb2_grpc.add_PricesServiceServicer_to_server(prices, srv))
        self._grpc.follow_database(s.database_url, s.health_probe_interval_seconds,
                                   s.health_probe_timeout_seconds)
        self._grpc.add(lambda srv: alerts_pb2_grpc.add_AlertsServiceServicer_to_server(servicer, srv))
        evaluations = self._grpc.metrics.counter(
            "llmmeter_alert_evaluations", "Rule evaluations done by this replica")
        lag = self._grpc.metrics.gauge(
            "llmmeter_alert_evaluation_lag_seconds",
            "How late the latest round started its most overdue rule")

        def evaluated(n: int, behind: timedelta) -> None:
            evaluations.inc(n)
            lag.set(behind.total_seconds())

        self.evaluator.on_evaluated = evaluated
        self.port = await self._grpc.start(s.host, s.port, s.metrics_port, s.server_credentials())
        if s.evaluate:
            pruner = HistoryPruner(self._pool, self.leader, self.clock,
                                   timedelta(days=s.history_retention_days))
            self._tasks = [asyncio.create_task(self.evaluator.run(s.poll_seconds)),
                           asyncio.create_task(self.dispatcher.run(s.poll_seconds)),
                           asyncio.create_task(pruner.run(max(s.poll_seconds, 60.0)))]
        log.info("alerts service listening on %s:%d (query service at %s)", s.host, self.port, s.query_addr)
        return self.port

    async def tick(self) -> int:
        """One evaluation round and the deliveries it queued, finished (tests, with a fake clock)."""
        n = await self.evaluator.tick()
        await self.dispatcher.run_due()
        await self.dispatcher.drain()
        return n

    async def stop(self) -> None:
        """Stop evaluating, give up leadership, finish in-flight calls, close connections."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pool is not None:
            await self.dispatcher.stop()
        await self.leader.release()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_grace_seconds)
        if self._channel is not None:
            await self._channel.close()
        if self._pool is not None:
            await self._pool.close()
        if self._tracing is not None:
            await asyncio.to_thread(telemetry.shutdown, self._tracing)
        log.info("alerts service stopped")
