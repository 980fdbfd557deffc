"""Prometheus metrics: scraped from the real HTTP endpoint after real RPCs to running services."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from llmmeter_common.pgcluster import free_port
from llmmeter_ingest.server import IngestServer
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

from conftest import ingest_settings
from keyring import keyed_channel
from records import record, ts

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


async def scrape(port: int) -> Samples:
    """Every sample of the endpoint, keyed by name and label set."""
    text = await asyncio.to_thread(_get, port)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_ingest_metrics_count_rpcs_codes_and_records(db_url: str) -> None:
    server = IngestServer(ingest_settings(db_url, metrics_port=free_port()))
    await server.start()
    metrics_port = server.settings.metrics_port
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            first = record()
            bad = record(latency_ms=-10)  # ends before it starts
            resp = await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[first, record(), bad]))
            assert (resp.accepted_count, len(resp.rejections)) == (2, 1)
            resp = await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[first]))
            assert resp.duplicate_count == 1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[bad]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        s = await scrape(metrics_port)
    finally:
        await server.stop()
    svc, handled = "llmmeter.v1.IngestService", "grpc_server_handled_total"
    assert value(s, handled, grpc_service=svc, grpc_method="WriteRecords", grpc_code="OK") == 2
    assert value(s, handled, grpc_service=svc, grpc_method="WriteRecords",
                 grpc_code="INVALID_ARGUMENT") == 1
    assert value(s, handled, grpc_service="grpc.health.v1.Health", grpc_method="Check",
                 grpc_code="OK") == 1
    assert value(s, "grpc_server_handling_seconds_count", grpc_service=svc, grpc_method="WriteRecords") == 3
    assert value(s, "grpc_server_handling_seconds_bucket", grpc_service=svc, grpc_method="WriteRecords",
                 le="+Inf") == 3
    assert value(s, "llmmeter_ingest_records_total", outcome="accepted") == 2
    assert value(s, "llmmeter_ingest_records_total", outcome="duplicate") == 1
    assert value(s, "llmmeter_ingest_records_total", outcome="rejected") == 2
    assert ("llmmeter_ingest_queue_records", frozenset()) in s
    assert value(s, "llmmeter_ingest_queue_records") == 0
    with pytest.raises(urllib.error.URLError):  # the endpoint goes with the service
        await asyncio.to_thread(_get, metrics_port)


async def test_query_metrics_and_extra_metrics_api(db_url: str) -> None:
    server = QueryServer(QuerySettings(database_url=db_url, host="127.0.0.1", port=0,
                                       shutdown_grace_seconds=2.0, metrics_port=free_port()))
    await server.start()
    try:
        # The registry API other services (alerts) use for their own metrics.
        evaluations = server.grpc.metrics.counter(
            "llmmeter_alert_evaluations_total", "Alert rule evaluations by outcome.", ["outcome"])
        assert evaluations is server.grpc.metrics.counter(
            "llmmeter_alert_evaluations_total", "Alert rule evaluations by outcome.", ["outcome"])
        evaluations.labels(outcome="ok").inc(3)
        now = datetime.now(UTC)
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest(
                start_time=ts(now - timedelta(hours=1)), end_time=ts(now)))
        s = await scrape(server.settings.metrics_port)
    finally:
        await server.stop()
    assert value(s, "grpc_server_handled_total", grpc_service="llmmeter.v1.QueryService",
                 grpc_method="GetSummary", grpc_code="OK") == 1
    assert value(s, "llmmeter_alert_evaluations_total", outcome="ok") == 3
    assert value(s, "process_cpu_seconds_total") > 0
