"""GetTimeSeries and GetBreakdown against hand-computed expectations."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from llmmeter.v1 import query_pb2, usage_pb2

from records import bad_request_fields, ingest, record, ts

M = query_pb2


def _hour(h_ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=h_ago)


async def test_hourly_series_grouped_with_top_n_and_other(ingest_stub, query_stub) -> None:
    h = _hour(5)
    recs = []
    for i in range(3):  # a: 3/hour, b: 2/hour, c and d: 1 each in hour 1 only
        recs += [record(h + timedelta(minutes=5 * i), model="a", latency_ms=100 * (i + 1), ttft_ms=None)]
        recs += [record(h + timedelta(hours=1, minutes=5 * i), model="a", latency_ms=100, ttft_ms=None)]
    recs += [record(h + timedelta(minutes=1 + i), model="b", ttft_ms=None) for i in range(2)]
    recs += [record(h + timedelta(hours=1, minutes=2 + i), model="b", ttft_ms=None) for i in range(2)]
    recs += [record(h + timedelta(hours=1, minutes=30), model="c", status_code=500, ttft_ms=None),
             record(h + timedelta(hours=1, minutes=31), model="d", status_code=429, ttft_ms=None)]
    await ingest(ingest_stub, recs)
    resp = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
        start_time=ts(h), end_time=ts(h + timedelta(hours=3)), granularity="1h", group_by="model", top_n=2,
        metrics=[M.METRIC_REQUESTS, M.METRIC_FAILURE_RATE, M.METRIC_LATENCY_P50]))
    assert resp.granularity == "1h"
    by = {(query_pb2.Metric.Name(s.metric), s.group): s for s in resp.series}
    assert [p.value for p in by[("METRIC_REQUESTS", "a")].points] == [3, 3, 0]
    assert [p.value for p in by[("METRIC_REQUESTS", "b")].points] == [2, 2, 0]
    assert [p.value for p in by[("METRIC_REQUESTS", "other")].points] == [0, 2, 0]
    assert [p.present for p in by[("METRIC_FAILURE_RATE", "other")].points] == [False, True, False]
    assert by[("METRIC_FAILURE_RATE", "other")].points[1].value == 1.0
    assert by[("METRIC_FAILURE_RATE", "a")].points[0].value == 0.0
    p50 = by[("METRIC_LATENCY_P50", "a")].points[0].value
    assert math.isclose(p50, 200, rel_tol=0.005)  # 100, 200, 300 ms
    assert [p.time.ToDatetime(tzinfo=UTC) for p in by[("METRIC_REQUESTS", "a")].points] == [
        h, h + timedelta(hours=1), h + timedelta(hours=2)]


async def test_failures_by_status_class_and_error_type(ingest_stub, query_stub) -> None:
    h = _hour(3)
    await ingest(ingest_stub, [
        record(h, status_code=429, error_type="RateLimitError"),
        record(h, status_code=429, error_type="RateLimitError"),
        record(h, status_code=503, error_type="ServiceUnavailable"),
        record(h, status_code=200),
    ])
    common = {"start_time": ts(h), "end_time": ts(h + timedelta(hours=1)), "granularity": "1h",
              "metrics": [M.METRIC_FAILURES]}
    by_class = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(group_by="status_class", **common))
    assert {s.group: s.points[0].value for s in by_class.series} == {"4xx": 2, "5xx": 1, "2xx": 0}
    by_type = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(group_by="error_type", **common))
    assert {s.group: s.points[0].value for s in by_type.series} == {
        "RateLimitError": 2, "ServiceUnavailable": 1, "": 0}


async def test_long_series_from_rollups_matches_raw_counts(ingest_stub, query_stub, db_pool) -> None:
    now = datetime.now(UTC)
    await ingest(ingest_stub, [record(now - timedelta(minutes=37 * i + 3), cost=0.001 * i,
                                      output_tokens=i, ttft_ms=None) for i in range(120)])
    start = now - timedelta(days=3)
    resp = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
        start_time=ts(start), end_time=ts(now), metrics=[M.METRIC_REQUESTS, M.METRIC_COST]))
    assert resp.granularity == "1h"  # auto: 72 points
    requests = {p.time.ToDatetime(tzinfo=UTC): p.value for p in resp.series[0].points}
    rows = await db_pool.fetch(
        "SELECT date_bin('1 hour', start_time, TIMESTAMPTZ '2000-01-01Z') AS h, count(*) AS n "
        "FROM usage_records WHERE start_time >= $1 AND start_time < $2 GROUP BY 1", start, now)
    assert {r["h"]: r["n"] for r in rows} == {t: v for t, v in requests.items() if v}
    cost = await db_pool.fetchval(
        "SELECT sum(cost) FROM usage_records WHERE start_time >= $1 AND start_time < $2", start, now)
    assert sum(p.value for p in resp.series[1].points) == pytest.approx(float(cost))


async def test_bad_series_requests(query_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.GetTimeSeries(M.GetTimeSeriesRequest())
    assert bad_request_fields(err.value)[0][0] == "metrics"
    for field, req in (("granularity", {"granularity": "7m"}), ("group_by", {"group_by": "colour"})):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(metrics=[M.METRIC_REQUESTS], **req))
        assert bad_request_fields(err.value)[0][0] == field


async def test_breakdown_by_model_sorted_with_top_n(ingest_stub, query_stub) -> None:
    t = datetime.now(UTC) - timedelta(minutes=30)
    await ingest(ingest_stub, [
        record(t, model="a", cost=0.5, input_tokens=10, output_tokens=5, latency_ms=100, ttft_ms=None),
        record(t, model="a", cost=0.5, input_tokens=10, output_tokens=5, latency_ms=300, status_code=500,
               ttft_ms=None),
        record(t, model="b", cost=2.0, input_tokens=1, output_tokens=1, latency_ms=50, ttft_ms=None),
        record(t, model="c", cost=0.1, input_tokens=1, output_tokens=1, latency_ms=50, ttft_ms=None),
    ])
    window = {"start_time": ts(t - timedelta(minutes=5)), "end_time": ts(t + timedelta(minutes=55))}
    resp = await query_stub.GetBreakdown(M.GetBreakdownRequest(order_by="cost desc", top_n=2, **window))
    assert [(r.group, r.cost) for r in resp.rows] == [("b", 2.0), ("a", 1.0)]
    assert resp.omitted_groups == 1
    a = resp.rows[1]
    assert (a.request_count, a.success_count, a.failure_count, a.success_rate) == (2, 1, 1, 0.5)
    assert (a.total_tokens, a.rpm, a.tpm) == (30, 2 / 60, 30 / 60)
    assert (a.latency_avg_ms, a.latency_p50_ms, a.latency_p99_ms) == (200, 100, 300)
    assert (a.ttft_count, a.ttft_p95_ms) == (0, 0)  # no streamed call: zero for want of data
    assert resp.percentile_method == M.PERCENTILE_METHOD_EXACT
    by_name = await query_stub.GetBreakdown(M.GetBreakdownRequest(order_by="group", **window))
    assert [r.group for r in by_name.rows] == ["a", "b", "c"]


async def test_a_users_model_usage(ingest_stub, query_stub) -> None:
    t = datetime.now(UTC) - timedelta(days=2)
    await ingest(ingest_stub, [
        record(t, user="ana", model="a"), record(t, user="ana", model="a", status_code=500),
        record(t, user="ana", model="b"), record(t, user="bo", model="a"),
    ])
    resp = await query_stub.GetBreakdown(M.GetBreakdownRequest(
        start_time=ts(t - timedelta(days=1)), end_time=ts(t + timedelta(days=1)), filter='user = "ana"',
        group_by="model"))
    assert [(r.group, r.request_count, r.success_count, r.failure_count) for r in resp.rows] == [
        ("a", 2, 1, 1), ("b", 1, 1, 0)]
    assert [r.ttft_count for r in resp.rows] == [2, 1]
    assert all(r.ttft_p50_ms == pytest.approx(300, rel=0.01) for r in resp.rows)
    assert resp.percentile_method == M.PERCENTILE_METHOD_ESTIMATED


async def test_breakdown_bad_order(query_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.GetBreakdown(M.GetBreakdownRequest(order_by="colour"))
    assert bad_request_fields(err.value)[0][0] == "order_by"


def test_series_metrics_and_breakdown_rows_read_only_the_measures_they_declare() -> None:
    """GetTimeSeries sums only SERIES_MEASURES (plus request_count), GetBreakdown only
    BREAKDOWN_MEASURES: a metric reading anything else would silently see 0 there."""
    import random
    from decimal import Decimal

    from llmmeter_common.rollups import MEASURES
    from llmmeter_query import metrics
    from llmmeter_query.aggregate import Stats

    rng = random.Random(3)
    full = Stats(measures={m.column: (Decimal(rng.randint(1, 10**6)) / 1000 if m.sql_type == "numeric"
                                      else rng.randint(1, 10**6)) for m in MEASURES})
    qs = (0.5, 0.75, 0.9, 0.95, 0.99)
    full.quantiles = {(p, q): rng.uniform(1, 10**6) for p in ("lat", "ttft") for q in qs}
    assert set(metrics.SERIES_MEASURES) == set(metrics.SERIES)
    def only(kept: set[str]) -> Stats:
        return Stats(measures={k: v for k, v in full.measures.items() if k in kept}, quantiles=full.quantiles)

    for name, fn in metrics.SERIES.items():
        part = only({"request_count", *metrics.SERIES_MEASURES[name]})
        bucket = metrics.Bucket(timedelta(minutes=5), 7)
        assert fn(part, bucket) == fn(full, bucket), name
    row = metrics.breakdown_row("g", only(set(metrics.BREAKDOWN_MEASURES)), 60.0)
    assert row == metrics.breakdown_row("g", full, 60.0)


async def test_grouping_by_number_and_boolean_fields(ingest_stub, query_stub) -> None:
    t = datetime.now(UTC) - timedelta(days=2)
    await ingest(ingest_stub, [
        record(t, status_code=200), record(t, status_code=200, ttft_ms=None), record(t, status_code=429),
        record(t, status_code=500, ttft_ms=None),
    ])
    window = {"start_time": ts(t - timedelta(days=1)), "end_time": ts(t + timedelta(days=1))}
    for group_by, want in (("status_code", {"200": 2, "429": 1, "500": 1}),
                           ("streaming", {"true": 2, "false": 2})):
        resp = await query_stub.GetBreakdown(M.GetBreakdownRequest(group_by=group_by, **window))
        assert {r.group: r.request_count for r in resp.rows} == want, group_by
        series = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
            group_by=group_by, granularity="1d", metrics=[M.METRIC_REQUESTS], **window))
        assert {s.group: sum(p.value for p in s.points) for s in series.series} == want, group_by
    recent = {"start_time": ts(t), "end_time": ts(t + timedelta(minutes=1))}  # raw rows, exact
    resp = await query_stub.GetBreakdown(M.GetBreakdownRequest(group_by="cache_hit", **recent))
    assert {r.group: r.request_count for r in resp.rows} == {"false": 4}


async def test_rates_divide_by_the_part_of_each_bucket_inside_the_window(ingest_stub, query_stub) -> None:
    h = _hour(5)
    at = ([h + timedelta(minutes=40, seconds=15 * i) for i in range(60)]  # first bucket: 30 min inside
          + [h + timedelta(hours=1, seconds=100 * i) for i in range(36)]  # a whole hour
          + [h + timedelta(hours=2, seconds=60 * i) for i in range(9)])  # last bucket: 15 min inside
    await ingest(ingest_stub, [record(t, input_tokens=10, output_tokens=5) for t in at])
    resp = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
        start_time=ts(h + timedelta(minutes=30)), end_time=ts(h + timedelta(hours=2, minutes=15)),
        granularity="1h", metrics=[M.METRIC_REQUESTS_PER_SECOND, M.METRIC_TOKENS_PER_MINUTE]))
    rps, tpm = ([p.value for p in s.points] for s in resp.series)
    assert rps == [pytest.approx(60 / 1800), pytest.approx(36 / 3600), pytest.approx(9 / 900)]
    assert tpm == [pytest.approx(60 * 15 / 30), pytest.approx(36 * 15 / 60), pytest.approx(9 * 15 / 15)]


async def test_failure_share_by_status_class_adds_up_to_the_failure_rate(ingest_stub, query_stub) -> None:
    h = _hour(3)
    codes = [200, 200, 200, 500, 503, 429]
    await ingest(ingest_stub, [record(h + timedelta(minutes=5 * i), status_code=c)
                               for i, c in enumerate(codes)])
    window = {"start_time": ts(h), "end_time": ts(h + timedelta(hours=2))}
    resp = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
        group_by="status_class", granularity="1h", top_n=2,
        metrics=[M.METRIC_FAILURE_SHARE, M.METRIC_FAILURE_RATE], **window))
    share = {s.group: s.points[0].value for s in resp.series if s.metric == M.METRIC_FAILURE_SHARE}
    rate = {s.group: s.points[0].value for s in resp.series if s.metric == M.METRIC_FAILURE_RATE}
    assert share == {"2xx": 0, "5xx": pytest.approx(2 / 6), "other": pytest.approx(1 / 6)}  # 4xx folded
    assert rate == {"2xx": 0, "5xx": 1, "other": 1}  # within each group: says nothing of the mix
    assert sum(share.values()) == pytest.approx(3 / 6)
    empty = [s.points[1] for s in resp.series if s.metric == M.METRIC_FAILURE_SHARE]
    assert all(not p.present for p in empty)  # the second hour has no requests: no share at all


async def test_groups_ranked_by_cost_keep_the_expensive_model(ingest_stub, query_stub) -> None:
    h = _hour(3)
    await ingest(ingest_stub, [
        *(record(h + timedelta(minutes=i), model="cheap", cost=0.01) for i in range(5)),
        *(record(h + timedelta(minutes=i), model="pricey", cost=2.0) for i in range(2)),
        record(h, model="mid", cost=0.5),
    ])
    base = {"start_time": ts(h), "end_time": ts(h + timedelta(hours=2)), "granularity": "1h",
            "group_by": "model", "top_n": 1, "metrics": [M.METRIC_COST]}
    by_requests = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(**base))
    assert [s.group for s in by_requests.series] == ["cheap", "other"]
    by_cost = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(rank_by=M.METRIC_COST, **base))
    assert [(s.group, s.points[0].value) for s in by_cost.series] == [("pricey", 4.0),
                                                                      ("other", pytest.approx(0.55))]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(rank_by=M.METRIC_LATENCY_P95, **base))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "rank_by"


async def test_usage_units_per_model_over_time(ingest_stub, query_stub) -> None:
    h = _hour(3)
    await ingest(ingest_stub, [
        record(h, model="dall-e-3", media=usage_pb2.MediaUsage(images=2), ttft_ms=None),
        record(h + timedelta(minutes=1), model="dall-e-3", media=usage_pb2.MediaUsage(images=3),
               ttft_ms=None),
        record(h, model="tts-1", media=usage_pb2.MediaUsage(audio_seconds=12.5, characters=400),
               ttft_ms=None),
        record(h, model="gpt-4o"),
    ])
    resp = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
        start_time=ts(h), end_time=ts(h + timedelta(hours=1)), granularity="1h", group_by="model",
        rank_by=M.METRIC_IMAGES, top_n=1,
        metrics=[M.METRIC_IMAGES, M.METRIC_AUDIO_SECONDS, M.METRIC_CHARACTERS, M.METRIC_VIDEO_SECONDS]))
    got = {(M.Metric.Name(s.metric), s.group): s.points[0].value for s in resp.series}
    assert got == {
        ("METRIC_IMAGES", "dall-e-3"): 5, ("METRIC_IMAGES", "other"): 0,
        ("METRIC_AUDIO_SECONDS", "dall-e-3"): 0, ("METRIC_AUDIO_SECONDS", "other"): 12.5,
        ("METRIC_CHARACTERS", "dall-e-3"): 0, ("METRIC_CHARACTERS", "other"): 400,
        ("METRIC_VIDEO_SECONDS", "dall-e-3"): 0, ("METRIC_VIDEO_SECONDS", "other"): 0,
    }
