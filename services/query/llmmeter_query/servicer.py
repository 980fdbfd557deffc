"""QueryService over gRPC: parse the request, call the domain, shape the answer.

The domain modules (aggregate, request_log, export, tail) know nothing of
gRPC; this file only converts, and every error leaves as a domain exception
that the shared interceptor maps to a status with details.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from llmmeter.v1 import query_pb2, query_pb2_grpc
from llmmeter_common.auth.context import team_scope
from llmmeter_common.errors import FieldViolation, InvalidArgument, NotFound
from llmmeter_query import checks, metrics
from llmmeter_query.aggregate import Aggregates, Aggregator, Stats, Top, parse_group
from llmmeter_query.convert import request_row, ts, usage_record
from llmmeter_query.export import export_aggregates, export_requests
from llmmeter_query.filters import Filter, parse_filter, scope_to_team
from llmmeter_query.local_days import Calendar, parse_time_zone
from llmmeter_query.request_log import RequestLog
from llmmeter_query.tail import TailHub
from llmmeter_query.unpriced import unpriced_counts
from llmmeter_query.window import Window, parse_granularity, resolve_window

_EXACT = query_pb2.PERCENTILE_METHOD_EXACT
_ESTIMATED = query_pb2.PERCENTILE_METHOD_ESTIMATED


def _filter(text: str) -> Filter:
    """The call's filter, limited to the caller's team when its key is bound to one."""
    return scope_to_team(parse_filter(text), team_scope())


def _window(req: Any) -> Window:
    return resolve_window(checks.request_time(req, "start_time"), checks.request_time(req, "end_time"),
                          datetime.now(UTC))


def _method(agg: Aggregates) -> query_pb2.PercentileMethod.ValueType:
    if not agg.groups:
        return query_pb2.PERCENTILE_METHOD_UNSPECIFIED
    return _EXACT if agg.exact else _ESTIMATED


def _order(order_by: str) -> tuple[str, bool]:
    """`cost`, `-cost`, `cost desc`, `group asc` -> (column, descending)."""
    text = order_by.strip() or "request_count"
    desc: bool | None = None
    if text.startswith("-"):
        text, desc = text[1:], True
    parts = text.split()
    if len(parts) == 2 and parts[1].lower() in ("asc", "desc"):
        text, desc = parts[0], parts[1].lower() == "desc"
    if text not in metrics.BREAKDOWN_COLUMNS:
        raise InvalidArgument(f"order_by: unknown column {checks.shown(text)}",
                              [FieldViolation("order_by", f"one of {', '.join(metrics.BREAKDOWN_COLUMNS)}")])
    return text, (text != "group") if desc is None else desc


def _counted(agg: Aggregates) -> dict[str, Any]:
    """The response's `counted_from` when retention had cut the raw rows the answer needed."""
    return {} if agg.counted_from is None else {"counted_from": ts(agg.counted_from)}


def _rank_by(metric: int) -> tuple[str, Callable[[dict[Any, Stats]], list[Any]]]:
    """The series metric groups are ranked by (default: requests, the busiest groups get their own
    line), and the ranking: largest total over the window first, ties by name."""
    metric = checks.enum(metric, "rank_by", query_pb2.Metric) or query_pb2.METRIC_REQUESTS
    name = query_pb2.Metric.Name(metric).removeprefix("METRIC_")  # type: ignore[arg-type]
    if name not in metrics.RANKABLE:
        allowed = ", ".join(f"METRIC_{n}" for n in sorted(metrics.RANKABLE))
        raise InvalidArgument(f"rank_by: {name} does not add up over a window; one of {allowed}",
                              [FieldViolation("rank_by", f"one of {allowed}")])
    value = metrics.SERIES[name]
    whole = metrics.Bucket(timedelta(0), 0)  # additive metrics read neither

    def order(totals: dict[Any, Stats]) -> list[Any]:
        return sorted(totals, key=lambda g: (-(value(totals[g], whole) or 0), str(g)))

    return name, order


def _breakdown_rows(totals: dict[Any, Stats], minutes: float, column: str,
                    desc: bool) -> list[dict[str, Any]]:
    rows = [metrics.breakdown_row(g, s, minutes) for g, s in totals.items()]
    rows.sort(key=lambda r: r["group"])
    rows.sort(key=lambda r: r[column], reverse=desc)
    return rows


def _series_percentiles(names: list[str]) -> dict[str, tuple[float, ...]]:
    """The percentiles the requested metrics need (none for counts, sums and averages)."""
    return {p: tuple(sorted({int(n.removeprefix(tag)) / 100 for n in names if n.startswith(tag)}))
            for p, tag in (("lat", "LATENCY_P"), ("ttft", "TTFT_P"))}


