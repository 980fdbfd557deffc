"""ExportRequests, ExportAggregates and TailRequests over the real services."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest

from llmmeter.v1 import ingest_pb2, query_pb2, query_pb2_grpc
from llmmeter_query.export import CHUNK_BYTES
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings
from llmmeter_query.tail import fetch_sql

from keyring import keyed_channel
from records import ingest, record, ts


async def _collect(call) -> tuple[bytes, int, int]:
    data, chunks, rows = b"", 0, 0
    async for part in call:
        data += part.data
        chunks += 1
        rows = part.rows_written
    return data, chunks, rows


async def test_export_csv_in_chunks_with_formulas_neutralised(ingest_stub, query_stub) -> None:
    t = datetime.now(UTC) - timedelta(hours=2)
    bulky = "x" * 300
    recs = [record(t + timedelta(milliseconds=i), request_id=f"r{i:05d}", error_message=bulky,
                   status_code=500, ttft_ms=None) for i in range(1500)]
    recs.append(record(t, request_id="evil", user="=HYPERLINK(\"http://x\")", team="@sum",
                       error_type="-2+3", status_code=500, error_message="+cmd", ttft_ms=None))
    await ingest(ingest_stub, recs)
    data, chunks, rows = await _collect(query_stub.ExportRequests(query_pb2.ExportRequestsRequest(
        start_time=ts(t - timedelta(minutes=1)), end_time=ts(t + timedelta(minutes=1)))))
    assert rows == 1501 and chunks >= len(data) // CHUNK_BYTES >= 1
    table = list(csv.DictReader(io.StringIO(data.decode())))
    assert len(table) == 1501
    evil = next(r for r in table if r["request_id"] == "evil")
    assert (evil["user_name"], evil["team"], evil["error_type"], evil["error_message"]) == (
        "'=HYPERLINK(\"http://x\")", "'@sum", "'-2+3", "'+cmd")
    assert [r["request_id"] for r in table][1:3] == ["r00000", "r00001"]


async def test_export_ndjson_filtered(ingest_stub, query_stub) -> None:
    t = datetime.now(UTC) - timedelta(hours=1)
    await ingest(ingest_stub, [record(t, team="a", metadata={"k": "v"}, cost=0.125), record(t, team="b")])
    data, _, rows = await _collect(query_stub.ExportRequests(query_pb2.ExportRequestsRequest(
        filter='team = "a"', format=query_pb2.EXPORT_FORMAT_NDJSON)))
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert rows == 1 and len(lines) == 1
    assert lines[0]["team"] == "a" and lines[0]["metadata"] == {"k": "v"} and lines[0]["cost"] == "0.125"
    # the stored microseconds, and the same in the API's milliseconds; tokens as the log shows them
    first = lines[0]
    assert (first["latency_us"], first["latency_ms"], first["ttft_us"], first["ttft_ms"]) == (
        1_200_000, 1200.0, 300_000, 300.0)
    assert first["total_tokens"] == first["input_tokens"] + first["output_tokens"] > 0


async def test_export_aggregates_for_chargeback(ingest_stub, query_stub) -> None:
    t = datetime.now(UTC) - timedelta(days=1, hours=3)
    await ingest(ingest_stub, [
        record(t, team="a", user="ana", cost=0.1), record(t, team="a", user="ana", cost=0.2),
        record(t, team="a", user="bo", cost=0.3), record(t, team="b", user="bo", cost=0.4),
        record(t, team="b", user="bo", cost=0.5, metadata={"tenant": "acme"}),
    ])
    window = {"start_time": ts(t - timedelta(days=1)), "end_time": ts(t + timedelta(days=1))}
    data, _, rows = await _collect(query_stub.ExportAggregates(query_pb2.ExportAggregatesRequest(
        group_by=["team", "user"], **window)))
    table = list(csv.DictReader(io.StringIO(data.decode())))
    assert rows == 3
    got = {(r["team"], r["user"]): (int(r["request_count"]), Decimal(r["cost"])) for r in table}
    assert got == {("a", "ana"): (2, Decimal("0.3")), ("a", "bo"): (1, Decimal("0.3")),
                   ("b", "bo"): (2, Decimal("0.9"))}
    data, _, _ = await _collect(query_stub.ExportAggregates(query_pb2.ExportAggregatesRequest(
        group_by=["metadata.tenant"], **window)))
    table = list(csv.DictReader(io.StringIO(data.decode())))
    assert {r["metadata.tenant"]: int(r["request_count"]) for r in table} == {"": 4, "acme": 1}


async def test_export_aggregates_has_every_breakdown_column_and_per_bucket_rates(ingest_stub,
                                                                                query_stub) -> None:
    h = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
    await ingest(ingest_stub, [
        record(h + timedelta(minutes=50), team="a", latency_ms=100, ttft_ms=None, input_tokens=6,
               output_tokens=4),
        record(h + timedelta(hours=1, minutes=5), team="a", latency_ms=300, ttft_ms=None, input_tokens=6,
               output_tokens=4, status_code=500),
        record(h + timedelta(hours=1, minutes=10), team="a", latency_ms=200, ttft_ms=None, input_tokens=6,
               output_tokens=4),
    ])
    window = {"start_time": ts(h + timedelta(minutes=30)), "end_time": ts(h + timedelta(hours=2))}
    data, _, rows = await _collect(query_stub.ExportAggregates(query_pb2.ExportAggregatesRequest(
        group_by=["team"], granularity="1h", **window)))
    table = list(csv.DictReader(io.StringIO(data.decode())))
    columns = [f.name for f in query_pb2.BreakdownRow.DESCRIPTOR.fields if f.name != "group"]
    assert rows == 2 and set(columns) <= set(table[0])
    assert {"images", "audio_seconds", "video_seconds", "characters"} <= set(table[0])
    first, second = table
    # the first hour has 30 minutes inside the window, the second all 60
    assert (float(first["rpm"]), float(first["tpm"])) == (pytest.approx(1 / 30), pytest.approx(10 / 30))
    assert (float(second["rpm"]), float(second["tpm"])) == (pytest.approx(2 / 60), pytest.approx(20 / 60))
    assert (second["failure_count"], float(second["success_rate"])) == ("1", 0.5)
    assert (float(second["latency_p50_ms"]), float(second["latency_p99_ms"])) == (
        pytest.approx(200, rel=0.01), pytest.approx(300, rel=0.01))  # estimated: the window is 1.5 h
    assert (second["ttft_count"], float(second["ttft_p95_ms"])) == ("0", 0)


async def test_export_aggregates_needs_a_group(query_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _collect(query_stub.ExportAggregates(query_pb2.ExportAggregatesRequest()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_tail_receives_matching_records_stored_after_it_started(ingest_stub, query_stub) -> None:
    call = query_stub.TailRequests(query_pb2.TailRequestsRequest(
        filter='team = "payments" AND -model_id = "azure/*"'))  # any filter field, evaluated on the row
    await asyncio.wait_for(call.initial_metadata(), 10)  # the watch is live
    resp = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[
        record(request_id="other-team", team="search"),
        record(request_id="pay-azure", team="payments", model_id="azure/gpt-4o-eu"),
        record(request_id="pay-1", team="payments", model_id="openai/gpt-4o"),
        record(datetime.now(UTC) - timedelta(days=3), request_id="pay-late", team="payments"),
    ]))
    assert resp.accepted_count == 4
    # a later commit: once it arrives, everything of the first has been handed out (commit order)
    await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[
        record(request_id="pay-end", team="payments")]))
    assert sorted(await _read_until(call, "pay-end")) == ["pay-1", "pay-end", "pay-late"]


def test_tail_fetch_reads_the_commits_hours_cut_to_its_first_and_last_row() -> None:
    h = datetime(2026, 12, 4, 9, tzinfo=UTC)
    first, last = h + timedelta(minutes=59, seconds=30), h + timedelta(hours=5, seconds=7)
    sql = fetch_sql([h, h + timedelta(hours=1), h + timedelta(hours=5)], first, last)
    assert ("r.start_time >= TIMESTAMPTZ '2026-12-04T09:59:30+00:00' AND "
            "r.start_time < TIMESTAMPTZ '2026-12-04T11:00:00+00:00'") in sql
    assert ("r.start_time >= TIMESTAMPTZ '2026-12-04T14:00:00+00:00' AND "
            "r.start_time < TIMESTAMPTZ '2026-12-04T14:00:07.000001+00:00'") in sql
    # an announcement without the range (or one that does not fit its hours) reads the whole hours
    assert "'2026-12-04T09:00:00+00:00'" in fetch_sql([h], None, None)
    assert "'2026-12-04T10:00:00+00:00'" in fetch_sql([h], h - timedelta(hours=2), h + timedelta(hours=3))


async def _read_until(call, last: str) -> list[str]:
    got: list[str] = []

    async def read() -> None:
        async for item in call:
            got.append(item.request.request_id)
            if got[-1] == last:
                return

    await asyncio.wait_for(read(), 10)  # a bound against hanging; the latency is benchmarked
    call.cancel()
    return got


@pytest.mark.usefixtures("timescale_flavor_only")
async def test_tail_on_timescaledb_reads_past_compressed_chunks(db_url, ingest_stub, query_stub) -> None:
    """A plan that includes a compressed chunk cannot read `xmin`: the tail's fetch must leave
    compressed chunks out, and a late row written into one is skipped without losing the rest."""
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
    await ingest(ingest_stub, [record(old, request_id="old")])
    conn = await asyncpg.connect(db_url)
    try:
        compressed = await conn.fetchval("SELECT count(compress_chunk(c)) FROM show_chunks("
                                         "'usage_records', older_than => INTERVAL '2 days') AS c")
    finally:
        await conn.close()
    assert compressed == 1
    call = query_stub.TailRequests(query_pb2.TailRequestsRequest())
    await asyncio.wait_for(call.initial_metadata(), 10)
    await ingest(ingest_stub, [record(request_id="now-1")])
    await ingest(ingest_stub, [record(request_id="now-2"), record(old, request_id="late-into-compressed")])
    # a retry of the compressed row: the conflict-checking write finds it there
    again = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(
        records=[record(old, request_id="old"), record(request_id="now-3")]))
    assert (again.accepted_count, again.duplicate_count) == (1, 1)
    await ingest(ingest_stub, [record(request_id="end")])
    assert await _read_until(call, "end") == ["now-1", "now-2", "now-3", "end"]


async def test_tail_with_a_bad_filter_is_invalid(query_stub) -> None:
    call = query_stub.TailRequests(query_pb2.TailRequestsRequest(filter="model ="))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_tail_ends_with_unavailable_when_the_service_stops(db_url) -> None:
    server = QueryServer(QuerySettings(database_url=db_url, host="127.0.0.1", port=0,
                                       shutdown_grace_seconds=2.0, metrics_port=0))
    await server.start()
    stopped = False
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            call = query_pb2_grpc.QueryServiceStub(ch).TailRequests(query_pb2.TailRequestsRequest())
            await asyncio.wait_for(call.initial_metadata(), 10)
            await server.stop()
            stopped = True
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            await server.stop()
