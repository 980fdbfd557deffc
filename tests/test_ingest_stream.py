"""StreamRecords: chunks committed as they come, indexes across the stream, repeats across chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from llmmeter.v1 import ingest_pb2, usage_pb2

from conftest import drain_rollups
from records import bad_request_fields, record


async def _chunks(*chunks: list[usage_pb2.UsageRecord]) -> AsyncIterator[ingest_pb2.StreamRecordsRequest]:
    for c in chunks:
        yield ingest_pb2.StreamRecordsRequest(records=c)


async def test_stream_sums_up_all_chunks(ingest_stub, db_pool, db_url) -> None:
    chunks = [[record() for _ in range(50)] for _ in range(10)]
    resp = await ingest_stub.StreamRecords(_chunks(*chunks))
    assert (resp.accepted_count, resp.duplicate_count, len(resp.rejections)) == (500, 0, 0)
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 500
    await drain_rollups(db_url)
    assert await db_pool.fetchval("SELECT sum(request_count) FROM usage_1h WHERE dims_mask = 0") == 500


async def test_stream_rejection_indexes_count_across_the_stream(ingest_stub, db_pool) -> None:
    a = [record(), record(model=""), record()]
    b = [record(), record(), record(status_code=999)]
    resp = await ingest_stub.StreamRecords(_chunks(a, b))
    assert resp.accepted_count == 4
    assert [(r.index, r.field) for r in resp.rejections] == [(1, "model"), (5, "status_code")]


async def test_stream_repeats_across_chunks_count_as_duplicates(ingest_stub, db_pool, db_url) -> None:
    shared = record()
    resp = await ingest_stub.StreamRecords(_chunks([shared, record()], [shared], [shared, record()]))
    assert (resp.accepted_count, resp.duplicate_count) == (3, 2)
    await drain_rollups(db_url)
    assert await db_pool.fetchval("SELECT sum(request_count) FROM usage_1m WHERE dims_mask = 256") == 3


async def test_stream_with_only_invalid_records_fails(ingest_stub, db_pool) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.StreamRecords(_chunks([record(model="")], [record(cost=-1)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == ["records[0].model", "records[1].cost"]


async def test_empty_stream_is_invalid(ingest_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.StreamRecords(_chunks())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
