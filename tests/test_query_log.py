"""ListRequests keyset pagination and GetRequest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from llmmeter.v1 import query_pb2, usage_pb2

from records import bad_request_fields, dur, ingest, record, ts


async def _all_pages(stub, size: int, **req) -> list[query_pb2.RequestRow]:
    rows, token = [], ""
    while True:
        page = await stub.ListRequests(query_pb2.ListRequestsRequest(page_size=size, page_token=token, **req))
        rows += page.requests
        token = page.next_page_token
        if not token:
            return rows


async def test_pages_cover_everything_once_newest_first(ingest_stub, query_stub, db_pool) -> None:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    # many share a start time, so the request id must break ties
    recs = [record(base + timedelta(seconds=i // 3), request_id=f"r{i:04d}",
                   model="gpt-4o" if i % 2 else "claude") for i in range(250)]
    await ingest(ingest_stub, recs)
    window = {"start_time": ts(base - timedelta(hours=1)), "end_time": ts(base + timedelta(hours=1))}
    rows = await _all_pages(query_stub, 37, **window)
    expected = await db_pool.fetch(
        "SELECT request_id FROM usage_records ORDER BY start_time DESC, request_id DESC")
    assert [r.request_id for r in rows] == [e[0] for e in expected]
    filtered = await _all_pages(query_stub, 10, filter='model = "claude"', **window)
    assert len(filtered) == 125 and {r.model for r in filtered} == {"claude"}
    assert len({r.request_id for r in filtered}) == 125


async def test_default_window_pages_stay_in_their_window(ingest_stub, query_stub) -> None:
    await ingest(ingest_stub, [record() for _ in range(7)])
    rows = await _all_pages(query_stub, 3)
    assert len(rows) == 7


async def test_row_columns(ingest_stub, query_stub) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    await ingest(ingest_stub, [record(start, latency_ms=1500, ttft_ms=120, request_id="chatcmpl-1",
                                      input_tokens=11, output_tokens=7, cost=0.25, user="ana",
                                      status_code=429, error_type="RateLimitError"),
                               record(start - timedelta(seconds=1), ttft_ms=None, request_id="batch-1")])
    page = await query_stub.ListRequests(query_pb2.ListRequestsRequest())
    row, unstreamed = page.requests
    assert (row.ttft_measured, unstreamed.ttft_measured, unstreamed.ttft_ms) == (True, False, 0)
    assert (row.request_id, row.status_code, row.success, row.user) == ("chatcmpl-1", 429, False, "ana")
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (11, 7, 18)
    assert (row.latency_ms, row.ttft_ms, row.cost, row.error_type) == (1500, 120, 0.25, "RateLimitError")
    assert row.start_time.ToDatetime(tzinfo=UTC) == start


@pytest.mark.parametrize("token", ["garbage", "eyJ0IjogMX0"])
async def test_bad_page_token(query_stub, token) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.ListRequests(query_pb2.ListRequestsRequest(page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "page_token"


async def test_page_token_of_another_filter_is_refused(ingest_stub, query_stub) -> None:
    await ingest(ingest_stub, [record() for _ in range(3)])
    page = await query_stub.ListRequests(query_pb2.ListRequestsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.ListRequests(query_pb2.ListRequestsRequest(
            page_size=1, page_token=page.next_page_token, filter='model = "x"'))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_page_size_bounds(query_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.ListRequests(query_pb2.ListRequestsRequest(page_size=5000))
    assert bad_request_fields(err.value)[0][0] == "page_size"


async def test_get_request_returns_every_field(ingest_stub, query_stub) -> None:
    rec = record(request_id="chatcmpl-full", latency_ms=900, ttft_ms=100, model="gpt-4o",
                 response_model="gpt-4o-2024-08-06", model_alias="smart", provider="openai",
                 call_type="chat", model_id="m1", api_base="https://x", user="ana", team="t", account="k",
                 client_ip="10.1.2.3", input_tokens=50, output_tokens=11, cache_read_tokens=5,
                 cache_write_tokens=1, reasoning_tokens=2, cost=0.3, cost_breakdown={"in": 0.1, "out": 0.2},
                 cache_hit=True, gateway_overhead=dur(2), retries=3, metadata={"env": "prod"},
                 output_chunks=11, error_message="", media=usage_pb2.MediaUsage(images=2, characters=9))
    rec.payload.request.struct_value.update({"messages": [{"role": "user", "content": "hi"}]})
    await ingest(ingest_stub, [rec])
    got = await query_stub.GetRequest(query_pb2.GetRequestRequest(request_id="chatcmpl-full"))
    expected = usage_pb2.UsageRecord()
    expected.CopyFrom(rec)
    expected.client_ip = "10.1.2.0/24"  # stored redacted
    assert got.record == expected
    assert got.latency_ms == 900 and got.itl_ms == pytest.approx(80.0) and got.tpot_ms == pytest.approx(80.0)
    assert got.ingest_time.seconds > 0


async def test_get_request_not_found(query_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.GetRequest(query_pb2.GetRequestRequest(request_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
