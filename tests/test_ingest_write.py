"""WriteRecords end to end: valid, invalid, mixed and duplicate batches, through the real client stub."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc, usage_pb2

from conftest import drain_rollups
from keyring import keyed_channel
from records import bad_request_fields, dur, record, ts


async def write(stub: ingest_pb2_grpc.IngestServiceStub, *recs: usage_pb2.UsageRecord
                ) -> ingest_pb2.WriteRecordsResponse:
    return await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=list(recs)))


async def test_valid_record_is_stored_with_every_field(ingest_stub, db_pool: asyncpg.Pool) -> None:
    start = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=2)
    rec = record(
        start, latency_ms=2000, ttft_ms=250, request_id="chatcmpl-abc", model="gpt-4o",
        response_model="gpt-4o-2024-08-06", model_alias="smart", provider="openai", call_type="chat",
        model_id="dep-1", api_base="https://api.openai.com/v1", user="ana", team="payments",
        account="key-7", client_ip="203.0.113.77", input_tokens=1000, output_tokens=201,
        cache_read_tokens=400, cache_write_tokens=100, reasoning_tokens=50, output_chunks=101,
        cost=0.0125, cost_breakdown={"input": 0.0025, "output": 0.01}, cache_hit=False,
        gateway_overhead=dur(3.5), retries=1, metadata={"tenant": "acme", "environment": "prod"},
        media=usage_pb2.MediaUsage(audio_seconds=1.5),
    )
    rec.payload.request.struct_value.update({"messages": [{"role": "user", "content": "hi"}]})
    rec.payload.response.struct_value.update({"choices": [{"message": {"content": "hello"}}]})

    resp = await write(ingest_stub, rec)

    assert (resp.accepted_count, resp.duplicate_count, list(resp.rejections)) == (1, 0, [])
    row = await db_pool.fetchrow("SELECT * FROM usage_records")
    assert row["request_id"] == "chatcmpl-abc"
    assert row["start_time"] == start
    assert row["latency_us"] == 2_000_000
    assert row["ttft_us"] == 250_000
    assert row["itl_us"] == pytest.approx((2_000_000 - 250_000) / 100)
    assert row["tpot_us"] == pytest.approx((2_000_000 - 250_000) / 200)
    assert row["client_ip"] == "203.0.113.0/24"
    assert row["cost"] == Decimal("0.0125")
    assert json.loads(row["cost_breakdown"]) == {"input": 0.0025, "output": 0.01}
    assert json.loads(row["metadata"]) == {"tenant": "acme", "environment": "prod"}
    assert (row["user_name"], row["team"], row["account"]) == ("ana", "payments", "key-7")
    assert row["gateway_overhead_us"] == 3500 and row["retries"] == 1
    assert row["audio_seconds"] == Decimal("1.5")
    assert row["has_payload"] is True
    payload = await db_pool.fetchrow("SELECT request, response FROM usage_payloads")
    assert json.loads(payload["request"]) == {"messages": [{"role": "user", "content": "hi"}]}
    assert json.loads(payload["response"])["choices"][0]["message"]["content"] == "hello"


async def test_ipv6_is_redacted_to_48(ingest_stub, db_pool: asyncpg.Pool) -> None:
    await write(ingest_stub, record(client_ip="2001:db8:abcd:12::1"))
    assert await db_pool.fetchval("SELECT client_ip FROM usage_records") == "2001:db8:abcd::/48"


def _now() -> datetime:
    return datetime.now(UTC)


INVALID = [
    ("request_id", {"request_id": ""}),
    ("model", {"model": ""}),
    ("status_code", {"status_code": 42}),
    ("input_tokens", {"input_tokens": -1}),
    ("cache_read_tokens", {"input_tokens": 10, "cache_read_tokens": 11}),
    ("reasoning_tokens", {"output_tokens": 5, "reasoning_tokens": 6}),
    ("cost", {"cost": -0.5}),
    ("cost", {"cost": float("nan")}),
    ("cost_breakdown", {"cost": 1.0, "cost_breakdown": {"input": 0.4, "output": 0.5}}),
    ("metadata.bad key", {"metadata": {"bad key": "x"}}),
    ("client_ip", {"client_ip": "not-an-ip"}),
    ("media.images", {"media": usage_pb2.MediaUsage(images=-2)}),
]


@pytest.mark.parametrize(("field", "fields"), INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)])
async def test_invalid_record_names_the_field(ingest_stub, db_pool, field, fields) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await write(ingest_stub, record(**fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == [f"records[0].{field}"]
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 0


async def test_time_rules(ingest_stub) -> None:
    now = _now()
    end_before_start = record(now - timedelta(minutes=5))
    end_before_start.end_time.CopyFrom(ts(now - timedelta(minutes=6)))
    no_start = record()
    no_start.ClearField("start_time")
    ttft_too_long = record(latency_ms=100, ttft_ms=200)
    too_old = record(now - timedelta(days=15))
    future = record(now + timedelta(hours=1))
    cases = [(end_before_start, "end_time"), (no_start, "start_time"),
             (ttft_too_long, "time_to_first_token"), (too_old, "start_time"), (future, "end_time")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await write(ingest_stub, *(r for r, _ in cases))
    assert [f for f, _ in bad_request_fields(err.value)] == [
        f"records[{i}].{field}" for i, (_, field) in enumerate(cases)
    ]


async def test_empty_batch_is_invalid(ingest_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await write(ingest_stub)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "records"


async def test_mixed_batch_stores_the_valid_records(ingest_stub, db_pool) -> None:
    recs = [record(request_id="ok-1"), record(request_id="bad-1", model=""), record(request_id="ok-2"),
            record(request_id="bad-2", status_code=0)]
    resp = await write(ingest_stub, *recs)
    assert resp.accepted_count == 2 and resp.duplicate_count == 0
    assert [(r.index, r.request_id, r.field) for r in resp.rejections] == [
        (1, "bad-1", "model"), (3, "bad-2", "status_code")]
    ids = {r[0] for r in await db_pool.fetch("SELECT request_id FROM usage_records")}
    assert ids == {"ok-1", "ok-2"}


async def test_duplicates_within_and_across_batches_are_stored_and_counted_once(
    ingest_stub, db_pool, db_url
) -> None:
    a, b = record(request_id="dup-a"), record(request_id="dup-b")
    first = await write(ingest_stub, a, b, a)
    assert (first.accepted_count, first.duplicate_count) == (2, 1)
    again = await write(ingest_stub, a, b, record(request_id="dup-c"))
    assert (again.accepted_count, again.duplicate_count) == (1, 2)
    # same request_id with another start time is another call
    other_start = record(datetime.fromtimestamp(a.start_time.seconds - 60, UTC), request_id="dup-a")
    assert (await write(ingest_stub, other_start)).accepted_count == 1
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 4
    await drain_rollups(db_url)
    for table in ("usage_1m", "usage_1h", "usage_1d"):
        assert await db_pool.fetchval(f"SELECT sum(request_count) FROM {table} WHERE dims_mask = 0") == 4
        assert await db_pool.fetchval(f"SELECT sum(input_tokens) FROM {table} WHERE dims_mask = 0") == 400


async def test_a_batch_with_a_stored_key_keeps_the_payloads_and_queues_only_new_rows(
    ingest_stub, db_pool, db_url
) -> None:
    """The usual batch is inserted without conflict checks; one holding a key already stored is
    rolled back to its savepoint and stored again skipping that key: nothing of it is lost or
    counted twice (rows, payloads, rollups)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)  # one key per id

    def with_payload(request_id: str, text: str) -> usage_pb2.UsageRecord:
        return record(start, request_id=request_id, input_tokens=10,
                      payload=usage_pb2.Payload(request=struct_pb2.Value(string_value=text)))

    assert (await write(ingest_stub, with_payload("p-1", "first"))).accepted_count == 1
    resp = await write(ingest_stub, with_payload("p-1", "again"), with_payload("p-2", "second"),
                       record(start, request_id="p-3", input_tokens=10))
    assert (resp.accepted_count, resp.duplicate_count) == (2, 1)
    stored = await db_pool.fetch("SELECT request_id, request #>> '{}' AS request FROM usage_payloads "
                                 "ORDER BY request_id")
    assert [(r["request_id"], r["request"]) for r in stored] == [("p-1", "first"), ("p-2", "second")]
    await drain_rollups(db_url)
    for table in ("usage_1m", "usage_1h", "usage_1d"):
        assert await db_pool.fetchval(f"SELECT sum(input_tokens) FROM {table} WHERE dims_mask = 0") == 30


