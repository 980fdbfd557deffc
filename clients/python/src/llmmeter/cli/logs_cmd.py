"""`llmmeter logs`: the request log from the command line.

`list` pages through the stored requests newest first, `show` prints one in
full (cost breakdown, metadata, payloads), `tail` follows new requests as
they are stored, and `export` streams the filtered log to a CSV or NDJSON
file without holding it in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from datetime import UTC, datetime

from llmmeter.cli.common import positive_int
from llmmeter.cli.exports import print_report, write_export
from llmmeter.cli.logs_render import (
    DEFAULT_COLUMNS,
    TABLE_COLUMNS,
    rows_table,
    show_request,
    tail_header,
    tail_row,
)
from llmmeter.cli.queryargs import (
    filter_flags,
    set_window,
    time_point,
    window,
    window_flags,
    window_is_fixed,
)
from llmmeter.cli.render import (
    CsvOut,
    add_format_argument,
    console,
    field_names,
    message_json,
    message_row,
    print_json,
    print_response,
    write_csv,
)
from llmmeter.cli.subcommands import SubParsers, add_command, add_group
from llmmeter.client import QueryClient
from llmmeter.config import ClientConfig
from llmmeter.errors import LlmmeterError
from llmmeter.timeparse import format_time, timestamp
from llmmeter.v1 import query_pb2

_GROUP_EPILOG = """\
examples:
  llmmeter logs list --since 1h --filter 'status_code >= 500'
  llmmeter logs show chatcmpl-123
  llmmeter logs tail --filter 'team = "payments"'
  llmmeter logs export --since 7d --output requests.csv
"""

_LIST_EPILOG = """\
examples:
  llmmeter logs list
  llmmeter logs list --since 1h --filter 'status_code >= 500' --page-size 100
  llmmeter logs list --filter 'model = "gpt-4o*" AND user = "alice"' --page-token TOKEN
  llmmeter logs list --since 7d --format csv > requests.csv

Rows come newest first. The last line gives the token of the next page: run
the same command again with --page-token added. The token carries the time
window of the first page, so relative window flags (--since 1h) are ignored
with it; absolute ones must name the same window, and --filter must be the same.
"""

_SHOW_EPILOG = """\
examples:
  llmmeter logs show chatcmpl-123
  llmmeter logs show chatcmpl-123 --start-time 2025-06-01T12:00:00.25Z --format json
"""

_TAIL_EPILOG = """\
examples:
  llmmeter logs tail
  llmmeter logs tail --filter 'status_code >= 500 OR error_type : "timeout"'
  llmmeter logs tail --format json --max 100 > sample.ndjson

Runs until Ctrl-C, or until --max rows were shown. With --format json each
row is one JSON object on its own line.
"""

_EXPORT_EPILOG = """\
examples:
  llmmeter logs export --since 7d --output requests.csv
  llmmeter logs export --from 2025-06-01 --to 2025-07-01 --filter 'team = "payments"' \\
      --export-format ndjson --output june.ndjson
  llmmeter logs export --since 1h --output - | wc -l