def _series_response(wanted: list[Any], names: list[str], granularity: str, window: Window,
                     calendar: Calendar, agg: Aggregates, grouped: bool) -> query_pb2.GetTimeSeriesResponse:
    """The series of every metric and group, a point per bucket (0 and not `present` where a bucket
    has no rows)."""
    groups, stats = (agg.shown if grouped else [""]), agg.groups
    buckets = calendar.starts(window)
    stamps = [ts(b) for b in buckets]  # one Timestamp per bucket, shared by every series
    # rates divide by the time a bucket has inside the window (the first and last are cut);
    # shares by the bucket's requests of every group together
    totals: dict[datetime | None, int] = defaultdict(int)
    for (_, b), s in stats.items():
        totals[b] += metrics.requests(s)
    contexts = [metrics.Bucket(window.overlap(b, calendar.end(b)), totals[b]) for b in buckets]
    empty = Stats()  # read only: a bucket without rows
    response = query_pb2.GetTimeSeriesResponse(granularity=granularity, percentile_method=_method(agg),
                                               **_counted(agg))
    for metric, metric_name in zip(wanted, names, strict=True):
        fn = metrics.SERIES[metric_name]
        for g in groups:
            add = response.series.add(metric=metric, group=g).points.add  # in place: no copies
            for b, stamp, bucket in zip(buckets, stamps, contexts, strict=True):
                value = fn(stats.get((g, b), empty), bucket)
                add(time=stamp, value=value or 0.0, present=value is not None)
    return response


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """The gRPC face of the query domain."""

    def __init__(self, pool: asyncpg.Pool, aggregator: Aggregator, hub: TailHub) -> None:
        self._pool = pool
        self._agg = aggregator
        self._log = RequestLog(pool)
        self._hub = hub

    async def GetSummary(self, request: query_pb2.GetSummaryRequest,
                         context: grpc.aio.ServicerContext) -> query_pb2.GetSummaryResponse:
        """The summary cards."""
        window, filt = _window(request), _filter(request.filter)
        agg = await self._agg.run(window, filt, None, None)
        stats = agg.groups.get(("", None), Stats())
        unpriced = await unpriced_counts(self._pool, window, filt, None)
        return query_pb2.GetSummaryResponse(summary=query_pb2.Summary(
            **metrics.summary(stats), percentile_method=_method(agg), unpriced_count=unpriced.get("", 0)),
            **_counted(agg))

    async def ListRequests(self, request: query_pb2.ListRequestsRequest,
                           context: grpc.aio.ServicerContext) -> query_pb2.ListRequestsResponse:
        """One page of the request log."""
        given = request.HasField("start_time") or request.HasField("end_time")
        page = await self._log.page(_window(request), _filter(request.filter), request.page_size,
                                    request.page_token, given)
        return query_pb2.ListRequestsResponse(requests=[request_row(r) for r in page.rows],
                                              next_page_token=page.next_token)

    async def GetRequest(self, request: query_pb2.GetRequestRequest,
                         context: grpc.aio.ServicerContext) -> query_pb2.GetRequestResponse:
        """One request in full."""
        row = await self._log.get(checks.text(request.request_id, "request_id", checks.MAX_ID_LENGTH),
                                  checks.request_time(request, "start_time"))
        team = team_scope()
        if team is not None and row["team"] != team:  # as if absent: ids of other teams stay unknown
            raise NotFound(f"request {checks.shown(request.request_id)} not found")
        return query_pb2.GetRequestResponse(
            record=usage_record(row), latency_ms=row["latency_us"] / 1000,
            itl_ms=(row["itl_us"] or 0) / 1000, tpot_ms=(row["tpot_us"] or 0) / 1000,
            ingest_time=ts(row["ingested_at"]), cost_source=row["cost_source"])

    async def GetTimeSeries(self, request: query_pb2.GetTimeSeriesRequest,
                            context: grpc.aio.ServicerContext) -> query_pb2.GetTimeSeriesResponse:
        """Metrics per bucket, per group."""
        if not request.metrics or query_pb2.METRIC_UNSPECIFIED in request.metrics:
            raise InvalidArgument("metrics: at least one metric is required",
                                  [FieldViolation("metrics", "at least one, not METRIC_UNSPECIFIED")])
        if len(request.metrics) > checks.MAX_METRICS:
            raise checks.bad("metrics", f"more than {checks.MAX_METRICS} metrics",
                             f"at most {checks.MAX_METRICS}")
        for m in request.metrics:
            checks.enum(m, "metrics", query_pb2.Metric, allow_unspecified=False)
        checks.top_n(request.top_n)
        window = _window(request)
        name, width = parse_granularity(request.granularity, window)
        group = parse_group(request.group_by)
        top_n = request.top_n if request.top_n > 0 else 10
        names = [query_pb2.Metric.Name(m).removeprefix("METRIC_") for m in request.metrics]
        rank_name, rank = _rank_by(request.rank_by)
        top = Top(top_n, rank, fold=True) if group else None
        measures = [c for n in (*names, rank_name) for c in metrics.SERIES_MEASURES[n]]
        calendar = Calendar.of(width, parse_time_zone(request.time_zone))
        checks.series_points(len(request.metrics), top_n + 1 if group else 1, calendar.count(window))
        agg = await self._agg.run(window, _filter(request.filter), group, width, top=top,
                                  percentiles=_series_percentiles(names), measures=measures,
                                  days=calendar.days)
        # up to MAX_SERIES_POINTS points: made on a worker thread, so the event loop (health checks,
        # other callers) keeps its turns meanwhile
        return await asyncio.to_thread(_series_response, list(request.metrics), names, name, window,
                                       calendar, agg, group is not None)

    async def GetBreakdown(self, request: query_pb2.GetBreakdownRequest,
                           context: grpc.aio.ServicerContext) -> query_pb2.GetBreakdownResponse:
        """Metrics per group, sorted, top N."""
        window = _window(request)
        column, desc = _order(request.order_by)
        checks.top_n(request.top_n)
        minutes = window.minutes

        def order(totals: dict[Any, Stats]) -> list[Any]:
            return [r["group"] for r in _breakdown_rows(totals, minutes, column, desc)]

        # sorted by a percentile, every group needs its histograms; otherwise only the top N
        top = None if column in metrics.PERCENTILE_COLUMNS else Top(request.top_n, order)
        filt, group = _filter(request.filter), parse_group(request.group_by or "model")
        agg = await self._agg.run(window, filt, group, None, top=top, measures=metrics.BREAKDOWN_MEASURES)
        totals = {g: s for (g, _), s in agg.groups.items()}
        if top is None:
            rows = _breakdown_rows(totals, minutes, column, desc)
        else:  # `shown` is already ranked by `order`, on the same sums
            rows = [metrics.breakdown_row(g, totals[g], minutes) for g in agg.shown]
        cut = rows[: request.top_n] if request.top_n else rows
        unpriced = await unpriced_counts(self._pool, window, filt, group)
        return query_pb2.GetBreakdownResponse(
            rows=[query_pb2.BreakdownRow(**r, unpriced_count=unpriced.get(r["group"], 0)) for r in cut],
            omitted_groups=len(totals) - len(cut),
            percentile_method=_method(agg), **_counted(agg))

    async def ExportRequests(self, request: query_pb2.ExportRequestsRequest,
                             context: grpc.aio.ServicerContext,
                             ) -> AsyncIterator[query_pb2.ExportRequestsResponse]:
        """The filtered log as CSV or NDJSON chunks."""
        checks.enum(request.format, "format", query_pb2.ExportFormat)
        ndjson = request.format == query_pb2.EXPORT_FORMAT_NDJSON
        async for data, rows in export_requests(self._pool, _window(request),
                                                _filter(request.filter), ndjson):
            yield query_pb2.ExportRequestsResponse(data=data, rows_written=rows)

    async def ExportAggregates(self, request: query_pb2.ExportAggregatesRequest,
                               context: grpc.aio.ServicerContext,
                               ) -> AsyncIterator[query_pb2.ExportAggregatesResponse]:
        """Grouped metrics as CSV chunks."""
        window = _window(request)
        if len(request.group_by) > checks.MAX_GROUP_BY:
            raise checks.bad("group_by", f"more than {checks.MAX_GROUP_BY} grouping columns",
                             f"at most {checks.MAX_GROUP_BY}")
        days = parse_time_zone(request.time_zone)
        width = parse_granularity(request.granularity, window)[1] if request.granularity else None
        calendar = Calendar.of(width, days) if width is not None else None
        groups = [g for g in (parse_group(name) for name in request.group_by) if g is not None]
        async for data, rows in export_aggregates(self._agg, window, _filter(request.filter),
                                                  groups, calendar):
            yield query_pb2.ExportAggregatesResponse(data=data, rows_written=rows)

    async def TailRequests(self, request: query_pb2.TailRequestsRequest,
                           context: grpc.aio.ServicerContext,
                           ) -> AsyncIterator[query_pb2.TailRequestsResponse]:
        """New matching requests as they are stored; headers go out once the watch is live."""
        subscription = await self._hub.subscribe(_filter(request.filter))
        try:
            await context.send_initial_metadata((("llmmeter-tail", "live"),))
            async for row in subscription:
                yield query_pb2.TailRequestsResponse(request=request_row(row))
        finally:
            subscription.close()
