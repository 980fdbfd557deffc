"""Hostile input at ingest over the real service: every bad value rejects its own record only, with
the field named; malformed messages are INVALID_ARGUMENT; one caller's poison never fails another
caller's call; the rollup worker sets aside what the rollups refuse and keeps draining."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmeter.v1 import ingest_pb2, query_pb2, query_pb2_grpc, usage_pb2
from llmmeter_common.errors import InvalidArgument
from llmmeter_ingest.rollup_worker import RollupWorker
from llmmeter_ingest.rows import to_rows
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.store import Store
from llmmeter_query.server import QueryServer

from keyring import keyed_channel
from records import bad_request_fields, dur, record

HUGE = 2**62


def _payload(text: str) -> usage_pb2.Payload:
    return usage_pb2.Payload(request=struct_pb2.Value(string_value=text))


def _hostile() -> list[tuple[str, usage_pb2.UsageRecord]]:
    """(the field the refusal must name, a record that is wrong there and only there)."""
    long_call = datetime.now(UTC) - timedelta(days=2)
    return [
        ("input_tokens", record(input_tokens=HUGE)),
        ("output_tokens", record(output_tokens=HUGE, reasoning_tokens=0)),
        ("cost", record(cost=1e308)),
        ("mean_inter_token_latency", record(mean_inter_token_latency=duration_pb2.Duration(
            seconds=4_600_000_000_000_000_000))),
        ("gateway_overhead", record(gateway_overhead=duration_pb2.Duration(seconds=10**15))),
        ("gateway_overhead", record(gateway_overhead=duration_pb2.Duration(seconds=1, nanos=-2_000_000_000))),
        ("end_time", record(long_call, latency_ms=3601 * 1000)),
        ("retries", record(retries=10**6)),
        ("media.images", record(media=usage_pb2.MediaUsage(images=HUGE))),
        ("media.audio_seconds", record(media=usage_pb2.MediaUsage(audio_seconds=1e300))),
        ("model", record(model="gpt\x00-4o")),
        ("team", record(team="pay\x00ments")),
        ("error_message", record(status_code=500, error_message="boom\x00")),
        ("metadata.tenant", record(metadata={"tenant": "a\x00b"})),
        ("payload", record(payload=_payload("hello\x00world"))),
        ("cost_breakdown", record(cost=0.5, cost_breakdown={"in\x00put": 0.5})),
    ]


async def test_each_hostile_value_rejects_its_record_only(ingest_stub, db_pool: asyncpg.Pool) -> None:
    cases = _hostile()
    good = record(request_id="the-good-one")
    resp = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(
        records=[rec for _, rec in cases] + [good]))
    assert resp.accepted_count == 1
    assert [(r.index, r.field) for r in resp.rejections] == [(i, f) for i, (f, _) in enumerate(cases)]
    assert all(r.reason for r in resp.rejections)
    stored = await db_pool.fetch("SELECT request_id FROM usage_records")
    assert [r["request_id"] for r in stored] == ["the-good-one"]


async def test_a_record_at_the_bounds_is_stored(ingest_stub, db_pool: asyncpg.Pool) -> None:
    rec = record(datetime.now(UTC) - timedelta(days=2), latency_ms=3600 * 1000,
                 input_tokens=100_000_000, output_tokens=100_000_000, cost=100_000.0, retries=1000,
                 mean_inter_token_latency=dur(3600 * 1000))
    resp = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[rec]))
    assert (resp.accepted_count, list(resp.rejections)) == (1, [])


async def test_malformed_messages_are_invalid_argument(ingest_addr: str, ingest_stub) -> None:
    good = ingest_pb2.WriteRecordsRequest(records=[record(model="MODELX")]).SerializeToString()
    bodies = {"bad UTF-8": good.replace(b"MODELX", b"MOD\xff\xfeX"), "corrupt": b"\xff\xff\xff\xff\x0f"}
    async with keyed_channel(ingest_addr) as ch:
        write = ch.unary_unary("/llmmeter.v1.IngestService/WriteRecords", request_serializer=None,
                               response_deserializer=ingest_pb2.WriteRecordsResponse.FromString)
        stream = ch.stream_unary("/llmmeter.v1.IngestService/StreamRecords", request_serializer=None,
                                 response_deserializer=ingest_pb2.StreamRecordsResponse.FromString)
        for name, body in bodies.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await write(body)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "DecodeError" not in (err.value.details() or "") and bad_request_fields(err.value)

            async def chunks(body: bytes = body):  # type: ignore[no-untyped-def]
                yield ingest_pb2.StreamRecordsRequest(records=[record()]).SerializeToString()
                yield body

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stream(chunks())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    resp = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[record()]))
    assert resp.accepted_count == 1


async def test_hostile_callers_never_fail_other_callers(ingest_stub, db_pool: asyncpg.Pool) -> None:
    """40 good calls and 40 calls of hostile records at once: every good record is stored."""
    async def good(i: int) -> int:
        r = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(
            records=[record(request_id=f"good-{i}-{k}") for k in range(5)]))
        return int(r.accepted_count)

    async def bad(i: int) -> None:
        field, rec = _hostile()[i % len(_hostile())]
        assert field
        with pytest.raises(grpc.aio.AioRpcError) as err:  # every record of the call is invalid
            await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[rec]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    results = await asyncio.gather(*(f(i) for i in range(40) for f in (good, bad)))
    assert sum(r for r in results if r) == 200
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records WHERE request_id LIKE 'good-%'") == 200


async def test_a_call_the_database_refuses_fails_alone_in_its_group(ingest_server: IngestServer,
                                                                   db_pool: asyncpg.Pool) -> None:
    """Below validation (defence in depth): rows PostgreSQL refuses, queued with good calls into one
    group commit, fail their own call only."""
    bad_row, _ = to_rows(record(request_id="nul"), True)
    bad_row = (*bad_row[:12], "gpt\x00", *bad_row[13:])  # the model column
    writer = ingest_server.writer
    jobs = [writer.submit_nowait([to_rows(record(request_id=f"ok-{i}"), True)[0]], []) for i in range(3)]
    poison = writer.submit_nowait([bad_row], [])
    jobs.append(writer.submit_nowait([to_rows(record(request_id="ok-last"), True)[0]], []))
    with pytest.raises(InvalidArgument):
        await poison.done
    assert [len(await j.done) for j in jobs] == [1, 1, 1, 1]
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 4


async def test_an_unexpected_error_is_internal_with_an_id_and_no_internals(
        ingest_stub, db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    await db_pool.execute("ALTER TABLE usage_payloads RENAME TO usage_payloads_away")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[record()]))
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "internal error (id " in details and "usage_payloads" not in details
    error_id = details.split("(id ")[1].split(")")[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_the_rollup_worker_quarantines_what_overflows_and_keeps_draining(
        db_pool: asyncpg.Pool, db_url: str, query_server: QueryServer) -> None:
    """Two queued rows of 2^62 tokens each (as an older version let in): the minute, hour and day
    sums would overflow bigint. The second is set aside; everything else reaches the rollups."""
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    recs = [record(t0 + timedelta(seconds=i), request_id=f"r-{i}", input_tokens=10) for i in range(20)]
    recs += [record(t0 + timedelta(seconds=30 + i), request_id=f"huge-{i}", input_tokens=HUGE)
             for i in range(2)]
    await Store(db_pool, queue_for_rollups=True).write([to_rows(r, True)[0] for r in recs], [])
    quarantined: list[int] = []
    worker = RollupWorker(db_pool, 1_000, 0.05, on_quarantine=quarantined.append)
    await asyncio.wait_for(worker.drain(), 60)
    assert quarantined == [1]
    assert await db_pool.fetchval("SELECT count(*) FROM usage_rollup_pending") == 0
    rows = await db_pool.fetch("SELECT input_tokens, reason FROM usage_rollup_quarantine")
    assert len(rows) == 1 and rows[0]["input_tokens"] == HUGE and "22003" in rows[0]["reason"]
    assert await db_pool.fetchval("SELECT sum(request_count) FROM usage_1h WHERE dims_mask = 0") == 21
    async with keyed_channel(f"127.0.0.1:{query_server.port}") as ch:
        summary = (await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest(
            start_time={"seconds": int((t0 - timedelta(hours=1)).timestamp())}))).summary
    # answered from the rollups, which hold everything but the quarantined row, and stay answerable
    assert (summary.request_count, summary.input_tokens) == (21, 200 + HUGE)
