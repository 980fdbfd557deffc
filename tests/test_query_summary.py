"""GetSummary: hand-computed cards, window boundaries, rollup versus raw, filters, bad filters."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest

from llmmeter.v1 import ingest_pb2_grpc, query_pb2
from llmmeter_ingest.server import IngestServer

from cli_helpers import cli, rfc3339
from conftest import drain_rollups, ingest_settings
from keyring import keyed_channel
from records import bad_request_fields, ingest, record, ts

HOUR = timedelta(hours=1)


def _at(minutes_ago: float) -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)


async def summary(stub, start: datetime, end: datetime, filt: str = "") -> query_pb2.GetSummaryResponse:
    return await stub.GetSummary(query_pb2.GetSummaryRequest(start_time=ts(start), end_time=ts(end),
                                                             filter=filt))


async def test_cards_by_hand(ingest_stub, query_stub) -> None:
    t0 = _at(30)
    recs = [
        record(t0, latency_ms=1000, ttft_ms=200, model="gpt-4o", input_tokens=100, output_tokens=50,
               cost=0.01, cache_read_tokens=40),
        record(t0 + timedelta(seconds=5), latency_ms=2000, ttft_ms=400, model="gpt-4o", input_tokens=300,
               output_tokens=150, cost=0.02),
        record(t0 + timedelta(seconds=9), latency_ms=500, ttft_ms=None, model="claude", status_code=429,
               error_type="RateLimitError", input_tokens=10, output_tokens=0, cost=0),
        record(t0 + timedelta(seconds=12), latency_ms=3000, ttft_ms=None, model="gpt-4o", status_code=500,
               input_tokens=20, output_tokens=0, cost=0.005),
    ]
    await ingest(ingest_stub, recs)
    s = (await summary(query_stub, t0, t0 + timedelta(minutes=5))).summary
    assert (s.request_count, s.success_count, s.error_count) == (4, 2, 2)
    assert s.success_rate == 0.5
    assert (s.input_tokens, s.output_tokens, s.total_tokens, s.cache_read_tokens) == (430, 200, 630, 40)
    assert Decimal(s.cost_exact) == Decimal("0.035")
    assert s.latency_avg_ms == pytest.approx(1625.0)
    assert s.latency_p95_ms == pytest.approx(3000.0)  # nearest rank: 4th of 4
    assert s.ttft_avg_ms == pytest.approx(300.0)
    assert s.ttft_p95_ms == pytest.approx(400.0)
    assert (s.latency_p50_ms, s.latency_p75_ms, s.latency_p99_ms) == (1000, 2000, 3000)
    assert (s.ttft_p50_ms, s.ttft_p99_ms) == (200, 400)
    assert s.tpot_avg_ms == pytest.approx(((1000 - 200) / 49 + (2000 - 400) / 149) / 2)
    assert s.itl_avg_ms == 0  # no call reported chunks
    assert (s.ttft_count, s.itl_count, s.tpot_count) == (2, 0, 2)  # which zeros mean "no data"
    assert s.percentile_method == query_pb2.PERCENTILE_METHOD_EXACT
    unstreamed = (await summary(query_stub, t0, t0 + timedelta(minutes=5), 'model = "claude"')).summary
    assert (unstreamed.request_count, unstreamed.ttft_count, unstreamed.ttft_p95_ms) == (1, 0, 0)


async def test_window_is_half_open(ingest_stub, query_stub) -> None:
    start = _at(50) + timedelta(seconds=17, microseconds=250)
    end = start + timedelta(minutes=20)
    await ingest(ingest_stub, [
        record(start, request_id="at-start"),
        record(end - timedelta(microseconds=1), request_id="just-before-end", latency_ms=1, ttft_ms=None),
        record(end, request_id="at-end", latency_ms=1, ttft_ms=None),
        record(start - timedelta(microseconds=1), request_id="just-before-start"),
    ])
    assert (await summary(query_stub, start, end)).summary.request_count == 2


async def test_long_window_uses_rollups_and_equals_raw(ingest_stub, query_stub, db_pool) -> None:
    rng = random.Random(3)
    now = datetime.now(UTC)
    lat = [rng.lognormvariate(6.5, 0.9) for _ in range(3000)]
    recs = [record(now - timedelta(minutes=rng.uniform(2, 3 * 24 * 60)),
                   latency_ms=lat[i], ttft_ms=lat[i] * rng.uniform(0.1, 0.6),
                   model=rng.choice(["gpt-4o", "claude", "gemini"]), team=rng.choice(["payments", "search"]),
                   status_code=rng.choice([200, 200, 200, 429, 500]), input_tokens=rng.randint(1, 900),
                   cost=round(rng.uniform(0, 0.1), 7)) for i in range(3000)]
    await ingest(ingest_stub, recs)
    # odd edges so that every level of the plan (days, hours, minutes, raw) is used
    start, end = now - timedelta(days=2, hours=5, minutes=7, seconds=13), now - timedelta(seconds=41)
    s = (await summary(query_stub, start, end)).summary
    exact = await db_pool.fetchrow(
        "SELECT count(*) AS n, sum(input_tokens) AS tokens, sum(cost) AS cost, "
        "count(*) FILTER (WHERE status_code >= 400) AS errors, "
        "percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_us) AS p95 "
        "FROM usage_records WHERE start_time >= $1 AND start_time < $2", start, end)
    assert s.request_count == exact["n"] and s.error_count == exact["errors"]
    assert s.input_tokens == exact["tokens"]
    assert Decimal(s.cost_exact) == exact["cost"]
    assert s.percentile_method == query_pb2.PERCENTILE_METHOD_ESTIMATED
    assert math.isclose(s.latency_p95_ms, exact["p95"] / 1000, rel_tol=0.005)

    filtered = (await summary(query_stub, start, end, 'team = "payments" AND status_code >= 500')).summary
    n = await db_pool.fetchval(
        "SELECT count(*) FROM usage_records WHERE start_time >= $1 AND start_time < $2 "
        "AND team = 'payments' AND status_code >= 500", start, end)
    assert filtered.request_count == n > 0


@pytest.mark.parametrize(("filt", "expected"), [
    ('model = "gpt-4o"', {"a", "d"}),
    ('status_code = "4xx"', {"c"}),
    ('status_code = "5xx" OR status_code = "4xx"', {"c", "d"}),
    ('model = "gpt-*" AND NOT status_code >= 400', {"a", "b"}),
    ("user:AN", {"a", "c"}),
    ('metadata.tenant = "acme"', {"a", "d"}),
    ("metadata.tenant:*", {"a", "b", "d"}),
    ('-metadata.tenant = "acme"', {"b", "c"}),
    ('team = "payments" model = "gpt-4o"', {"a"}),
    ('team = "payments" AND model = "claude" OR status_code = 500', {"c"}),
    ('request_id = "b"', {"b"}),
    ('model_id = "azure/gpt-4o-eu"', {"d"}),
    ('response_model = "gpt-4o-2024-08-06"', {"a", "d"}),
])
async def test_filters(ingest_stub, query_stub, filt, expected) -> None:
    t0 = _at(20)
    await ingest(ingest_stub, [
        record(t0, request_id="a", model="gpt-4o", user="ana", team="payments", metadata={"tenant": "acme"},
               response_model="gpt-4o-2024-08-06", model_id="openai/gpt-4o"),
        record(t0, request_id="b", model="gpt-4o-mini", user="bo", team="search", metadata={"tenant": "x"}),
        record(t0, request_id="c", model="claude", user="dana", team="payments", status_code=429),
        record(t0, request_id="d", model="gpt-4o", user="eve", team="search", status_code=500,
               metadata={"tenant": "acme"}, response_model="gpt-4o-2024-08-06", model_id="azure/gpt-4o-eu"),
    ])
    s = (await summary(query_stub, t0 - HOUR, t0 + HOUR, filt)).summary
    assert s.request_count == len(expected)
    page = await query_stub.ListRequests(query_pb2.ListRequestsRequest(
        start_time=ts(t0 - HOUR), end_time=ts(t0 + HOUR), filter=filt))
    assert {r.request_id for r in page.requests} == expected


@pytest.mark.parametrize("filt", ['model = ', 'nope = "x"', '(model = "a"', 'status_code = "abc"',
                                  'model = "a" AND', 'streaming = maybe'])
async def test_bad_filter_is_invalid_argument(query_stub, filt) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.GetSummary(query_pb2.GetSummaryRequest(filter=filt))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "filter"


async def test_start_after_end_is_invalid(query_stub) -> None:
    now = datetime.now(UTC)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await summary(query_stub, now, now - HOUR)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_totals_are_exact_while_rollups_lag(db_url, db_pool, query_stub) -> None:
    server = IngestServer(ingest_settings(db_url))
    await server.start()
    assert server.rollups is not None
    await server.rollups.stop()  # the rollups lag: every record stays queued
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            now = datetime.now(UTC)
            recs = [record(now - timedelta(hours=3 * i + 1), cost=0.01 * i) for i in range(40)]
            await ingest(ingest_pb2_grpc.IngestServiceStub(ch), recs)
    finally:
        await server.stop()
    start, end = now - timedelta(days=6), now
    assert await db_pool.fetchval("SELECT count(*) FROM usage_rollup_pending") == 40
    lagging = (await summary(query_stub, start, end)).summary
    await drain_rollups(db_url)
    assert await db_pool.fetchval("SELECT count(*) FROM usage_rollup_pending") == 0
    caught_up = (await summary(query_stub, start, end)).summary
    assert lagging.request_count == caught_up.request_count == 40
    assert Decimal(lagging.cost_exact) == Decimal(caught_up.cost_exact) == sum(
        Decimal(str(0.01 * i)) for i in range(40))
    assert lagging.latency_p95_ms == caught_up.latency_p95_ms


async def test_raw_only_answers_say_where_retention_cut_them(ingest_stub, query_stub, db_pool, db_url,
                                                             addr, capsys) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=12), now - timedelta(days=2)
    await ingest(ingest_stub, [record(old, metadata={"tenant": "acme"}),
                               record(recent, request_id="kept", metadata={"tenant": "acme"})])
    await drain_rollups(db_url)
    start = now - timedelta(days=30)
    fresh = await summary(query_stub, start, now, 'metadata.tenant = "acme"')
    assert fresh.summary.request_count == 2 and not fresh.HasField("counted_from")
    # raw rows kept 5 days (the rollups far longer): the 12-day-old day partition goes
    await db_pool.fetch("SELECT llmmeter_apply_retention('5 days', '5 days', '400 days', '400 days')")
    cut = await summary(query_stub, start, now, 'metadata.tenant = "acme"')
    assert cut.summary.request_count == 1
    assert cut.counted_from.ToDatetime(tzinfo=UTC) == recent  # the oldest raw row left
    whole = await summary(query_stub, start, now)  # the rollups answer: nothing is missing
    assert whole.summary.request_count == 2 and not whole.HasField("counted_from")
    series = await query_stub.GetTimeSeries(query_pb2.GetTimeSeriesRequest(
        start_time=ts(start), end_time=ts(now), granularity="1d", group_by="metadata.tenant",
        metrics=[query_pb2.METRIC_REQUESTS]))
    breakdown = await query_stub.GetBreakdown(query_pb2.GetBreakdownRequest(
        start_time=ts(start), end_time=ts(now), group_by="metadata.tenant"))
    assert series.counted_from == breakdown.counted_from == cut.counted_from
    recent_only = await summary(query_stub, now - timedelta(days=3), now, 'metadata.tenant = "acme"')
    assert not recent_only.HasField("counted_from")  # the window starts after the cut
    capsys.readouterr()
    code, out, err = await cli(capsys, addr, "usage", "breakdown", "--since", "30d",
                               "--by", "metadata.tenant", "--format", "json")
    assert code == 0 and json.loads(out)["counted_from"] == rfc3339(recent)
    assert err.startswith("llmmeter: note: counted from ") and err.count("\n") == 1
