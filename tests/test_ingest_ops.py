"""Retention by dropping partitions, IP redaction switched off, and SIGTERM on the real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta

import pytest

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc
from llmmeter_common.pgcluster import free_port
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.store import Store

from conftest import ingest_settings
from keyring import keyed_channel
from records import ingest, record


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_retention_drops_whole_partitions_past_their_horizon(db_pool) -> None:
    now = datetime.now(UTC)
    await db_pool.execute("SELECT llmmeter_ensure_partitions($1, $2)", now - timedelta(days=40), now)
    store = Store(db_pool, queue_for_rollups=True)
    dropped = await store.apply_retention(raw_days=14, payload_days=7, minute_days=16, rollup_days=400)
    days = {name[-8:] for name in dropped if name.startswith("usage_records_p")}
    payload_days = {name[-8:] for name in dropped if name.startswith("usage_payloads_p")}
    oldest_kept = (now - timedelta(days=14)).strftime("%Y%m%d")
    assert days and max(days) < oldest_kept
    assert max(payload_days) >= max(days)  # payloads have the shorter horizon
    minute_days = {name[-8:] for name in dropped if name.startswith("usage_1m_p")}
    assert minute_days and max(minute_days) < (now - timedelta(days=16)).strftime("%Y%m%d")
    assert not [n for n in dropped if n.startswith(("usage_1h", "usage_1d"))]  # kept 400 days
    remaining = {r[0] for r in await db_pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage_records'")}
    assert f"usage_records_p{now.strftime('%Y%m%d')}" in remaining
    assert f"usage_records_p{oldest_kept}" in remaining
    assert not remaining & set(dropped)
    assert await store.apply_retention(14, 7, 16, 400) == []  # nothing left to drop


async def test_client_ip_kept_whole_when_redaction_is_off(db_url, db_pool) -> None:
    server = IngestServer(ingest_settings(db_url, redact_client_ip=False))
    await server.start()
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            await ingest_pb2_grpc.IngestServiceStub(ch).WriteRecords(
                ingest_pb2.WriteRecordsRequest(records=[record(client_ip="203.0.113.77")]))
    finally:
        await server.stop()
    assert await db_pool.fetchval("SELECT client_ip FROM usage_records") == "203.0.113.77"


async def test_sigterm_stops_the_process_cleanly_after_in_flight_work(db_url, db_pool) -> None:
    port = free_port()
    # metrics on a free port too: a stack started by `make run` on this machine holds the default one
    env = {**os.environ, "DATABASE_URL": db_url, "LLMMETER_INGEST_HOST": "127.0.0.1",
           "LLMMETER_INGEST_PORT": str(port), "LLMMETER_INGEST_METRICS_PORT": "0",
           "LLMMETER_INGEST_OTLP_HTTP_PORT": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmmeter_ingest", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with keyed_channel(f"127.0.0.1:{port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            resp = await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(
                records=[record() for _ in range(100)]), wait_for_ready=True, timeout=60)
            assert resp.accepted_count == 100
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        output = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
        assert "shutdown signal received" in output and "ingest service stopped" in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 100


async def test_the_service_loop_is_the_only_retention_and_honours_longer_horizons(
        db_url, db_pool, storage_flavor) -> None:
    """One mechanism on both flavours: the ingest service's loop with its settings. A 30-day raw
    horizon keeps a 20-day-old record through several runs; no database job drops it earlier."""
    if storage_flavor == "timescale":
        assert await db_pool.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'") == 0
    now = datetime.now(UTC).replace(microsecond=0)
    server = IngestServer(ingest_settings(db_url, raw_retention_days=30, payload_retention_days=30,
                                          retention_interval_seconds=0.1))
    await server.start()
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            await ingest(ingest_pb2_grpc.IngestServiceStub(ch),
                         [record(now - timedelta(days=20)), record(now - timedelta(minutes=1))])
        await asyncio.sleep(0.5)  # several retention runs
        assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 2
    finally:
        await server.stop()
    # the same loop with a 14-day horizon drops it
    dropped = await Store(db_pool, queue_for_rollups=False).apply_retention(14, 14, 400, 400)
    assert dropped
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 1
