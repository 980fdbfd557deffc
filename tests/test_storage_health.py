"""The storage's background work reported: a Prometheus gauge, one log line per change, and
the gRPC health name `storage`. On PostgreSQL: the rollup worker stalled (its lock held
elsewhere) while rows wait in the queue. On TimescaleDB: a background job whose last run failed."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmeter.v1 import ingest_pb2_grpc
from llmmeter_ingest.rollup_worker import _LOCK_KEY
from llmmeter_ingest.server import SERVICE_NAME as INGEST
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.storage_health import HEALTH_NAME, check

from conftest import ingest_settings
from keyring import keyed_channel
from records import ingest, record

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(port: int, service: str) -> int:
    async with keyed_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(resp.status)


async def _until(port: int, service: str, want: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while await _status(port, service) != want:
        assert time.monotonic() < deadline, f"{service} never became {want}"
        await asyncio.sleep(0.05)


def _gauge(server: IngestServer, name: str) -> float | None:
    return server.grpc.metrics.registry.get_sample_value(name)  # type: ignore[no-any-return]


async def test_a_stalled_rollup_worker_is_reported_and_recovers(db_url, storage_flavor, caplog) -> None:
    if storage_flavor != "postgres":
        pytest.skip("the rollup worker and its queue are the PostgreSQL flavour's mechanism")
    caplog.set_level(logging.INFO, logger="llmmeter_ingest.storage_health")
    server = IngestServer(ingest_settings(db_url, storage_check_interval_seconds=0.1,
                                          rollup_pending_max_age_seconds=0.5, rollup_idle_seconds=0.05))
    await server.start()
    blocker = await asyncpg.connect(db_url)
    try:
        assert await _status(server.port, HEALTH_NAME) == SERVING
        await blocker.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)  # the worker cannot take it
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            await ingest(ingest_pb2_grpc.IngestServiceStub(ch), [record() for _ in range(3)])
        await _until(server.port, HEALTH_NAME, NOT_SERVING)
        assert await _status(server.port, INGEST) == SERVING  # ingest itself keeps serving
        assert await _status(server.port, "") == SERVING
        assert _gauge(server, "llmmeter_storage_healthy") == 0
        assert _gauge(server, "llmmeter_rollup_pending_records") == 3
        assert (_gauge(server, "llmmeter_rollup_pending_oldest_seconds") or 0) > 0.5
        await asyncio.sleep(0.5)  # several more checks: still one log line
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "rollup queue: 3 rows" in warnings[0].getMessage()
        await blocker.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        await _until(server.port, HEALTH_NAME, SERVING)
        assert _gauge(server, "llmmeter_storage_healthy") == 1
        assert _gauge(server, "llmmeter_rollup_pending_records") == 0
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO][-1:] == [
            "storage healthy again"]
    finally:
        await blocker.close()
        await server.stop()


async def test_a_failed_timescaledb_job_is_reported(db_pool, storage_flavor) -> None:
    if storage_flavor != "timescale":
        pytest.skip("background jobs are the TimescaleDB flavour's mechanism")
    async with db_pool.acquire() as conn:
        # the database's own jobs may have failed already (TimescaleDB 2.17.2 on PostgreSQL 15.20
        # fails every run with "cannot drop portal", README): this job's report is what is tested
        await conn.execute("""
            CREATE PROCEDURE llmmeter_test_failing_job(job_id int, config jsonb) LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'boom'; END $$""")
        job = await conn.fetchval(
            "SELECT add_job('llmmeter_test_failing_job', '1 hour', initial_start => now())")
        deadline = time.monotonic() + 60
        while True:  # the database's job scheduler runs it
            st = await check(conn, "timescale", 3600, 600)
            if f"{job}:failed" in st.problems:
                break
            assert time.monotonic() < deadline, st
            await asyncio.sleep(0.2)
        assert "llmmeter_test_failing_job: last run failed" in st.problems[f"{job}:failed"]
        await conn.execute("SELECT alter_job($1, scheduled => false)", job)
        st = await check(conn, "timescale", 3600, 600)
        assert f"{job}:failed" not in st.problems  # only scheduled jobs count