Rows are oldest first. The file is written as FILE.part and renamed when
complete; text cells a spreadsheet would run as a formula are prefixed with '.
"""

_ROW_FIELDS = field_names(query_pb2.RequestRow)


def _columns(text: str) -> tuple[str, ...]:
    """`--columns`: names of the table's columns, comma separated, or `all`."""
    if text.strip() == "all":
        return tuple(TABLE_COLUMNS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in TABLE_COLUMNS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown column {', '.join(unknown) or '(none)'}; choose from {', '.join(TABLE_COLUMNS)} or all")
    return names


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, got {value}")
    return value


def register(subparsers: SubParsers, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `logs` command group to the `llmmeter` parser."""
    sub = add_group(
        subparsers,
        "logs",
        help_="the request log: list, show, tail, export",
        description="The request log from the query service: list, show one, follow, export.",
        epilog=_GROUP_EPILOG,
    )

    def add(
        name: str, help_: str, epilog: str, extra: list[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser:
        return add_command(sub, name, help_=help_, epilog=epilog, parents=[*parents, *extra])

    list_ = add("list", "one page of the request log, newest first", _LIST_EPILOG, [window_flags()])
    list_.add_argument(
        "--page-size", type=_page_size, default=50, metavar="N", help="rows per page, 1..1000 (default: 50)"
    )
    list_.add_argument(
        "--page-token", default="", metavar="TOKEN", help="next_page_token printed by the previous page"
    )
    list_.add_argument(
        "--columns", type=_columns, default=DEFAULT_COLUMNS, metavar="A,B,...",
        help=f"table columns, or 'all' (default: {','.join(DEFAULT_COLUMNS)}; "
             f"available: {','.join(TABLE_COLUMNS)})")
    add_format_argument(list_)
    list_.set_defaults(handler=run_list)

    show = add("show", "one request in full: cost breakdown, metadata, payloads", _SHOW_EPILOG, [])
    show.add_argument("request_id", metavar="ID", help="the request id")
    show.add_argument(
        "--start-time",
        type=time_point,
        default=None,
        metavar="TIME",
        help="its start time, RFC 3339, when several requests share the id (default: the newest)",
    )
    add_format_argument(show)
    show.set_defaults(handler=run_show)

    tail = add("tail", "follow new requests as they are stored", _TAIL_EPILOG, [filter_flags()])
    tail.add_argument(
        "--max",
        dest="max_rows",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop after N rows (default: run until Ctrl-C)",
    )
    add_format_argument(tail)
    tail.set_defaults(handler=run_tail)

    export = add(
        "export", "the filtered request log as a CSV or NDJSON file", _EXPORT_EPILOG, [window_flags()]
    )
    export.add_argument(
        "--output", "-o", required=True, metavar="FILE", help="file to write, or - for stdout"
    )
    export.add_argument(
        "--export-format", choices=("csv", "ndjson"), default="csv", help="file format (default: csv)"
    )
    export.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    add_format_argument(export)
    export.set_defaults(handler=run_export)


# list


async def run_list(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints one page of the request log and the token of the next."""
    request = query_pb2.ListRequestsRequest(
        filter=args.filter, page_size=args.page_size, page_token=args.page_token
    )
    span = None
    if not args.page_token or window_is_fixed(args):
        # A token carries its window. A relative one (--since 1h) would have moved by the next page,
        # so it is left out and the token's applies; an absolute one is sent and must match.
        span = window(args)
        set_window(request, span)
    async with QueryClient(config) as client:
        response = await client.list_requests(request)
    if args.format == "json":
        print_json(response)
    elif args.format == "csv":
        write_csv((message_row(r) for r in response.requests), header=_ROW_FIELDS)
        if response.next_page_token:
            print(f"next_page_token: {response.next_page_token}", file=sys.stderr)
    else:
        out = console()
        if span is not None:
            out.print(f"[dim]window[/] {span.describe()}", highlight=False)
        if response.requests:
            out.print(rows_table(response.requests, args.columns))
        else:
            out.print("no requests")
        if response.next_page_token:
            out.print(f"next_page_token: {response.next_page_token}", highlight=False, soft_wrap=True)
    return 0


# show


async def run_show(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints one request in full."""
    request = query_pb2.GetRequestRequest(request_id=args.request_id)
    if args.start_time is not None:
        request.start_time.CopyFrom(timestamp(args.start_time.resolve(datetime.now(UTC))))
    async with QueryClient(config) as client:
        response = await client.get_request(request)
    print_response(
        response, args.format, csv_rows=lambda: [message_row(response)], table=lambda: show_request(response)
    )
    return 0


# tail


async def run_tail(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints new matching requests as they are stored, until Ctrl-C or --max rows.

    Ctrl-C is the normal way to stop, so it ends the command with status 0
    and a count on stderr (this handler is the task `asyncio.run` cancels on
    SIGINT).
    """
    request = query_pb2.TailRequestsRequest(filter=args.filter)
    shown = 0
    csv_out = CsvOut() if args.format == "csv" else None

    def live() -> None:
        what = f"matching {args.filter}" if args.filter else "of every kind"
        limit = f"; stopping after {args.max_rows:,}" if args.max_rows else "; Ctrl-C to stop"
        print(f"watching for new requests {what}{limit}", file=sys.stderr, flush=True)
        if args.format == "table":
            print(tail_header(), flush=True)

    try:
        async with (
            QueryClient(config) as client,
            contextlib.aclosing(client.tail_requests(request, on_live=live)) as stream,
        ):
            async for message in stream:
                if args.format == "json":
                    sys.stdout.write(message_json(message, indent=None) + "\n")
                elif csv_out is not None:
                    csv_out.row(message_row(message.request))
                else:
                    sys.stdout.write(tail_row(message.request) + "\n")
                sys.stdout.flush()
                shown += 1
                if args.max_rows and shown >= args.max_rows:
                    return 0
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            raise
        print(f"stopped after {shown:,} {_rows(shown)}", file=sys.stderr, flush=True)
        return 0
    # A live tail has no end of its own: the server shut down, or dropped this watcher for falling behind.
    raise LlmmeterError(
        f"TailRequests on the query service at {config.query_addr} ended the stream after {shown:,} "
        f"{_rows(shown)} (service stopping, or this client fell too far behind); run it again to resume"
    )


def _rows(n: int) -> str:
    return "row" if n == 1 else "rows"


# export


async def run_export(args: argparse.Namespace, config: ClientConfig) -> int:
    """Streams the filtered request log to a file."""
    export_format = (
        query_pb2.EXPORT_FORMAT_NDJSON if args.export_format == "ndjson" else query_pb2.EXPORT_FORMAT_CSV
    )
    span = window(args)
    request = set_window(query_pb2.ExportRequestsRequest(filter=args.filter, format=export_format), span)
    async with QueryClient(config) as client:
        report = await write_export(
            client.export_requests(request),
            args.output,
            quiet=args.quiet,
            description=f"exporting requests {format_time(span.start) if span.start else ''}".rstrip(),
        )
    print_report(report, args.format, to_stderr=args.output == "-")
    return 0
