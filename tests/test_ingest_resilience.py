"""Failure paths: the database going away mid-ingest, a full queue, shutdown with calls in flight,
and migrations run twice or by two processes at once."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc
from llmmeter_common.migrate import Flavor, load_migrations, migrate
from llmmeter_common.pgcluster import LocalCluster
from llmmeter_ingest.server import IngestServer

from conftest import drain_rollups, ingest_settings
from keyring import keyed_channel
from records import record


def _versions(flavor: Flavor) -> list[int]:
    """Every migration of the flavour (TimescaleDB has some of its own)."""
    return [m.version for m in load_migrations(flavor)]


async def _batch(stub, recs) -> ingest_pb2.WriteRecordsResponse:
    return await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=recs), timeout=30)


async def test_database_restart_during_ingest_loses_nothing_accepted(own_cluster: LocalCluster) -> None:
    server = IngestServer(ingest_settings(own_cluster.dsn()))
    await server.start()
    batches = [[record() for _ in range(200)] for _ in range(30)]
    acked, unavailable = 0, 0
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)

            crashed = asyncio.Event()

            async def send_all() -> None:
                nonlocal acked, unavailable
                for i, b in enumerate(batches):
                    if i == 10:  # the rest goes out with the database down (and then back)
                        await crashed.wait()
                    while True:  # a client retrying as it should: re-sending is safe
                        try:
                            resp = await _batch(stub, b)
                        except grpc.aio.AioRpcError as err:
                            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                            unavailable += 1
                            await asyncio.sleep(0.1)
                            continue
                        acked += resp.accepted_count + resp.duplicate_count
                        break

            sender = asyncio.create_task(send_all())
            while acked < 1000:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(own_cluster.stop, "immediate")  # a crash, no checkpoint
            crashed.set()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_cluster.start)
            await asyncio.wait_for(sender, 120)
    finally:
        await server.stop()
    assert unavailable >= 1, "the restart did not hit any call"
    assert acked == 6000
    await drain_rollups(own_cluster.dsn())
    conn = await asyncpg.connect(own_cluster.dsn())
    try:
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == 6000
        for table in ("usage_1m", "usage_1h", "usage_1d"):
            assert await conn.fetchval(f"SELECT sum(request_count) FROM {table} WHERE dims_mask = 0") == 6000
    finally:
        await conn.close()


async def test_unreachable_database_gives_unavailable_and_writes_nothing(own_cluster: LocalCluster) -> None:
    server = IngestServer(ingest_settings(own_cluster.dsn()))
    await server.start()
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            recs = [record() for _ in range(50)]
            await asyncio.to_thread(own_cluster.stop, "fast")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _batch(stub, recs)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.to_thread(own_cluster.start)
            conn = await asyncpg.connect(own_cluster.dsn())
            try:
                assert await conn.fetchval("SELECT count(*) FROM usage_records") == 0
                assert await conn.fetchval("SELECT count(*) FROM usage_1m") == 0
            finally:
                await conn.close()
            for _ in range(20):  # the pool reconnects by itself
                try:
                    resp = await _batch(stub, recs)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.2)
            assert resp.accepted_count == 50
    finally:
        await server.stop()


async def _hold_rollup_lock(db_url: str) -> asyncpg.Connection:
    """Block every write by locking a rollup table in another session."""
    conn = await asyncpg.connect(db_url)
    await conn.execute("BEGIN; LOCK TABLE usage_1m IN ACCESS EXCLUSIVE MODE")
    return conn


async def test_full_queue_gives_resource_exhausted(db_url: str, db_pool) -> None:
    server = IngestServer(ingest_settings(db_url, queue_max_records=10, writers=1))
    await server.start()
    blocker = await _hold_rollup_lock(db_url)
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            first = asyncio.create_task(_batch(stub, [record() for _ in range(8)]))
            while server.writer.queued_records < 8:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _batch(stub, [record() for _ in range(5)])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await blocker.execute("ROLLBACK")
            assert (await first).accepted_count == 8
    finally:
        await blocker.close()
        await server.stop()
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 8


async def test_shutdown_finishes_calls_in_flight(db_url: str, db_pool) -> None:
    server = IngestServer(ingest_settings(db_url))
    await server.start()
    blocker = await _hold_rollup_lock(db_url)
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            inflight = asyncio.create_task(_batch(stub, [record() for _ in range(20)]))
            while server.writer.queued_records < 20:
                await asyncio.sleep(0.01)
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0.3)
            await blocker.execute("ROLLBACK")
            assert (await inflight).accepted_count == 20
            await stopping
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _batch(stub, [record()])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await blocker.close()
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 20


async def test_migrations_run_twice_apply_once(empty_db_url: str, storage_flavor: Flavor) -> None:
    url = empty_db_url
    assert await migrate(url, storage_flavor) == _versions(storage_flavor)
    assert await migrate(url, storage_flavor) == []


async def test_migrations_from_two_processes_at_once(empty_db_url: str, storage_flavor: Flavor) -> None:
    url = empty_db_url
    first, second = await asyncio.gather(migrate(url, storage_flavor), migrate(url, storage_flavor))
    assert sorted(first + second) == _versions(storage_flavor)
    conn = await asyncpg.connect(url)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM llmmeter_schema_migrations")
        assert applied == len(_versions(storage_flavor))
        assert await conn.fetchval("SELECT flavor FROM llmmeter_schema_migrations LIMIT 1") == storage_flavor
    finally:
        await conn.close()
