"""Team-bound keys over the real services: a key bound to a team sees and writes only that team's
data in every call, whatever filter the caller sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from llmmeter_common.auth.keys import Role
from llmmeter_query.server import QueryServer

from conftest import drain_rollups
from keyring import keyed_channel, make_key
from records import ingest, record, ts

T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
WINDOW = {"start_time": ts(T0 - timedelta(minutes=1)), "end_time": ts(T0 + timedelta(hours=2))}


@pytest.fixture
async def two_teams(ingest_stub: ingest_pb2_grpc.IngestServiceStub, db_url: str) -> None:
    """3 payments requests and 2 search requests, spread over two hours, in the rollups."""
    await ingest(ingest_stub, [
        record(T0 + timedelta(minutes=i * 20), request_id=f"pay-{i}", team="payments", cost=1.0)
        for i in range(3)] + [
        record(T0 + timedelta(minutes=5 + i * 30), request_id=f"search-{i}", team="search", cost=10.0)
        for i in range(2)])
    await drain_rollups(db_url)


@pytest.fixture
async def payments(query_server: QueryServer, db_url: str,
                   two_teams: None) -> AsyncIterator[query_pb2_grpc.QueryServiceStub]:
    key = await make_key(db_url, Role.READ, team="payments")
    async with keyed_channel(f"127.0.0.1:{query_server.port}", key) as channel:
        yield query_pb2_grpc.QueryServiceStub(channel)


async def test_summary_series_and_breakdown_count_only_the_keys_team(payments) -> None:
    for flt in ("", 'team = "search"', 'team = "*"', 'NOT team = "payments"', "team:sea"):
        summary = (await payments.GetSummary(query_pb2.GetSummaryRequest(filter=flt, **WINDOW))).summary
        own = 3 if flt in ("", 'team = "*"') else 0
        assert (summary.request_count, summary.cost) == (own, pytest.approx(own * 1.0)), flt
    series = await payments.GetTimeSeries(query_pb2.GetTimeSeriesRequest(
        metrics=[query_pb2.METRIC_REQUESTS], granularity="1h", group_by="team", **WINDOW))
    assert {s.group: sum(p.value for p in s.points) for s in series.series} == {"payments": 3}
    breakdown = await payments.GetBreakdown(query_pb2.GetBreakdownRequest(group_by="team", **WINDOW))
    assert [(r.group, r.request_count) for r in breakdown.rows] == [("payments", 3)]
    by_model = await payments.GetBreakdown(query_pb2.GetBreakdownRequest(group_by="model", **WINDOW))
    assert sum(r.request_count for r in by_model.rows) == 3


async def test_log_detail_and_exports_show_only_the_keys_team(payments) -> None:
    page = await payments.ListRequests(query_pb2.ListRequestsRequest(page_size=100, **WINDOW))
    assert sorted(r.request_id for r in page.requests) == ["pay-0", "pay-1", "pay-2"]
    detail = await payments.GetRequest(query_pb2.GetRequestRequest(request_id="pay-1"))
    assert detail.record.team == "payments"
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another team's request is as if absent
        await payments.GetRequest(query_pb2.GetRequestRequest(request_id="search-0"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    data = b"".join([c.data async for c in payments.ExportRequests(query_pb2.ExportRequestsRequest(
        format=query_pb2.EXPORT_FORMAT_NDJSON, **WINDOW))])
    assert sorted(json.loads(line)["team"] for line in data.splitlines()) == ["payments"] * 3
    csv = b"".join([c.data async for c in payments.ExportAggregates(query_pb2.ExportAggregatesRequest(
        group_by=["team"], **WINDOW))]).decode()
    assert "payments" in csv and "search" not in csv


async def test_tail_streams_only_the_keys_team(payments, ingest_stub) -> None:
    call = payments.TailRequests(query_pb2.TailRequestsRequest(filter='team = "search" OR team = "payments"'))
    await asyncio.wait_for(call.initial_metadata(), 10)
    now = datetime.now(UTC) - timedelta(seconds=5)
    await ingest(ingest_stub, [record(now, request_id="live-search", team="search"),
                               record(now, request_id="live-pay", team="payments")])
    await ingest(ingest_stub, [record(now, request_id="live-pay-end", team="payments")])
    got: list[str] = []

    async def read() -> None:
        async for item in call:
            got.append(item.request.request_id)
            if got[-1] == "live-pay-end":
                return

    await asyncio.wait_for(read(), 10)
    call.cancel()
    assert got == ["live-pay", "live-pay-end"]


async def test_a_team_ingest_key_writes_only_its_team(ingest_addr: str, db_url: str, db_pool) -> None:
    key = await make_key(db_url, Role.INGEST, team="payments")
    async with keyed_channel(ingest_addr, key) as ch:
        resp = await ingest_pb2_grpc.IngestServiceStub(ch).WriteRecords(ingest_pb2.WriteRecordsRequest(
            records=[record(request_id="no-team"), record(request_id="own", team="payments"),
                     record(request_id="other", team="search")]))
    assert resp.accepted_count == 2
    assert [(r.index, r.field) for r in resp.rejections] == [(2, "team")]
    rows = await db_pool.fetch("SELECT request_id, team FROM usage_records ORDER BY request_id")
    assert [(r["request_id"], r["team"]) for r in rows] == [("no-team", "payments"), ("own", "payments")]
