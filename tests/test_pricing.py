"""Cost for records sent without one: built-in prices (genai-prices), operator overrides with
effective dates (PricesService, `llmmeter prices`), cost sources, unpriced counts. Real ingest,
query and alerts services; the CLI in process."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import genai_prices
import grpc
import pytest

from llmmeter.v1 import ingest_pb2, prices_pb2, prices_pb2_grpc, query_pb2, usage_pb2
from llmmeter_alerts.server import AlertsServer
from llmmeter_common.auth.keys import Role
from llmmeter_ingest.server import IngestServer
from llmmeter_query.server import QueryServer

from cli_helpers import cli, rfc3339
from conftest import ingest_settings, running
from keyring import keyed_channel, make_key
from records import record, ts

COMPUTED = usage_pb2.COST_SOURCE_COMPUTED
REPORTED = usage_pb2.COST_SOURCE_REPORTED
UNPRICED = usage_pb2.COST_SOURCE_UNPRICED


def unpriced(**fields: Any) -> usage_pb2.UsageRecord:
    """A record sent without a cost."""
    rec = record(**fields)
    rec.ClearField("cost")
    return rec


async def write(stub: Any, *records: usage_pb2.UsageRecord) -> None:
    response = await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=list(records)))
    assert response.accepted_count == len(records), response


async def detail(query_stub: Any, rec: usage_pb2.UsageRecord) -> query_pb2.GetRequestResponse:
    response: query_pb2.GetRequestResponse = await query_stub.GetRequest(
        query_pb2.GetRequestRequest(request_id=rec.request_id))
    return response


@pytest.fixture
async def fast_ingest(db_url: str) -> AsyncIterator[IngestServer]:
    """An ingest service re-reading the price overrides every 0.2 s."""
    async with running(IngestServer(ingest_settings(db_url, prices_refresh_seconds=0.2))) as server:
        yield server


@pytest.fixture
async def fast_ingest_stub(fast_ingest: IngestServer) -> AsyncIterator[Any]:
    from llmmeter.v1 import ingest_pb2_grpc
    async with keyed_channel(f"127.0.0.1:{fast_ingest.port}") as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


def test_optional_cost_keeps_field_28_and_its_wire_format() -> None:
    field = usage_pb2.UsageRecord.DESCRIPTOR.fields_by_name["cost"]
    assert field.number == 28 and field.type == field.TYPE_DOUBLE and field.has_presence
    # tag 28, wire type 1 (64-bit): exactly what the plain `double cost = 28` wrote
    assert usage_pb2.UsageRecord(cost=1.5).SerializeToString() == b"\xe1\x01" + struct.pack("<d", 1.5)
    # an explicit 0 is now on the wire; an old sender's absent field parses as not sent
    assert usage_pb2.UsageRecord(cost=0.0).SerializeToString() == b"\xe1\x01" + struct.pack("<d", 0.0)
    assert not usage_pb2.UsageRecord.FromString(b"").HasField("cost")
    assert usage_pb2.UsageRecord.FromString(b"\xe1\x01" + struct.pack("<d", 0.0)).HasField("cost")


async def test_cost_sources_and_unpriced_counts(ingest_stub: Any, query_stub: Any, query_server: QueryServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    known = unpriced(start=start, model="gpt-4o", provider="openai", input_tokens=10_000,
                     output_tokens=2_000, cache_read_tokens=4_000)
    claude = unpriced(start=start, model="claude-sonnet-4-5", provider="anthropic", input_tokens=50_000,
                      output_tokens=3_000, cache_read_tokens=20_000, cache_write_tokens=10_000,
                      reasoning_tokens=1_000)
    reported = record(start=start, model="gpt-4o", cost=0.5)
    zero = record(start=start, model="gpt-4o", cost=0.0)
    assert zero.HasField("cost")
    unknown = unpriced(start=start, model="acme-llm-9000", provider="acme")
    await write(ingest_stub, known, claude, reported, zero, unknown)

    for rec, provider, reasoning in ((known, "openai", 0), (claude, "anthropic", 1_000)):
        usage = genai_prices.Usage(input_tokens=rec.input_tokens, output_tokens=rec.output_tokens,
                                   cache_read_tokens=rec.cache_read_tokens,
                                   cache_write_tokens=rec.cache_write_tokens,
                                   **({"output_reasoning_tokens": reasoning} if reasoning else {}))
        expected = genai_prices.calc_price(usage, rec.model, provider_id=provider,
                                           genai_request_timestamp=start).total_price
        got = await detail(query_stub, rec)
        assert got.cost_source == COMPUTED
        assert expected > 0 and got.record.cost == pytest.approx(float(expected), abs=1e-12)
        assert sum(got.record.cost_breakdown.values()) == pytest.approx(got.record.cost, abs=1e-9)
    for rec, cost in ((reported, 0.5), (zero, 0.0)):
        got = await detail(query_stub, rec)
        assert (got.cost_source, got.record.cost) == (REPORTED, cost)
    got = await detail(query_stub, unknown)
    assert (got.cost_source, got.record.cost) == (UNPRICED, 0.0)

    window = {"start_time": ts(start - timedelta(minutes=1)), "end_time": ts(datetime.now(UTC))}
    summary = (await query_stub.GetSummary(query_pb2.GetSummaryRequest(**window))).summary
    assert summary.request_count == 5 and summary.unpriced_count == 1
    only_known = await query_stub.GetSummary(query_pb2.GetSummaryRequest(filter='model = "gpt-4o"', **window))
    assert only_known.summary.unpriced_count == 0
    rows = (await query_stub.GetBreakdown(query_pb2.GetBreakdownRequest(group_by="model", **window))).rows
    assert {r.group: r.unpriced_count for r in rows} == {
        "gpt-4o": 0, "claude-sonnet-4-5": 0, "acme-llm-9000": 1}
    log = (await query_stub.ListRequests(query_pb2.ListRequestsRequest(**window))).requests
    assert {r.request_id: r.cost_source for r in log} == {
        known.request_id: COMPUTED, claude.request_id: COMPUTED, reported.request_id: REPORTED,
        zero.request_id: REPORTED, unknown.request_id: UNPRICED}

    for granularity in ("", "1h"):
        chunks = [c async for c in query_stub.ExportAggregates(query_pb2.ExportAggregatesRequest(
            group_by=["model"], granularity=granularity, **window))]
        table = list(csv.DictReader(io.StringIO(b"".join(c.data for c in chunks).decode())))
        assert {r["model"]: int(r["unpriced_count"]) for r in table} == {
            "gpt-4o": 0, "claude-sonnet-4-5": 0, "acme-llm-9000": 1}, granularity

    addr = f"127.0.0.1:{query_server.port}"
    code, out, _ = await cli(capsys, addr, "usage", "summary", "--since", "1h")
    assert code == 0 and "unpriced 1" in out
    code, out, _ = await cli(capsys, addr, "usage", "breakdown", "--since", "1h", "--by", "model")
    assert code == 0 and "unpriced 1" in out
    assert next(line for line in out.splitlines() if "unpriced" in line).count("acme-llm-9000") == 1


async def test_overrides_apply_from_their_effective_time_and_win_over_builtin_prices(
        fast_ingest_stub: Any, query_stub: Any, alerts_server: AlertsServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    alerts = ("--alerts-addr", f"127.0.0.1:{alerts_server.port}")
    t_eff = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    code, out, err = await cli(capsys, "unused:1", "prices", "set", "acme-llm-9000", "--from", rfc3339(t_eff),
                               "--input", "1", "--output", "2", "--reasoning", "4", *alerts)
    assert code == 0, err
    assert "acme-llm-9000" in out
    prices_file = tmp_path / "prices.yaml"
    prices_file.write_text(
        "prices:\n"
        f"  - model: gpt-4o\n    effective_from: {rfc3339(t_eff)}\n"
        "    input_per_mtok: 100\n    output_per_mtok: 200\n    cache_read_per_mtok: 50\n"
        f"  - model: acme-llm-9000\n    effective_from: {rfc3339(t_eff + timedelta(minutes=20))}\n"
        "    input_per_mtok: 10\n    output_per_mtok: 20\n    per_image: 0.5\n")
    code, out, err = await cli(capsys, "unused:1", "prices", "import", str(prices_file), *alerts)
    assert code == 0 and "2 price overrides set" in err, err
    code, out, _ = await cli(capsys, "unused:1", "prices", "list", "--format", "json", *alerts)
    listed = json.loads(out)["prices"]
    assert [(p["model"], p["input_per_mtok"]) for p in listed] == [
        ("acme-llm-9000", 1.0), ("acme-llm-9000", 10.0), ("gpt-4o", 100.0)]
    assert "cache_read_per_mtok" not in listed[0] and listed[2]["cache_read_per_mtok"] == 50.0
    await asyncio.sleep(1.0)  # the ingest service re-reads the overrides every 0.2 s

    tokens = {"input_tokens": 1_000_000, "output_tokens": 500_000}
    before = unpriced(start=t_eff - timedelta(minutes=2), model="acme-llm-9000", **tokens)
    first = unpriced(start=t_eff + timedelta(minutes=1), model="acme-llm-9000", reasoning_tokens=100_000,
                     **tokens)
    second = unpriced(start=t_eff + timedelta(minutes=21), model="acme-llm-9000",
                      media=usage_pb2.MediaUsage(images=4), **tokens)
    old_gpt = unpriced(start=t_eff - timedelta(minutes=2), model="gpt-4o", provider="openai", **tokens)
    new_gpt = unpriced(start=t_eff + timedelta(minutes=1), model="gpt-4o", provider="openai",
                       cache_read_tokens=200_000, **tokens)
    await write(fast_ingest_stub, before, first, second, old_gpt, new_gpt)

    got = await detail(query_stub, before)
    assert (got.cost_source, got.record.cost) == (UNPRICED, 0.0)
    got = await detail(query_stub, first)
    assert got.cost_source == COMPUTED and got.record.cost == pytest.approx(1.0 + 0.4 * 2 + 0.1 * 4)
    got = await detail(query_stub, second)
    assert got.record.cost == pytest.approx(10.0 + 0.5 * 20 + 4 * 0.5)
    builtin = genai_prices.calc_price(genai_prices.Usage(**tokens), "gpt-4o", provider_id="openai",
                                      genai_request_timestamp=old_gpt.start_time.ToDatetime(UTC)).total_price
    assert (await detail(query_stub, old_gpt)).record.cost == pytest.approx(float(builtin))
    got = await detail(query_stub, new_gpt)
    assert got.cost_source == COMPUTED and got.record.cost == pytest.approx(0.8 * 100 + 0.2 * 50 + 0.5 * 200)

    code, out, _ = await cli(capsys, "unused:1", "prices", "delete", "gpt-4o", "--from", rfc3339(t_eff),
                             *alerts)
    assert code == 0 and "deleted the prices of gpt-4o" in out
    code, out, _ = await cli(capsys, "unused:1", "prices", "list", "--model", "gpt-4o", "--format", "json",
                             *alerts)
    assert json.loads(out).get("prices", []) == []


async def test_only_admins_manage_prices_and_bad_prices_are_refused(
        alerts_server: AlertsServer, db_url: str) -> None:
    addr = f"127.0.0.1:{alerts_server.port}"
    price = prices_pb2.ModelPrice(model="m", effective_from=ts(datetime(2025, 1, 1, tzinfo=UTC)),
                                  input_per_mtok=1, output_per_mtok=2)
    for role in (Role.READ, Role.INGEST):
        key = await make_key(db_url, role)
        async with keyed_channel(addr, key) as channel:
            stub = prices_pb2_grpc.PricesServiceStub(channel)
            for call in (stub.SetPrice(prices_pb2.SetPriceRequest(price=price)),
                         stub.ListPrices(prices_pb2.ListPricesRequest())):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, role
    async with keyed_channel(addr) as channel:
        stub = prices_pb2_grpc.PricesServiceStub(channel)
        when = price.effective_from
        missing = prices_pb2.ModelPrice(model="m", effective_from=when, input_per_mtok=1)
        undated = prices_pb2.ModelPrice(model="m", input_per_mtok=1, output_per_mtok=1)
        negative = prices_pb2.ModelPrice(model="m", effective_from=when, input_per_mtok=-1, output_per_mtok=1)
        for bad, field in ((missing, "price.output_per_mtok"), (undated, "price.effective_from"),
                           (negative, "price.input_per_mtok")):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.SetPrice(prices_pb2.SetPriceRequest(price=bad))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (e.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.DeletePrice(prices_pb2.DeletePriceRequest(model="m", effective_from=when))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for p in plan.get("Plans", ()) for n in _plan_nodes(p))]


@pytest.mark.usefixtures("timescale_flavor_only")
async def test_unpriced_counts_from_compressed_chunks_read_only_unpriced_segments(
        db_url: str, ingest_stub: Any, query_stub: Any) -> None:
    """Compressed chunks have no partial index of unpriced rows: they are segmented by cost source
    (0017), so the count filters segments before decompressing, and still counts exactly."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=4)
    await write(ingest_stub, *(record(start=start + timedelta(seconds=i), model="gpt-4o") for i in range(3)),
                unpriced(start=start, model="acme-llm-9000", provider="acme"),
                unpriced(start=start + timedelta(seconds=5), model="acme-llm-8000", provider="acme"))
    conn = await asyncpg.connect(db_url)
    try:
        compressed = await conn.fetchval("SELECT count(compress_chunk(c)) FROM show_chunks("
                                         "'usage_records', older_than => INTERVAL '2 days') AS c")
        plan = json.loads(await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT count(*) FROM usage_records "
            "WHERE cost_source = 3 AND start_time >= $1 AND start_time < $2",
            start - timedelta(hours=1), start + timedelta(hours=1)))[0]["Plan"]
    finally:
        await conn.close()
    assert compressed == 1
    decompress = [n for n in _plan_nodes(plan) if n.get("Custom Plan Provider") == "DecompressChunk"]
    assert decompress, plan
    for node in decompress:  # the filter applies to the compressed rows (one per batch of a segment)
        (scan,) = node["Plans"]
        assert "cost_source" in scan.get("Filter", "") + scan.get("Index Cond", ""), scan

    window = {"start_time": ts(start - timedelta(minutes=1)), "end_time": ts(start + timedelta(minutes=1))}
    summary = (await query_stub.GetSummary(query_pb2.GetSummaryRequest(**window))).summary
    assert (summary.request_count, summary.unpriced_count) == (5, 2)
    rows = (await query_stub.GetBreakdown(query_pb2.GetBreakdownRequest(group_by="model", **window))).rows
    assert {r.group: r.unpriced_count for r in rows} == {"gpt-4o": 0, "acme-llm-9000": 1, "acme-llm-8000": 1}
