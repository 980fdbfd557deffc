"""`llmmeter usage`: the numbers of a usage dashboard from the command line.

`summary` gives the cards of a window, `series` the metrics over time with a
terminal chart, `breakdown` a table per model, team, user or any dimension,
and `export` the grouped metrics as CSV for chargeback. Every command takes
the same window and filter flags and prints a table, JSON or CSV.
"""

from __future__ import annotations

import argparse
import re

from llmmeter.cli.exports import print_report, write_export
from llmmeter.cli.queryargs import non_negative_int, set_window, window, window_flags
from llmmeter.cli.render import add_format_argument, field_names, message_row, print_response
from llmmeter.cli.subcommands import SubParsers, add_command, add_group
from llmmeter.cli.usage_metrics import metric_label, metric_names, parse_metric
from llmmeter.cli.usage_render import (
    SERIES_CSV_HEADER,
    breakdown_table,
    note_counted_from,
    series_chart,
    series_rows,
    summary_table,
)
from llmmeter.client import QueryClient
from llmmeter.config import ClientConfig
from llmmeter.v1 import query_pb2

__all__ = [
    "metric_label",
    "metric_names",
    "parse_metric",
    "print_report",
    "register",
    "run_breakdown",
    "run_export",
    "run_series",
    "run_summary",
    "write_export",
]

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
  llmmeter usage series --metric cost --since 30d --granularity 1d --tz America/New_York
  llmmeter usage series --metric cost --by model --rank-by cost --top 5 --since 30d
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

_GRANULARITIES = ("auto", "1m", "5m", "15m", "1h", "6h", "1d")
_BREAKDOWN_TOPS = "5, 10, 25, 50 or 0 for all"
_DASH_WORD = re.compile(r"^-(\d+|\d*\.\d+|[a-z][a-z0-9_]*)$")


def _order_by(text: str) -> str:
    """`cost`, `-cost`, `cost desc`, `cost:asc` -> the order_by the server takes."""
    column = text.strip()
    for sep in (":", " "):
        name, found, direction = column.partition(sep)
        if found and direction.strip().lower() in ("asc", "desc"):
            return f"{name.strip()} {direction.strip().lower()}"
    return column


def register(subparsers: SubParsers, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `usage` command group to the `llmmeter` parser."""
    sub = add_group(
        subparsers,
        "usage",
        help_="usage numbers: summary cards, time series, breakdowns, chargeback export",
        description="Usage numbers from the query service: summary cards, time series, breakdowns, exports.",
        epilog=_GROUP_EPILOG,
    )
    common = [*parents, window_flags()]

    def add(name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        return add_command(sub, name, help_=help_, epilog=epilog, parents=common)

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
    add_time_zone_argument(series)
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
    series.add_argument(
        "--rank-by",
        type=parse_metric,
        default=query_pb2.METRIC_UNSPECIFIED,
        metavar="NAME",
        help="with --by: rank groups by this metric's total instead of requests: successes, failures, "
        "cost or a token count",
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
    add_time_zone_argument(export)
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
    note_counted_from(response)
    print_response(
        response,
        args.format,
        csv_rows=lambda: [message_row(response.summary)],
        table=lambda: summary_table(response.summary, span.describe(), args.filter),
    )
    return 0


# series


async def run_series(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints metrics over time, as a chart, JSON or CSV."""
    span = window(args)
    request = set_window(
        query_pb2.GetTimeSeriesRequest(
            filter=args.filter,
            metrics=args.metrics or [query_pb2.METRIC_REQUESTS],
            granularity=args.granularity,
            time_zone=args.tz,
            group_by=args.by,
            top_n=args.top,
            rank_by=args.rank_by,
        ),
        span,
    )
    async with QueryClient(config) as client:
        response = await client.get_time_series(request)
    note_counted_from(response)
    print_response(
        response,
        args.format,
        csv_rows=lambda: series_rows(response),
        csv_header=SERIES_CSV_HEADER,
        table=lambda: series_chart(response, span.describe(), args.by),
    )
    return 0


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
    note_counted_from(response)
    print_response(
        response,
        args.format,
        csv_rows=lambda: (message_row(r) for r in response.rows),
        csv_header=field_names(query_pb2.BreakdownRow),
        table=lambda: breakdown_table(response, span.describe(), args.by),
    )
    return 0


def add_time_zone_argument(parser: argparse.ArgumentParser) -> None:
    """`--tz`: whose days the day buckets are; an organisation's "per day" is rarely UTC's."""
    parser.add_argument(
        "--tz",
        default="",
        metavar="ZONE",
        help="IANA time zone whose local days the 1d buckets are, e.g. America/New_York (default: UTC)",
    )


# export


async def run_export(args: argparse.Namespace, config: ClientConfig) -> int:
    """Writes the grouped-metrics CSV to a file, streaming."""
    request = set_window(
        query_pb2.ExportAggregatesRequest(
            filter=args.filter,
            group_by=args.by or ["team"],
            granularity=args.granularity or "",
            time_zone=args.tz,
        ),
        window(args),
    )
    async with QueryClient(config) as client:
        report = await write_export(
            client.export_aggregates(request), args.output, quiet=args.quiet, description="exporting usage"
        )
    print_report(report, args.format, to_stderr=args.output == "-")
    return 0
