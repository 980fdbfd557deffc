"""Assembles the ingest service: database, writer, servicer and gRPC server.

`IngestServer` is what `python -m llmmeter_ingest` runs and what the tests
start in-process on port 0, so the tests exercise exactly the production
wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg
from opentelemetry.sdk.trace import TracerProvider

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc
from llmmeter_common import telemetry
from llmmeter_common.metrics import ServiceMetrics
from llmmeter_common.migrate import migrate
from llmmeter_common.serving import GrpcServer, key_store, wait_for_database
from llmmeter_ingest import otlp_http, otlp_servicer
from llmmeter_ingest.ingestor import Ingestor, Outcome
from llmmeter_ingest.otel_out import UsageExporter
from llmmeter_ingest.pricing import Pricer
from llmmeter_ingest.rollup_worker import RollupWorker
from llmmeter_ingest.servicer import IngestServicer
from llmmeter_ingest.settings import IngestSettings
from llmmeter_ingest.storage_health import StorageHealth
from llmmeter_ingest.store import Store
from llmmeter_ingest.writer import BatchWriter

log = logging.getLogger(__name__)

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


class IngestServer:
    """One running ingest service."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.port = 0
        self._pool: asyncpg.Pool | None = None
        self._writer: BatchWriter | None = None
        self._grpc: GrpcServer | None = None
        self._tracing: TracerProvider | None = None
        self._retention: asyncio.Task[None] | None = None
        self._prices: asyncio.Task[None] | None = None
        self.pricer = Pricer()
        self._usage_exporter: UsageExporter | None = None
        self._otlp_http: otlp_http.OtlpHttpReceiver | None = None
        self.otlp_http_port = 0
        """The bound OTLP/HTTP port (0 when not served)."""
        self.rollups: RollupWorker | None = None
        """The rollup worker (PostgreSQL flavour only)."""
        self.storage_health: StorageHealth | None = None
        """The checks of the storage's background work (health name `storage`)."""

    @property
    def writer(self) -> BatchWriter:
        """The batch writer (for metrics and tests)."""
        assert self._writer is not None
        return self._writer

    @property
    def grpc(self) -> GrpcServer:
        """The gRPC server (its `metrics` registry, health) once started."""
        assert self._grpc is not None
        return self._grpc

    async def start(self, db_wait_seconds: float = 120.0) -> int:
        """Migrate, connect, and start serving; returns the port."""
        s = self.settings
        self._metrics = ServiceMetrics()
        self._quarantined = self._metrics.counter(
            "llmmeter_rollup_quarantined_records_total",
            "Queued rows the rollups refused (e.g. a sum would overflow), set aside in "
            "usage_rollup_quarantine so the queue keeps draining.")
        await wait_for_database(s.database_url, db_wait_seconds)
        if s.migrate_on_start:
            await migrate(s.database_url, s.storage_flavor)
        self._pool = await asyncpg.create_pool(
            s.database_url, min_size=1, max_size=s.pool_max_size,
            command_timeout=s.db_command_timeout_seconds,
        )
        flavor = await self._pool.fetchval("SELECT flavor FROM llmmeter_schema_migrations LIMIT 1")
        store = Store(self._pool, queue_for_rollups=flavor != "timescale")
        self._writer = BatchWriter(store, s.queue_max_records, s.group_commit_records, s.writers)
        if flavor != "timescale":
            self.rollups = RollupWorker(self._pool, s.rollup_chunk_records, s.rollup_idle_seconds,
                                        s.rollup_compact_over, on_quarantine=self._quarantined.inc,
                                        activity=self._writer.activity)
            self.rollups.start()
        self._tracing = telemetry.tracing(s.otlp_endpoint, "llmmeter-ingest")
        names = [SERVICE_NAME, *([otlp_servicer.SERVICE_NAME] if s.otlp_receiver else [])]
        keys = await key_store(s, self._pool)
        self._grpc = GrpcServer(names, keys=keys, metrics=self._metrics, tracer_provider=self._tracing)
        count_outcome = self._ingest_metrics(self._grpc.metrics, self._writer)
        if s.otlp_endpoint:
            self._usage_exporter = self._start_usage_exporter(self._grpc.metrics)
        await self.pricer.refresh(self._pool)
        self._prices = asyncio.create_task(self._prices_loop(self._pool))
        ingestor = Ingestor(s, self._writer, on_outcome=count_outcome,
                            on_stored=self._usage_exporter.offer if self._usage_exporter else None,
                            pricer=self.pricer)
        servicer = IngestServicer(ingestor, s)
        rejections = otlp_servicer.RejectionLog()
        if s.otlp_receiver:
            receiver = otlp_servicer.OtlpTraceServicer(ingestor, rejections)
            self._grpc.add(lambda srv: otlp_servicer.register(srv, receiver))
        self._grpc.follow_database(s.database_url, s.health_probe_interval_seconds,
                                   s.health_probe_timeout_seconds)
        self._grpc.add(lambda srv: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, srv))
        self.port = await self._grpc.start(s.host, s.port, s.metrics_port, s.server_credentials())
        if s.otlp_receiver and s.otlp_http_port:
            self._otlp_http = otlp_http.OtlpHttpReceiver(ingestor, keys, rejections, self._grpc.metrics)
            self.otlp_http_port = await self._otlp_http.start(
                s.host, s.otlp_http_port, otlp_http.ssl_context(s), s.shutdown_grace_seconds)
            log.info("OTLP/HTTP receiver listening on %s:%d", s.host, self.otlp_http_port)
        self._retention = asyncio.create_task(self._retention_loop(store))
        self.storage_health = StorageHealth(
            self._pool, flavor or "postgres", self._grpc.metrics, self._grpc.health,
            s.storage_check_interval_seconds, s.storage_job_stale_seconds,
            s.rollup_pending_max_age_seconds)
        await self.storage_health.start()
        log.info("ingest service listening on %s:%d", s.host, self.port)
        return self.port

    @staticmethod
    def _ingest_metrics(metrics: ServiceMetrics, writer: BatchWriter) -> Callable[[Outcome], None]:
        """Queue depth, read at each scrape, and a counter of records by outcome."""
        metrics.gauge("llmmeter_ingest_queue_records",
                      "Records validated and queued but not yet committed.",
                      function=lambda: writer.queued_records)
        records = metrics.counter(
            "llmmeter_ingest_records_total",
            "Records received, by outcome: accepted (newly stored), duplicate (already stored), "
            "rejected (invalid).", ["outcome"])
        accepted, duplicate, rejected = (records.labels(o) for o in ("accepted", "duplicate", "rejected"))

        def count(outcome: Outcome) -> None:
            accepted.inc(outcome.accepted)
            duplicate.inc(outcome.duplicates)
            rejected.inc(len(outcome.rejections))

        return count

    def _start_usage_exporter(self, metrics: ServiceMetrics) -> UsageExporter:
        """Stored records out as OTLP spans and histograms; drops counted, never blocking ingest."""
        s = self.settings
        dropped = metrics.counter("llmmeter_otel_dropped_records_total",
                                  "Stored records not exported to OTLP because the export queue was full.")
        exporter = UsageExporter(s.otlp_endpoint, s.otlp_export_queue_records,
                                 s.otlp_metrics_interval_seconds, on_drop=dropped.inc)
        metrics.gauge("llmmeter_otel_export_queue_records", "Stored records waiting for OTLP export.",
                      function=lambda: exporter.queued_records)
        exporter.start()
        return exporter

    async def _retention_loop(self, store: Store) -> None:
        s = self.settings
        while True:
            try:
                await store.apply_retention(s.raw_retention_days, s.payload_retention_days,
                                            s.minute_retention_days, s.rollup_retention_days)
            except Exception:
                log.exception("retention run failed; will retry")
            await asyncio.sleep(s.retention_interval_seconds)

    async def _prices_loop(self, pool: asyncpg.Pool) -> None:
        while True:
            await asyncio.sleep(self.settings.prices_refresh_seconds)
            try:
                await self.pricer.refresh(pool)
            except Exception:
                log.warning("reading the price overrides failed; keeping the previous ones", exc_info=True)

    async def stop(self) -> None:
        """Refuse new calls, finish in-flight ones, flush the queue, close the pool."""
        if self._prices is not None:
            self._prices.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prices
        if self.storage_health is not None:
            await self.storage_health.stop()
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        if self._otlp_http is not None:
            await self._otlp_http.stop()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_grace_seconds)
        if self._writer is not None:
            await self._writer.close()
        if self._usage_exporter is not None:  # after the last commit offered its rows
            await asyncio.to_thread(self._usage_exporter.close)
        if self.rollups is not None:
            await self.rollups.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._tracing is not None:
            await asyncio.to_thread(telemetry.shutdown, self._tracing)
        log.info("ingest service stopped")
