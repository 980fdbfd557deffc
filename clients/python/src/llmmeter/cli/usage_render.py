"""The tables and charts `llmmeter usage` prints for people (`--format table`).

They round, abbreviate and leave columns out to fit a terminal, which is why
they are kept apart from the commands: JSON and CSV output is the response
as is, while these views may change with taste without touching the command
line contract.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any

from rich.table import Table

from llmmeter.cli.render import console, fmt_cost, fmt_int, fmt_ms, fmt_number, fmt_pct, sparkline
from llmmeter.cli.usage_metrics import ADDITIVE, metric_label
from llmmeter.timeparse import format_timestamp
from llmmeter.v1 import query_pb2

SERIES_CSV_HEADER = ("metric", "group", "time", "value", "present")
_CHART_MIN, _CHART_MAX = 20, 100
_METHODS = {
    query_pb2.PERCENTILE_METHOD_UNSPECIFIED: "no data",
    query_pb2.PERCENTILE_METHOD_EXACT: "exact",
    query_pb2.PERCENTILE_METHOD_ESTIMATED: "estimated (within 0.5%)",
}


def summary_table(s: query_pb2.Summary, span: str, filt: str) -> None:
    """Prints the summary cards of a window as a grid, with the window and filter above it."""
    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column(style="dim")
    rows: list[tuple[str, str, str]] = [
        ("requests", fmt_int(s.request_count), ""),
        ("successes", fmt_int(s.success_count), ""),
        ("errors", fmt_int(s.error_count), ""),
        ("success rate", fmt_pct(s.success_rate) if s.request_count else "-", ""),
        (
            "input tokens",
            fmt_int(s.input_tokens),
            f"cache read {fmt_int(s.cache_read_tokens)}, cache write {fmt_int(s.cache_write_tokens)}",
        ),
        ("output tokens", fmt_int(s.output_tokens), f"reasoning {fmt_int(s.reasoning_tokens)}"),
        ("total tokens", fmt_int(s.total_tokens), ""),
        ("cost", f"${s.cost_exact or s.cost}",
         f"USD; unpriced {fmt_int(s.unpriced_count)} (no cost sent, no known price)" if s.unpriced_count
         else "USD"),
        (
            ("latency", fmt_ms(s.latency_avg_ms), f"avg; p95 {fmt_ms(s.latency_p95_ms)}")
            if s.request_count
            else ("latency", "-", "no requests")
        ),
        (
            ("time to first token", fmt_ms(s.ttft_avg_ms), f"avg over streamed; p95 {fmt_ms(s.ttft_p95_ms)}")
            if s.ttft_count
            else ("time to first token", "-", "no streamed requests")
        ),
    ]
    media = [
        ("images", fmt_int(s.images)) if s.images else None,
        ("audio", f"{s.audio_seconds:,.1f} s") if s.audio_seconds else None,
        ("video", f"{s.video_seconds:,.1f} s") if s.video_seconds else None,
        ("characters", fmt_int(s.characters)) if s.characters else None,
    ]
    rows += [(name, value, "") for name, value in filter(None, media)]
    for row in rows:
        grid.add_row(*row)
    out.print(f"[dim]window[/] {span}" + (f"  [dim]filter[/] {filt}" if filt else ""), highlight=False)
    out.print(grid)
    out.print(f"[dim]percentiles: {_METHODS.get(s.percentile_method, '?')}[/]")


def series_rows(response: query_pb2.GetTimeSeriesResponse) -> Iterator[dict[str, Any]]:
    """One CSV row per point of every series, under :data:`SERIES_CSV_HEADER`."""
    return (
        {
            "metric": metric_label(s.metric),
            "group": s.group,
            "time": p.time.ToJsonString(),
            "value": p.value,
            "present": p.present,
        }
        for s in response.series
        for p in s.points
    )


def fmt_metric(metric: int, value: float) -> str:
    """A series value with its unit: `$0.91`, `850 ms`, `2.5%`, `1.2k tok`, `3.4 req/s`."""
    name = query_pb2.Metric.Name(metric).removeprefix("METRIC_")  # type: ignore[arg-type]
    if name == "COST":
        return fmt_cost(value)
    if name.startswith(("LATENCY_", "TTFT_", "ITL_", "TPOT_")):
        return fmt_ms(value)
    if name.endswith(("_RATE", "_SHARE")):
        return fmt_pct(value)
    if name == "REQUESTS_PER_SECOND":
        return f"{fmt_number(value)} req/s"
    if name == "TOKENS_PER_MINUTE":
        return f"{fmt_number(value)} tok/min"
    if name.endswith("_TOKENS"):
        return f"{fmt_number(value)} tok"
    if name.endswith("_SECONDS"):
        return f"{fmt_number(value)} s"
    return fmt_number(value)


def series_chart(response: query_pb2.GetTimeSeriesResponse, span: str, by: str) -> None:
    """Prints one sparkline per series with its min, avg, max, last value and (when additive) total."""
    out = console()
    points = len(response.series[0].points) if response.series else 0
    out.print(
        f"[dim]window[/] {span}  [dim]buckets[/] {points} x {response.granularity}"
        f"  [dim]percentiles[/] {_METHODS.get(response.percentile_method, '?')}",
        highlight=False,
    )
    if not response.series or not points:
        out.print("no data")
        return
    width = max(_CHART_MIN, min(_CHART_MAX, out.width - 70))
    table = Table(box=None, padding=(0, 1), pad_edge=False)
    table.add_column("metric", no_wrap=True)
    if by:
        table.add_column(by, no_wrap=True)
    table.add_column(
        f"{format_timestamp(response.series[0].points[0].time)} .. "
        f"{format_timestamp(response.series[0].points[-1].time)}",
        no_wrap=True,
        overflow="crop",
    )
    for name in ("min", "avg", "max", "last", "total"):
        table.add_column(name, justify="right", no_wrap=True)
    for series in response.series:
        values = [p.value if p.present else None for p in series.points]
        present = [v for v in values if v is not None]
        cells = [metric_label(series.metric), *([series.group or "(empty)"] if by else [])]
        cells.append(f"[cyan]{sparkline(values, width)}[/]")
        if present:
            unit = functools.partial(fmt_metric, series.metric)
            cells += [unit(v) for v in (min(present), sum(present) / len(present), max(present))]
            cells.append(unit(values[-1]) if values[-1] is not None else "-")
            cells.append(unit(sum(present)) if series.metric in ADDITIVE else "-")
        else:
            cells += ["-"] * 5
        table.add_row(*cells)
    out.print(table)


def breakdown_table(response: query_pb2.GetBreakdownResponse, span: str, by: str) -> None:
    """Prints the breakdown rows as a table, and how many groups `--top` left out."""
    out = console()
    out.print(f"[dim]window[/] {span}", highlight=False)
    if not response.rows:
        out.print("no requests")
        return
    columns = (
        (by, "left"),
        ("requests", "right"),
        ("failures", "right"),
        ("success", "right"),
        ("rpm", "right"),
        ("tpm", "right"),
        ("input tok", "right"),
        ("output tok", "right"),
        ("cost", "right"),
        ("lat avg", "right"),
        ("lat p50", "right"),
        ("lat p95", "right"),
        ("lat p99", "right"),
        ("ttft p95", "right"),
    )
    table = Table()
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != by)  # type: ignore[arg-type]
    for r in response.rows:
        table.add_row(
            r.group or "(empty)",
            fmt_int(r.request_count),
            fmt_int(r.failure_count),
            fmt_pct(r.success_rate),
            f"{r.rpm:,.2f}",
            f"{r.tpm:,.1f}",
            fmt_int(r.input_tokens),
            fmt_int(r.output_tokens),
            fmt_cost(r.cost) + (f" unpriced {fmt_int(r.unpriced_count)}" if r.unpriced_count else ""),
            fmt_ms(r.latency_avg_ms),
            fmt_ms(r.latency_p50_ms),
            fmt_ms(r.latency_p95_ms),
            fmt_ms(r.latency_p99_ms),
            fmt_ms(r.ttft_p95_ms) if r.ttft_count else "-",
        )
    out.print(table)
    if response.omitted_groups:
        out.print(f"... {response.omitted_groups:,} more groups not shown (--top 0 for all)")


def note_counted_from(response: Any) -> None:
    """Says on stderr (whatever the format) when retention cut the raw rows an answer needed, so a
    30-day report filtered on metadata is never silently a 14-day one."""
    if response.HasField("counted_from"):
        since = format_timestamp(response.counted_from)
        print(f"llmmeter: note: counted from {since} on: this filter or grouping needs raw rows, and "
              "retention has dropped the older ones", file=sys.stderr)
