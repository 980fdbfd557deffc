"""`llmmeter usage`: the numbers of a usage dashboard from the command line.

`summary` gives the cards of a window, `series` the metrics over time with a
terminal chart, `breakdown` a table per model, team, user or any dimension,
and `export` the grouped metrics as CSV for chargeback. Every command takes
the same window and filter flags and prints a table, JSON or CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from typing import Any

from rich.table import Table

from llmmeter.cli.queryargs import non_negative_int, set_window, window, window_flags
from llmmeter.cli.render import (
    CsvOut,
    add_format_argument,
    console,
    field_names,
    fmt_cost,
    fmt_int,
    fmt_ms,
    fmt_number,
    fmt_pct,
    human_bytes,
    message_row,
    output_file,
    print_json,
    rows_progress,
    sparkline,
    write_csv,
)
from llmmeter.client import QueryClient
from llmmeter.config import ClientConfig
from llmmeter.timeparse import format_timestamp
from llmmeter.v1 import query_pb2

_GROUP_EPILOG = """\
examples:
  llmmeter usage summary --since 7d
  llmmeter usage series --metric requests --metric latency_p95 --by model
  llmmeter usage breakdown --by team --sort cost
  llmmeter usage export --by team --by model --since 30d --output chargeback.csv
"""

_SUMMARY_EPILOG = """\
examples:
  llmmeter usage summary
  llmmeter usage summary --since 7d --filter 'team = "payments"'
  llmmeter usage summary --from 2025-06-01T00:00:00Z --to 2025-07-01T00:00:00Z --format json
"""

_SERIES_EPILOG = """\
examples:
  llmmeter usage series --since 6h
  llmmeter usage series --metric latency_p95 --metric ttft_p95 --granularity 5m --since 2h
  llmmeter usage series --metric cost --by team --top 5 --since 7d --granularity 1d
  llmmeter usage series --metric failures --by status_class --format csv

metrics: {metrics}
"""

_BREAKDOWN_EPILOG = """\
examples:
  llmmeter usage breakdown
  llmmeter usage breakdown --by team --sort cost --top 5 --since 30d
  llmmeter usage breakdown --by user --sort latency_p95_ms --filter 'model = "gpt-4o*"'
  llmmeter usage breakdown --by metadata.feature --sort -request_count --format csv
  llmmeter usage breakdown --by model --sort 'latency_p95_ms asc' --top 0

sort columns: {columns}
"""

_EXPORT_EPILOG = """\
examples:
  llmmeter usage export --by team --since 30d --output chargeback.csv
  llmmeter usage export --by team --by model --granularity 1d --from 2025-06-01 --to 2025-07-01 \\
      --output june.csv
  llmmeter usage export --by account --output - | head

