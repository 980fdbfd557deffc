"""What each page shows, fetched with the page's calls made at once; no HTTP here, no SQL anywhere.

Each function returns plain data for a template, with numbers left as numbers (the
templates format them with units) and chart points as lists a chart can draw as they are.
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf import json_format

from llmmeter.v1 import alerts_pb2, query_pb2
from llmmeter_console.backend import Backend
from llmmeter_console.window import View

PAGE_SIZE = 50
M = query_pb2

#: The charts of the metrics page: (id, title, unit, metrics drawn per group, stacked).
METRIC_CHARTS: tuple[tuple[str, str, str, tuple[int, ...], bool], ...] = (
    ("rps", "Requests per second", "req/s", (M.METRIC_REQUESTS_PER_SECOND,), False),
    ("failure_rate", "Failure rate", "%", (M.METRIC_FAILURE_RATE,), False),
    ("latency", "Latency P50 / P75 / P90 / P99", "ms",
     (M.METRIC_LATENCY_P50, M.METRIC_LATENCY_P75, M.METRIC_LATENCY_P90, M.METRIC_LATENCY_P99), False),
    ("ttft", "Time to first token (avg)", "ms", (M.METRIC_TTFT_AVG,), False),
    ("itl", "Inter-token latency (avg)", "ms", (M.METRIC_ITL_AVG,), False),
    ("tpot", "Time per output token (avg)", "ms", (M.METRIC_TPOT_AVG,), False),
    ("cost", "Cost", "$", (M.METRIC_COST,), True),
    ("input_tokens", "Input tokens", "tokens", (M.METRIC_INPUT_TOKENS,), True),
    ("output_tokens", "Output tokens", "tokens", (M.METRIC_OUTPUT_TOKENS,), True),
)
GROUPS = ("model", "model_alias", "user", "account", "team")


def granularity(view: View) -> str:
    """About 30 to 200 points whatever the window."""
    hours = view.hours
    if hours <= 2:
        return "1m"
    if hours <= 12:
        return "5m"
    if hours <= 48:
        return "15m"
    return "1h" if hours <= 24 * 8 else "6h" if hours <= 24 * 40 else "1d"


def _name(metric: int) -> str:
    return M.Metric.Name(metric).removeprefix("METRIC_").lower()  # type: ignore[arg-type]


def series_charts(response: query_pb2.GetTimeSeriesResponse,
                  charts: tuple[tuple[str, str, str, tuple[int, ...], bool], ...],
                  grouped: bool = True) -> list[dict[str, Any]]:
    """Chart.js-ready data: per chart, its labels (bucket starts) and one dataset per (metric, group);
    in a stacked chart a group with nothing to stack is left out."""
    by_metric: dict[int, list[query_pb2.Series]] = {}
    for s in response.series:
        by_metric.setdefault(s.metric, []).append(s)
    out = []
    for chart_id, title, unit, metrics, stacked in charts:
        labels: list[str] = []
        datasets = []
        for metric in metrics:
            for s in by_metric.get(metric, []):
                if not labels:
                    labels = [p.time.ToJsonString() for p in s.points]
                scale = 100.0 if unit == "%" else 1.0
                label = (s.group or "(empty)") if grouped else "all"
                if len(metrics) > 1:
                    label = f"{_name(metric).split('_')[-1]} {label}".strip()
                values = [p.value * scale if p.present else None for p in s.points]
                if stacked and not any(values):
                    continue
                datasets.append({"label": label, "data": values})
        out.append({"id": chart_id, "title": title, "unit": unit, "stacked": stacked, "labels": labels,
                    "datasets": datasets})
    return out


async def usage(b: Backend, view: View, page_token: str) -> dict[str, Any]:
    """The usage tab: summary cards and one page of the request log."""
    summary, page = await asyncio.gather(
        b.query.get_summary(M.GetSummaryRequest(**view.window())),  # type: ignore[arg-type]
        b.query.list_requests(M.ListRequestsRequest(page_size=PAGE_SIZE, page_token=page_token,
                                                    **view.window())))  # type: ignore[arg-type]
    return {"summary": summary.summary, "rows": list(page.requests), "next_token": page.next_page_token}


async def logs(b: Backend, view: View, page_token: str) -> dict[str, Any]:
    """The request log alone."""
    page = await b.query.list_requests(M.ListRequestsRequest(
        page_size=PAGE_SIZE, page_token=page_token, **view.window()))  # type: ignore[arg-type]
    return {"rows": list(page.requests), "next_token": page.next_page_token}


async def metrics(b: Backend, view: View) -> dict[str, Any]:
    """Model metrics: counters, every chart per group, failures stacked by error type."""
    grain = granularity(view)
    wanted: list[Any] = [m for _, _, _, ms, _ in METRIC_CHARTS for m in ms]
    summary, grouped, failures = await asyncio.gather(
        b.query.get_summary(M.GetSummaryRequest(**view.window())),  # type: ignore[arg-type]
        b.query.get_time_series(M.GetTimeSeriesRequest(
            metrics=wanted, granularity=grain, group_by=view.group, top_n=5,
            **view.window())),  # type: ignore[arg-type]
        b.query.get_time_series(M.GetTimeSeriesRequest(
            metrics=[M.METRIC_FAILURES], granularity=grain, group_by="error_type", top_n=5,
            **view.window())))  # type: ignore[arg-type]
    charts = series_charts(grouped, METRIC_CHARTS)
    charts.insert(2, series_charts(failures, (
        ("failures", "Failures by error type", "requests", (M.METRIC_FAILURES,), True),))[0])
    return {"summary": summary.summary, "charts": charts, "granularity": grain,
            "method": M.PercentileMethod.Name(grouped.percentile_method)}


async def analytics(b: Backend, view: View) -> dict[str, Any]:
    """Per-model table, cost by model and by user, cache read tokens over time."""
    by_model, by_user, cache = await asyncio.gather(
        b.query.get_breakdown(M.GetBreakdownRequest(group_by="model", order_by="-request_count",
                                                    **view.window())),  # type: ignore[arg-type]
        b.query.get_breakdown(M.GetBreakdownRequest(group_by="user", order_by="-cost", top_n=10,
                                                    **view.window())),  # type: ignore[arg-type]
        b.query.get_time_series(M.GetTimeSeriesRequest(
            metrics=[M.METRIC_CACHE_READ_TOKENS], granularity=granularity(view),
            **view.window())))  # type: ignore[arg-type]
    chart = series_charts(cache, (("cache_read", "Cache read tokens", "tokens",
                                   (M.METRIC_CACHE_READ_TOKENS,), True),), grouped=False)
    return {"models": list(by_model.rows), "users": list(by_user.rows), "charts": chart,
            "method": M.PercentileMethod.Name(by_model.percentile_method)}


async def alerts(b: Backend) -> dict[str, Any]:
    """Rules with their alerts' states, recent events, silences."""
    rules, states, events, silences = await asyncio.gather(
        b.alerts.call("ListRules", alerts_pb2.ListRulesRequest(page_size=1000)),
        b.alerts.call("ListAlerts", alerts_pb2.ListAlertsRequest(page_size=1000)),
        b.alerts.call("ListAlertEvents", alerts_pb2.ListAlertEventsRequest(page_size=50)),
        b.alerts.call("ListSilences", alerts_pb2.ListSilencesRequest(page_size=100)))
    return {"rules": list(rules.rules), "alerts": list(states.alerts), "events": list(events.events),
            "silences": list(silences.silences)}


async def request_detail(b: Backend, request_id: str) -> dict[str, Any]:
    """One request in full, as JSON for the drawer."""
    response = await b.query.get_request(M.GetRequestRequest(request_id=request_id))
    return json_format.MessageToDict(response, preserving_proto_field_name=True)


