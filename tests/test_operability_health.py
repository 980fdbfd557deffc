"""Health checking follows the database and shutdown; reflection lists every service.

The database is a PostgreSQL of the test's own, really stopped and started;
health is read through the real `grpc.health.v1` service of running servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmmeter_common.pgcluster import LocalCluster
from llmmeter_ingest.server import SERVICE_NAME as INGEST
from llmmeter_ingest.server import IngestServer
from llmmeter_query.server import SERVICE_NAME as QUERY
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

from conftest import ingest_settings
from keyring import keyed_channel

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(port: int, service: str = "") -> int:
    async with keyed_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(resp.status)


async def _wait_for(port: int, service: str, want: int, within: float = 20.0) -> float:
    start = time.monotonic()
    while True:
        if await _status(port, service) == want:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"{service or 'server'} never became {want}"
        await asyncio.sleep(0.1)


async def test_health_follows_the_database(own_cluster: LocalCluster) -> None:
    ingest = IngestServer(ingest_settings(own_cluster.dsn(), health_probe_interval_seconds=0.2,
                                          health_probe_timeout_seconds=0.5))
    await ingest.start()
    query = QueryServer(QuerySettings(database_url=own_cluster.dsn(), host="127.0.0.1", port=0,
                                      shutdown_grace_seconds=2.0, health_probe_interval_seconds=0.2,
                                      health_probe_timeout_seconds=0.5, metrics_port=0))
    await query.start()
    try:
        for port, name in ((ingest.port, INGEST), (query.port, QUERY)):
            assert await _status(port) == SERVING
            assert await _status(port, name) == SERVING
        await asyncio.to_thread(own_cluster.stop, "immediate")
        for port, name in ((ingest.port, INGEST), (query.port, QUERY)):
            await _wait_for(port, "", NOT_SERVING, within=10)
            await _wait_for(port, name, NOT_SERVING, within=10)
        await asyncio.to_thread(own_cluster.start)
        for port, name in ((ingest.port, INGEST), (query.port, QUERY)):
            await _wait_for(port, "", SERVING)
            await _wait_for(port, name, SERVING)
    finally:
        await query.stop()
        await ingest.stop()


async def test_shutdown_reports_not_serving_before_the_server_goes(own_cluster: LocalCluster) -> None:
    ingest = IngestServer(ingest_settings(own_cluster.dsn(), shutdown_grace_seconds=1.0))
    await ingest.start()
    seen: list[int] = []
    async with keyed_channel(f"127.0.0.1:{ingest.port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=INGEST))

        async def read() -> None:
            async for resp in watch:
                seen.append(int(resp.status))

        reader = asyncio.create_task(read())
        for _ in range(100):
            if seen or reader.done():
                break
            await asyncio.sleep(0.05)
        assert seen, "Watch sent nothing"
        await ingest.stop()
        with contextlib.suppress(grpc.aio.AioRpcError):  # the stream ends with the server
            await asyncio.wait_for(reader, 10)
    assert seen[0] == SERVING
    assert NOT_SERVING in seen, seen


async def test_reflection_lists_the_services(ingest_addr: str) -> None:
    async with keyed_channel(ingest_addr) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name async for a in answers for s in a.list_services_response.service}
    assert {INGEST, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_liveness_ignores_the_database(own_cluster) -> None:
    from llmmeter_common.serving import LIVENESS

    server = IngestServer(ingest_settings(own_cluster.dsn(), health_probe_interval_seconds=0.2,
                                          health_probe_timeout_seconds=0.5))
    await server.start()
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            async def status(name: str) -> int:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                return int(resp.status)

            await asyncio.to_thread(own_cluster.stop, "immediate")
            for _ in range(100):
                if await status("") == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.1)
            assert await status("") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await status(LIVENESS) == health_pb2.HealthCheckResponse.SERVING
            await asyncio.to_thread(own_cluster.start)
    finally:
        await server.stop()
