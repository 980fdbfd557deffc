"""Hostile query input over the real services: every bad request field is INVALID_ARGUMENT naming the
field (with a BadRequest and a short message); filters are bounded and whatever is accepted runs fast;
live-tail filters match in bounded time; no single call keeps health checks or other callers waiting."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmeter.v1 import query_pb2 as Q
from llmmeter.v1 import query_pb2_grpc
from llmmeter_query.filters import LIMITS, glob_match, like_pattern, parse_filter
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

from conftest import drain_rollups
from keyring import ADMIN, keyed_channel
from records import bad_request_fields, ingest, record, ts

M = Q.METRIC_REQUESTS
YEAR_1 = -62135596800
YEAR = 31_556_952
#: Every metric but UNSPECIFIED, each once.
ALL_METRICS = [v for v in Q.Metric.values() if v]


def _t(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _token(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def _ors(n: int, field: str = "model", fmt: str = '{f} = "m{i}"') -> str:
    return " OR ".join(fmt.format(f=field, i=i) for i in range(n))


_13_DAYS = (_t(1_700_000_000), _t(1_700_000_000 + 13 * 86400))
#: (case, method, request, the field the refusal must name)
HOSTILE: list[tuple[str, str, Any, str]] = [
    ("end 10^6 years out", "GetSummary", Q.GetSummaryRequest(start_time=_t(0), end_time=_t(10**6 * YEAR)),
     "end_time"),
    ("end in year 1, no start", "GetSummary", Q.GetSummaryRequest(end_time=_t(YEAR_1)), "end_time"),
    ("negative nanos", "GetSummary", Q.GetSummaryRequest(start_time=_t(10, -5), end_time=_t(100)),
     "start_time"),
    ("nanos past a second", "GetSummary", Q.GetSummaryRequest(start_time=_t(10, 2_000_000_000)),
     "start_time"),
    ("start after end", "GetSummary", Q.GetSummaryRequest(start_time=_t(200), end_time=_t(100)),
     "start_time"),
    ("a 20-year window", "GetSummary", Q.GetSummaryRequest(start_time=_t(0), end_time=_t(20 * YEAR)),
     "start_time"),
    ("NUL in a filter value", "GetSummary", Q.GetSummaryRequest(filter='model = "gpt\x00-4o"'), "filter"),
    ("status_code past int32", "GetSummary",
     Q.GetSummaryRequest(filter="status_code >= 99999999999999999999"), "filter"),
    ("status_code not ASCII digits", "GetSummary", Q.GetSummaryRequest(filter='status_code = "²"'), "filter"),
    ("5,000 nested parentheses", "GetSummary", Q.GetSummaryRequest(
        filter="(" * 5000 + 'model = "a"' + ")" * 5000), "filter"),
    ("a 1 MB filter value", "GetBreakdown", Q.GetBreakdownRequest(filter='model = "' + "a" * 1_000_000 + '"'),
     "filter"),
    ("page_size 2^31-1", "ListRequests", Q.ListRequestsRequest(page_size=2**31 - 1), "page_size"),
    ("negative page_size", "ListRequests", Q.ListRequestsRequest(page_size=-1), "page_size"),
    ("garbage page_token", "ListRequests", Q.ListRequestsRequest(page_token="!!!\x00"), "page_token"),
    ("page_token past year 9999", "ListRequests", Q.ListRequestsRequest(
        page_token=_token({"t": 10**30, "i": "x", "s": 0, "e": 1, "f": "x"})), "page_token"),
    ("a 100 kB page_token", "ListRequests", Q.ListRequestsRequest(page_token="A" * 100_000), "page_token"),
    ("NUL in request_id", "GetRequest", Q.GetRequestRequest(request_id="a\x00b"), "request_id"),
    ("a 1 MB request_id", "GetRequest", Q.GetRequestRequest(request_id="a" * 1_000_000), "request_id"),
    ("empty request_id", "GetRequest", Q.GetRequestRequest(), "request_id"),
    ("request start_time 10^15 s", "GetRequest", Q.GetRequestRequest(request_id="a", start_time=_t(10**15)),
     "start_time"),
    ("unknown metric", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[999]), "metrics"),
    ("negative metric", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[-1]), "metrics"),
    ("no metric", "GetTimeSeries", Q.GetTimeSeriesRequest(), "metrics"),
    ("100,000 metrics", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[M] * 100_000), "metrics"),
    ("unknown rank_by", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[M], rank_by=999), "rank_by"),
    ("series top_n 2^31-1", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[M], group_by="model",
                                                                     top_n=2**31 - 1), "top_n"),
    ("negative top_n", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[M], group_by="model", top_n=-5),
     "top_n"),
    ("group_by metadata.", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[M], group_by="metadata."),
     "group_by"),
    ("group_by non-ASCII metadata key", "GetTimeSeries",
     Q.GetTimeSeriesRequest(metrics=[M], group_by="metadata.ä²"), "group_by"),
    ("group_by quote in metadata key", "GetTimeSeries",
     Q.GetTimeSeriesRequest(metrics=[M], group_by="metadata.a'b"), "group_by"),
    ("a 5,000-character time_zone", "GetTimeSeries", Q.GetTimeSeriesRequest(
        metrics=[M], granularity="1d", time_zone="A" * 5000), "time_zone"),
    ("time_zone a folder", "GetTimeSeries", Q.GetTimeSeriesRequest(
        metrics=[M], granularity="1d", time_zone="Europe"), "time_zone"),
    ("time_zone with NUL", "GetTimeSeries", Q.GetTimeSeriesRequest(
        metrics=[M], granularity="1d", time_zone="UTC\x00"), "time_zone"),
    ("a 100 kB granularity", "GetTimeSeries", Q.GetTimeSeriesRequest(metrics=[M], granularity="x" * 100_000),
     "granularity"),
    ("6.6 million points", "GetTimeSeries", Q.GetTimeSeriesRequest(  # 32 x 11 x 18,720: under 20,000 buckets
        metrics=ALL_METRICS, granularity="1m", group_by="model", start_time=_13_DAYS[0],
        end_time=_13_DAYS[1]), "granularity"),
    ("top_n 1,000 x 32 metrics", "GetTimeSeries", Q.GetTimeSeriesRequest(
        metrics=ALL_METRICS, granularity="1h", group_by="user", top_n=1000), "granularity"),
    ("breakdown top_n 2^31-1", "GetBreakdown", Q.GetBreakdownRequest(top_n=2**31 - 1), "top_n"),
    ("a 100 kB order_by", "GetBreakdown", Q.GetBreakdownRequest(order_by="x" * 100_000), "order_by"),
    ("NUL in group_by", "GetBreakdown", Q.GetBreakdownRequest(group_by="mod\x00el"), "group_by"),
    ("unknown export format", "ExportRequests", Q.ExportRequestsRequest(format=999), "format"),
    ("5,000 group_by columns", "ExportAggregates", Q.ExportAggregatesRequest(group_by=["model"] * 5000),
     "group_by"),
    ("export group_by metadata.", "ExportAggregates", Q.ExportAggregatesRequest(group_by=["metadata."]),
     "group_by"),
    ("export time_zone too long", "ExportAggregates", Q.ExportAggregatesRequest(
        group_by=["model"], granularity="1d", time_zone="B" * 300), "time_zone"),
    ("tail filter with NUL", "TailRequests", Q.TailRequestsRequest(filter='team = "\x00"'), "filter"),
]


async def _call(stub: Any, method: str, request: Any, deadline: float = 30) -> Any:
    """Make the call (with a gRPC deadline of `deadline` seconds), reading a stream to its end."""
    call = getattr(stub, method)(request, timeout=deadline)
    if hasattr(call, "__aiter__"):
        return [item async for item in call]
    return await call


async def _refused(stub: Any, method: str, request: Any) -> tuple[grpc.aio.AioRpcError, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(stub, method, request)
    return err.value, [f for f, _ in bad_request_fields(err.value)]


@pytest.mark.parametrize(("method", "request_", "field"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])
async def test_each_hostile_field_is_invalid_argument_naming_it(query_stub, method: str, request_: Any,
                                                                field: str) -> None:
    err, fields = await _refused(query_stub, method, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in fields and err.details().startswith(field), (fields, err.details())
    assert len(err.details()) < 1000  # echoed values are cut short


@pytest.mark.parametrize(("text", "limit"), [
    (_ors(32_768), f"{LIMITS.length:,} characters"),
    (_ors(LIMITS.terms + 1, "user", '{f}="{i}"'), f"{LIMITS.terms:,} comparisons"),
    ("-(" * LIMITS.depth + 'model = "a"' + ")" * LIMITS.depth, f"{LIMITS.depth} levels"),
    ('model = "' + "x" * (LIMITS.value_length + 1) + '"', f"{LIMITS.value_length:,} characters in the value"),
    ('model = "' + "a*" * (LIMITS.wildcards_per_value + 1) + '"',
     f"{LIMITS.wildcards_per_value} * wildcards in the value"),
    (_ors(LIMITS.wildcards // 2 + 1, "model", '{f} = "*{i}*"'), f"{LIMITS.wildcards} * wildcards"),
], ids=["32768 terms", "terms", "depth", "value length", "wildcards per value", "wildcards"])
async def test_filters_past_a_limit_are_invalid_argument_saying_which(query_stub, text: str,
                                                                      limit: str) -> None:
    err, fields = await _refused(query_stub, "GetSummary", Q.GetSummaryRequest(filter=text))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # not UNAVAILABLE: clients must not retry it
    assert fields == ["filter"] and limit in err.details(), err.details()


def test_filters_at_the_limits_parse() -> None:
    parse_filter(_ors(LIMITS.terms, "user", '{f}="{i}"'))
    parse_filter("-(" * (LIMITS.depth // 2) + 'model = "a"' + ")" * (LIMITS.depth // 2))
    parse_filter('model = "' + "x" * LIMITS.value_length + '"')
    parse_filter(_ors(LIMITS.wildcards // 2, "model", '{f} = "*{i}*"'))
    text = 'model = "' + "y" * (LIMITS.length - 10) + '"'
    with pytest.raises(Exception, match="characters in the value"):  # the length passes, the value not
        parse_filter(text[: LIMITS.length])


async def _timed(coro: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = await coro
    return out, time.perf_counter() - t0


async def test_the_largest_accepted_filters_run_fast(ingest_stub, query_stub, db_url: str) -> None:
    """A 200-term OR and filters at the limits, over a month (every rollup level and the raw edges)
    and in the raw log: right answers, each well under a second, bind parameters shared by the parts."""
    now = datetime.now(UTC).replace(microsecond=0)
    recs = [record(now - timedelta(minutes=9 * i + 1), model=f"m{i % 300}", user=f"u{i % 7}",
                   metadata={"tenant": f"t{i % 50}"}, ttft_ms=None) for i in range(2000)]  # 12.5 days
    await ingest(ingest_stub, recs)
    await drain_rollups(db_url)
    month = {"start_time": ts(now - timedelta(days=30, minutes=7)),
             "end_time": ts(now + timedelta(minutes=1))}
    or200 = _ors(200)
    in_or200 = sum(1 for r in recs if int(r.model[1:]) < 200)
    summary, took = await _timed(query_stub.GetSummary(Q.GetSummaryRequest(filter=or200, **month)))
    assert summary.summary.request_count == in_or200 and took < 1.0, took
    # 500 comparisons that cannot fold into one `= ANY` (each its own LIKE parameter), on raw rows
    # (metadata), over a month of stretches
    contains500 = _ors(LIMITS.terms, "metadata.tenant", '{f}:"t{i}x"')
    resp, took = await _timed(query_stub.GetSummary(Q.GetSummaryRequest(filter=contains500, **month)))
    assert resp.summary.request_count == 0 and took < 1.0, took
    wild = _ors(LIMITS.wildcards // 2, "model", '{f} = "m{i}*"')  # m0*, m1*, ... m24*
    expected = sum(1 for r in recs if any(r.model.startswith(f"m{i}") for i in range(LIMITS.wildcards // 2)))
    series, took = await _timed(query_stub.GetTimeSeries(Q.GetTimeSeriesRequest(
        metrics=[M], filter=wild, granularity="1d", group_by="user", **month)))
    assert sum(p.value for s in series.series for p in s.points) == expected and took < 1.0, took
    page, took = await _timed(query_stub.ListRequests(Q.ListRequestsRequest(filter=or200, page_size=1000,
                                                                            **month)))
    assert len(page.requests) == min(in_or200, 1000) and took < 1.0, took
    rows, took = await _timed(_call(query_stub, "ExportRequests", Q.ExportRequestsRequest(
        filter=or200, format=Q.EXPORT_FORMAT_NDJSON, **month)))
    assert rows[-1].rows_written == in_or200 and took < 1.0, took


@pytest.mark.parametrize(("pattern", "text"), [
    ("*", ""), ("*", "anything"), ("", ""), ("", "a"), ("a*", "a"), ("*a", "a"), ("a*a", "a"),
    ("a*a", "aa"), ("a*b*c", "abc"), ("a*b*c", "aXbYc"), ("a*b*c", "acb"), ("**", "x"), ("a**b", "ab"),
    ("*ab*ab*", "abab"), ("*ab*ab*", "aab"), ("*aab", "aaab"), ("a*ba", "aba"), ("ab*ba", "aba"),
    ("100%", "100%"), ("100%", "1000"), ("a_c", "abc"), ("a_c", "a_c"), ("*_*", "x_y"), ("*_*", "xy"),
    ("%", "anything"), ("\\", "\\"), ("a\\*", "a\\bc"), ("\\%*", "\\%x"), ("*\\_", "a\\_"),
    ("gpt-4o*", "gpt-4o-mini"), ("*-mini", "gpt-4o-mini"), ("*4o*", "gpt-4o"), ("GPT*", "gpt-4o"),
    ("é*ü", "éaü"), ("*ß*", "straße"), ("*a*a*a*a*b", "a" * 400), ("*a*a*a*a*b", "a" * 399 + "b"),
    ("a*\n*b", "a\n\nb"), ("*.*", "x.y"), ("[a]*", "[a]b"), ("(*)", "(x)"), ("$*^", "$x^"),
])
async def test_glob_matcher_answers_as_postgresql_like(db_pool: asyncpg.Pool, pattern: str,
                                                       text: str) -> None:
    """The tail's matcher against PostgreSQL: LIKE of the escaped pattern, ILIKE for `:`, and every
    filter form built on the pattern, compiled to SQL and run on a row, against `matches` in process."""
    like, ilike = await db_pool.fetchval("SELECT ROW($2::text LIKE $1, $2::text ILIKE $3)",
                                         like_pattern(pattern), text, "%" + like_pattern(pattern) + "%")
    assert glob_match(pattern, text) == like
    assert glob_match(f"*{pattern.lower()}*", text.lower()) == ilike
    quoted = '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for form in ("model = {p}", "model != {p}", "model : {p}", "-model : {p}", "metadata.k = {p}",
                 "metadata.k : {p}", 'model = {p} OR model = "zz*"', 'model : {p} OR model : "zz"',
                 'model != {p} AND model != "zz*"', 'model = {p} OR model = "zz"'):
        filt = parse_filter(form.format(p=quoted))
        params: list[Any] = [text, json.dumps({"k": text})]
        sql = f"SELECT {filt.sql(params)} FROM (SELECT $1::text AS model, $2::jsonb AS metadata) AS r"
        row = {"model": text, "metadata": {"k": text}}
        assert filt.matches(row) == await db_pool.fetchval(sql, *params), (form, filt.root)


class HealthProbe:
    """Health checks every 50 ms from a thread of its own on a plain channel (health needs no key),
    so a blocked event loop shows as slow answers however the test's own loop is doing."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded, daemon=True)

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a check that failed or timed out fails the test
            self.error = exc

    def _run(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self._port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while not self._stop.is_set():
                t0 = time.perf_counter()
                resp = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                self.latencies.append(time.perf_counter() - t0)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
                self._stop.wait(0.05)

    async def __aenter__(self) -> HealthProbe:
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 35)  # the loop keeps serving the last check
        if self.error is not None:
            raise self.error