The file is written as FILE.part and renamed when complete. Cost is exact.
"""

#: Short metric names of the command line that are not the enum's own lower-cased name.
_ALIASES = {
    "rps": "REQUESTS_PER_SECOND",
    "itl": "ITL_AVG",
    "tpot": "TPOT_AVG",
    "tpm": "TOKENS_PER_MINUTE",
}
_SHORT = {value: key for key, value in _ALIASES.items()}
_GRANULARITIES = ("auto", "1m", "5m", "15m", "1h", "6h", "1d")
_BREAKDOWN_TOPS = "5, 10, 25, 50 or 0 for all"
_CHART_MIN, _CHART_MAX = 20, 100
#: Metrics whose bucket values add up to a meaningful total.
_ADDITIVE = frozenset(
    query_pb2.Metric.Value(f"METRIC_{name}")
    for name in (
        "REQUESTS",
        "SUCCESSES",
        "FAILURES",
        "COST",
        "INPUT_TOKENS",
        "OUTPUT_TOKENS",
        "CACHE_READ_TOKENS",
        "CACHE_WRITE_TOKENS",
        "TOTAL_TOKENS",
    )
)
_DASH_WORD = re.compile(r"^-(\d+|\d*\.\d+|[a-z][a-z0-9_]*)$")


def metric_names() -> list[str]:
    """The metric names `--metric` accepts, in enum order."""
    names = []
    for name in query_pb2.Metric.DESCRIPTOR.values_by_name:
        if name != "METRIC_UNSPECIFIED":
            bare = name.removeprefix("METRIC_")
            names.append(_SHORT.get(bare, bare.lower()))
    return names


def parse_metric(text: str) -> int:
    """argparse type: `latency_p95`, `rps`, `METRIC_COST`, ... -> the Metric enum value."""
    bare = text.strip().upper().removeprefix("METRIC_")
    bare = _ALIASES.get(bare.lower(), bare)
    if bare == "UNSPECIFIED" or f"METRIC_{bare}" not in query_pb2.Metric.DESCRIPTOR.values_by_name:
        raise argparse.ArgumentTypeError(f"unknown metric {text!r}; one of {', '.join(metric_names())}")
    return query_pb2.Metric.Value(f"METRIC_{bare}")


def metric_label(metric: int) -> str:
    """The command-line name of a Metric value."""
    bare = query_pb2.Metric.Name(metric).removeprefix("METRIC_")  # type: ignore[arg-type]
    return _SHORT.get(bare, bare.lower())


def _order_by(text: str) -> str:
    """`cost`, `-cost`, `cost desc`, `cost:asc` -> the order_by the server takes."""
    column = text.strip()
    for sep in (":", " "):
        name, found, direction = column.partition(sep)
        if found and direction.strip().lower() in ("asc", "desc"):
            return f"{name.strip()} {direction.strip().lower()}"
    return column


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Adds the `usage` command group to the `llmmeter` parser."""
    usage = subparsers.add_parser(
        "usage",
        help="usage numbers: summary cards, time series, breakdowns, chargeback export",
        description="Usage numbers from the query service: summary cards, time series, breakdowns, exports.",
        epilog=_GROUP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = usage.add_subparsers(dest="usage_command", metavar="COMMAND", required=True)
    common = [*parents, window_flags()]

    def add(name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=common,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    summary = add("summary", "the summary cards of a window", _SUMMARY_EPILOG)
    add_format_argument(summary)
    summary.set_defaults(handler=run_summary)

    series = add(
        "series",
        "metrics over time, optionally per group, with a terminal chart",
        _SERIES_EPILOG.format(metrics=", ".join(metric_names())),
    )
    series.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        type=parse_metric,
        metavar="NAME",
        help="a metric (repeatable; default: requests), e.g. requests, rps, failure_rate, latency_p95, "
        "ttft_p50, cost, total_tokens, tpm",
    )
    series.add_argument(
        "--granularity",
        choices=_GRANULARITIES,
        default="auto",
        help="bucket width (default: auto, about 60-200 points)",
    )
    series.add_argument(
        "--by",
        default="",
        metavar="DIMENSION",
        help="one series per group: a dimension (model, team, user, ...), status_class or metadata.KEY",
    )
    series.add_argument(
        "--top",
        type=non_negative_int,
        default=0,
        metavar="N",
        help='with --by: keep the N groups with most requests, fold the rest into "other" (default: 10)',
    )
    add_format_argument(series)
    series.set_defaults(handler=run_series)

    breakdown = add(
        "breakdown",
        "a table of metrics per model, team, user or other group",
        _BREAKDOWN_EPILOG.format(columns=", ".join(field_names(query_pb2.BreakdownRow))),
    )
    breakdown.add_argument(
        "--by",
        default="model",
        metavar="DIMENSION",
        help="grouping: a dimension (model, team, user, ...), status_class or metadata.KEY (default: model)",
    )
    breakdown.add_argument(
        "--sort",
        default="request_count",
        metavar="COLUMN",
        help="sort column, e.g. cost, request_count, latency_p95_ms, group; numbers sort descending, "
        "group ascending, unless 'COLUMN asc' or 'COLUMN desc' (or -COLUMN) says otherwise "
        "(default: request_count)",
    )
    breakdown.add_argument(
        "--top",
        type=non_negative_int,
        default=10,
        metavar="N",
        help=f"keep the first N rows: {_BREAKDOWN_TOPS} (default: 10)",
    )
    add_format_argument(breakdown)
    # `--sort -cost` must read "-cost" as the value, not as an unknown flag: argparse takes
    # dash-words for values only when they look like negative numbers, so say that they do.
    breakdown._negative_number_matcher = _DASH_WORD
    breakdown.set_defaults(handler=run_breakdown)

    export = add("export", "grouped metrics as a CSV file, for chargeback", _EXPORT_EPILOG)
    export.add_argument(
        "--by",
        dest="by",
        action="append",
        metavar="DIMENSION",
        help="grouping column (repeatable; default: team): a dimension or metadata.KEY",
    )
    export.add_argument(
        "--granularity",
        choices=_GRANULARITIES[1:],
        default=None,
        help="one row per group and time bucket (default: one row per group over the window)",
    )
    export.add_argument(
        "--output", "-o", required=True, metavar="FILE", help="file to write, or - for stdout"
    )
    export.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_format_argument(export)
    export.set_defaults(handler=run_export)


# summary


async def run_summary(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints the summary cards."""
    span = window(args)
    request = set_window(query_pb2.GetSummaryRequest(filter=args.filter), span)
    async with QueryClient(config) as client:
        response = await client.get_summary(request)
    if args.format == "json":
        print_json(response)
    elif args.format == "csv":
        write_csv([message_row(response.summary)])
    else:
        _summary_table(response.summary, span.describe(), args.filter)
    return 0


_METHODS = {
    query_pb2.PERCENTILE_METHOD_UNSPECIFIED: "no data",
    query_pb2.PERCENTILE_METHOD_EXACT: "exact",
    query_pb2.PERCENTILE_METHOD_ESTIMATED: "estimated (within 0.5%)",
}


def _summary_table(s: query_pb2.Summary, span: str, filt: str) -> None:
    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column(style="dim")
    rows: list[tuple[str, str, str]] = [
        ("requests", fmt_int(s.request_count), ""),
        ("successes", fmt_int(s.success_count), ""),
        ("errors", fmt_int(s.error_count), ""),
        ("success rate", fmt_pct(s.success_rate), ""),
        (
            "input tokens",
            fmt_int(s.input_tokens),
            f"cache read {fmt_int(s.cache_read_tokens)}, cache write {fmt_int(s.cache_write_tokens)}",
        ),
        ("output tokens", fmt_int(s.output_tokens), f"reasoning {fmt_int(s.reasoning_tokens)}"),
        ("total tokens", fmt_int(s.total_tokens), ""),
        ("cost", f"${s.cost_exact or s.cost}", "USD"),
        ("latency", fmt_ms(s.latency_avg_ms), f"avg; p95 {fmt_ms(s.latency_p95_ms)}"),
        ("time to first token", fmt_ms(s.ttft_avg_ms), f"avg over streamed; p95 {fmt_ms(s.ttft_p95_ms)}"),
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


# series


async def run_series(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints metrics over time, as a chart, JSON or CSV."""
    span = window(args)
    request = set_window(
        query_pb2.GetTimeSeriesRequest(
            filter=args.filter,
            metrics=args.metrics or [query_pb2.METRIC_REQUESTS],
            granularity=args.granularity,
            group_by=args.by,
            top_n=args.top,
        ),
        span,
    )
    async with QueryClient(config) as client:
        response = await client.get_time_series(request)
    if args.format == "json":
        print_json(response)
    elif args.format == "csv":
        write_csv(
            (
                {
                    "metric": metric_label(s.metric),
                    "group": s.group,
                    "time": p.time.ToJsonString(),
                    "value": p.value,
                    "present": p.present,
                }
                for s in response.series
                for p in s.points
            ),
            header=("metric", "group", "time", "value", "present"),
        )
    else:
        _series_chart(response, span.describe(), args.by)
    return 0


def _series_chart(response: query_pb2.GetTimeSeriesResponse, span: str, by: str) -> None:
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
            cells += [fmt_number(v) for v in (min(present), sum(present) / len(present), max(present))]
            cells.append(fmt_number(values[-1]) if values[-1] is not None else "-")
            cells.append(fmt_number(sum(present)) if series.metric in _ADDITIVE else "-")
        else:
            cells += ["-"] * 5
        table.add_row(*cells)
    out.print(table)


# breakdown


async def run_breakdown(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints metrics per group."""
    span = window(args)
    request = set_window(
        query_pb2.GetBreakdownRequest(
            filter=args.filter, group_by=args.by, order_by=_order_by(args.sort), top_n=args.top
        ),
        span,
    )
    async with QueryClient(config) as client:
        response = await client.get_breakdown(request)
    if args.format == "json":
        print_json(response)
    elif args.format == "csv":
        write_csv((message_row(r) for r in response.rows), header=field_names(query_pb2.BreakdownRow))
    else:
        _breakdown_table(response, span.describe(), args.by)
    return 0


def _breakdown_table(response: query_pb2.GetBreakdownResponse, span: str, by: str) -> None:
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
            fmt_int(r.input_tokens),
            fmt_int(r.output_tokens),
            fmt_cost(r.cost),
            fmt_ms(r.latency_avg_ms),
            fmt_ms(r.latency_p50_ms),
            fmt_ms(r.latency_p95_ms),
            fmt_ms(r.latency_p99_ms),
            fmt_ms(r.ttft_p95_ms),
        )
    out.print(table)
    if response.omitted_groups:
        out.print(f"... {response.omitted_groups:,} more groups not shown (--top 0 for all)")


# export


async def run_export(args: argparse.Namespace, config: ClientConfig) -> int:
    """Writes the grouped-metrics CSV to a file, streaming."""
    request = set_window(
        query_pb2.ExportAggregatesRequest(
            filter=args.filter, group_by=args.by or ["team"], granularity=args.granularity or ""
        ),
        window(args),
    )
    async with QueryClient(config) as client:
        report = await write_export(
            client.export_aggregates(request), args.output, quiet=args.quiet, description="exporting usage"
        )
    print_report(report, args.format, to_stderr=args.output == "-")
    return 0


async def write_export(chunks: Any, output: str, *, quiet: bool, description: str) -> dict[str, Any]:
    """Writes the `data` of each streamed chunk to `output` as it arrives; returns the report."""
    rows = size = 0
    with output_file(output) as stream, rows_progress(not quiet, description) as progress:
        async with contextlib.aclosing(chunks) as messages:
            async for message in messages:
                stream.write(message.data)
                rows, size = int(message.rows_written), size + len(message.data)
                if progress is not None:
                    progress.update(progress.task_ids[0], completed=rows, size=human_bytes(size))
    return {"output": output, "rows_written": rows, "bytes": size}


def print_report(report: dict[str, Any], output_format: str, *, to_stderr: bool) -> None:
    """Prints what an export wrote: a line, a JSON object or a CSV row."""
    stream = sys.stderr if to_stderr else sys.stdout
    if output_format == "json":
        stream.write(json.dumps(report) + "\n")
    elif output_format == "csv":
        out = CsvOut(stream)
        out.row(report)
    else:
        where = "stdout" if report["output"] == "-" else report["output"]
        rows = report["rows_written"]
        noun = "row" if rows == 1 else "rows"
        stream.write(f"wrote {rows:,} {noun} ({human_bytes(report['bytes'])}) to {where}\n")
    stream.flush()