async def test_only_duplicates_is_not_an_error(ingest_stub) -> None:
    rec = record()
    await write(ingest_stub, rec)
    resp = await write(ingest_stub, rec)
    assert (resp.accepted_count, resp.duplicate_count) == (0, 1)


async def test_oversized_batch_is_refused(db_url) -> None:
    from llmmeter_ingest.server import IngestServer

    from conftest import ingest_settings

    server = IngestServer(ingest_settings(db_url, max_batch_records=3))
    await server.start()
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await write(stub, *(record() for _ in range(4)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert bad_request_fields(err.value)[0][0] == "records"
    finally:
        await server.stop()


async def test_commit_is_announced_with_its_transaction_hours_and_time_range(
    ingest_stub, db_url, db_pool
) -> None:
    conn = await asyncpg.connect(db_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("llmmeter_records", lambda *args: got.put_nowait(args[3]))
    try:
        recs = [record(), record(datetime.now(UTC) - timedelta(days=2))]
        await write(ingest_stub, *recs)
        note = json.loads(await asyncio.wait_for(got.get(), 5))
        rows = await db_pool.fetch(
            "SELECT start_time FROM usage_records WHERE xmin::text::bigint = $1", note["xid"])
        assert len(rows) == 2
        assert sorted(note["hours"]) == sorted({int(r[0].timestamp()) // 3600 for r in rows})
        us = sorted(round(r[0].timestamp() * 1_000_000) for r in rows)
        assert (note["first_us"], note["last_us"]) == (us[0], us[-1])
        # a batch with a stored key (the conflict-checking statement) announces only its new row
        late = record(datetime.now(UTC) - timedelta(hours=5))
        await write(ingest_stub, recs[0], late)
        note = json.loads(await asyncio.wait_for(got.get(), 5))
        late_us = late.start_time.seconds * 1_000_000 + late.start_time.nanos // 1000
        assert (note["first_us"], note["last_us"]) == (late_us, late_us)
        assert note["hours"] == [late_us // 3_600_000_000]
        by_xid = await db_pool.fetch(
            "SELECT request_id FROM usage_records WHERE xmin::text::bigint = $1", note["xid"])
        assert [r[0] for r in by_xid] == [late.request_id]
        await write(ingest_stub, recs[0])  # nothing new stored: nothing announced
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(got.get(), 0.5)
    finally:
        await conn.close()