async def test_tail_with_wildcards_and_a_long_value_freezes_nothing(
        ingest_stub, query_stub, query_server: QueryServer) -> None:
    """The report: a tail filter with 5 wildcards and one ingested 400-character value froze the
    whole service (a backtracking regex). Now the row is judged at once, health and other callers
    are answered meanwhile, and the tail goes on with the next rows."""
    pattern = "*a*a*a*a*b"  # 5 wildcards
    tail = query_stub.TailRequests(Q.TailRequestsRequest(filter=f'metadata.prompt = "{pattern}"'))
    assert dict(await tail.initial_metadata()).get("llmmeter-tail") == "live"
    async with HealthProbe(query_server.port) as probe:
        t0 = time.perf_counter()
        await ingest(ingest_stub, [record(request_id="poison", metadata={"prompt": "a" * 400}),
                                   record(request_id="match", metadata={"prompt": "a" * 399 + "b"})])
        got = await asyncio.wait_for(tail.read(), 10)
        took = time.perf_counter() - t0
        other, other_took = await _timed(query_stub.GetSummary(Q.GetSummaryRequest()))
        await asyncio.sleep(0.3)
    latencies = probe.latencies
    tail.cancel()
    assert got.request.request_id == "match" and took < 2.0, took  # the 400 a's did not match
    assert other.summary.request_count == 2 and other_took < 1.0
    assert latencies and max(latencies) < 1.0, latencies


async def test_health_and_other_callers_answer_while_the_heaviest_calls_run(
        ingest_stub, query_stub, query_server: QueryServer) -> None:
    """The most expensive requests the limits accept, several at once: a 240,000-point series, the
    largest filters, a full export. Health answers every check within a second meanwhile, and
    another caller's summary too."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await ingest(ingest_stub, [record(now - timedelta(minutes=i), model=f"m{i % 20}", ttft_ms=None)
                               for i in range(3000)])
    window = {"start_time": ts(now - timedelta(minutes=19_999)), "end_time": ts(now + timedelta(minutes=1))}
    heavy = [
        _call(query_stub, "GetTimeSeries", Q.GetTimeSeriesRequest(  # 12 x 20,000 buckets = 240,000 points
            metrics=ALL_METRICS[:3], granularity="1m", group_by="model", top_n=3, **window), deadline=120),
        _call(query_stub, "GetSummary", Q.GetSummaryRequest(filter=_ors(LIMITS.terms, "metadata.k",
                                                                         '{f}:"v{i}"'), **window)),
        _call(query_stub, "ExportRequests", Q.ExportRequestsRequest(filter=_ors(200), **window)),
    ]
    async with HealthProbe(query_server.port) as probe:
        results = asyncio.gather(*heavy)
        await asyncio.sleep(0.3)
        other, other_took = await _timed(query_stub.GetSummary(Q.GetSummaryRequest(filter='model = "m1"')))
        series, summary, export = await results
    latencies = probe.latencies
    assert len(series.series) == 12 and all(len(s.points) == 20_000 for s in series.series)
    assert summary.summary.request_count == 0 and export[-1].rows_written == 3000 // 20 * 20
    assert other.summary.request_count > 0 and other_took < 1.0, other_took
    assert len(latencies) >= 3 and max(latencies) < 1.0, latencies


async def test_every_read_path_runs_under_the_statement_timeout(ingest_stub, db_url: str) -> None:
    """With a 50 ms statement timeout, a filter that makes PostgreSQL work about 250 ms (500
    contains terms on 20,000 raw rows) ends every kind of call, streams included, with
    DEADLINE_EXCEEDED; the service answers health checks right after."""
    now = datetime.now(UTC).replace(microsecond=0)
    await ingest(ingest_stub, [record(now - timedelta(seconds=10 + i % 3000), metadata={"tenant": f"t{i}"},
                                      ttft_ms=None) for i in range(20_000)])
    server = QueryServer(QuerySettings(database_url=db_url, host="127.0.0.1", port=0, metrics_port=0,
                                       shutdown_grace_seconds=2.0, bootstrap_admin_key=ADMIN.token,
                                       statement_timeout_seconds=0.05))
    await server.start()
    try:
        async with keyed_channel(f"127.0.0.1:{server.port}") as ch:
            stub = query_pb2_grpc.QueryServiceStub(ch)
            slow = _ors(LIMITS.terms, "metadata.tenant", '{f}:"x{i}y"')
            window = {"start_time": ts(now - timedelta(hours=2)), "end_time": ts(now)}
            calls = {
                "GetSummary": Q.GetSummaryRequest(filter=slow, **window),
                "GetBreakdown": Q.GetBreakdownRequest(filter=slow, **window),
                "GetTimeSeries": Q.GetTimeSeriesRequest(filter=slow, metrics=[M], **window),
                "ListRequests": Q.ListRequestsRequest(filter=slow, **window),
                "ExportRequests": Q.ExportRequestsRequest(filter=slow, **window),
                "ExportAggregates": Q.ExportAggregatesRequest(filter=slow, group_by=["model"], **window),
            }
            for method, request_ in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _call(stub, method, request_)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (method, err.value.details())
            resp, took = await _timed(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                                           timeout=5))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING and took < 1.0
    finally:
        await server.stop()
