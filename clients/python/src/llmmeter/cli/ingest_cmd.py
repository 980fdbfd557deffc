"""`llmmeter ingest`: send usage records from a JSON Lines file (or stdin) to the ingest service.

This is the way to backfill history, replay a gateway's log, or feed records
from any tool that can write JSON: the file is streamed in batches, every
bad line is reported by its number without stopping the others, and the exit
status tells a script whether everything arrived.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from llmmeter.cli.common import (
    IngestSummary,
    add_output_arguments,
    batches_in_thread,
    positive_int,
    progress_bar,
    send_batches,
)
from llmmeter.cli.jsonl import JsonlReader, count_lines
from llmmeter.cli.subcommands import SubParsers, add_command
from llmmeter.config import ClientConfig
from llmmeter.v1 import usage_pb2

_EPILOG = """\
examples:
  llmmeter ingest records.jsonl
  gunzip -c gateway-2025-06.jsonl.gz | llmmeter ingest - --batch-size 5000 --quiet
  llmmeter --ingest-addr ingest.internal:50051 ingest records.jsonl --format json

Each line is one llmmeter.v1.UsageRecord in protobuf's JSON mapping, with
snake_case or lowerCamelCase names, e.g.
  {"request_id": "chatcmpl-1", "start_time": "2025-06-01T12:00:00Z",
   "end_time": "2025-06-01T12:00:01.2Z", "status_code": 200, "model": "gpt-4o",
   "input_tokens": 812, "output_tokens": 95, "cost": 0.003}
Blank lines are skipped. Exit status: 0 when every record was stored or was
already stored, 1 when any line was rejected or the upload failed.
"""


def register(subparsers: SubParsers, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `ingest` command to the `llmmeter` parser."""
    parser = add_command(
        subparsers,
        "ingest",
        parents=parents,
        help_="send usage records from a JSON Lines file",
        description="Send usage records from a JSON Lines file (or stdin) to the ingest service.",
        epilog=_EPILOG,
    )
    parser.add_argument("file", metavar="FILE", help="JSON Lines file to read, or - for standard input")
    parser.add_argument(
        "--batch-size",
        metavar="N",
        type=positive_int,
        default=1000,
        help="records per stream message (default: 1000; the server accepts at most 10000 by default)",
    )
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


@contextmanager
def _open_input(name: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """Opens FILE (or stdin for `-`) in binary mode and yields it with its line count when cheap to know."""
    if name == "-":
        yield sys.stdin.buffer, None
        return
    with open(name, "rb") as stream:
        total = count_lines(stream) if os.path.isfile(name) else None
        yield stream, total


async def run(args: argparse.Namespace, config: ClientConfig) -> int:
    """Streams the records of FILE to the ingest service and prints what became of them."""
    with _open_input(args.file) as (stream, total_lines):
        reader = JsonlReader(stream, args.batch_size)
        with progress_bar(not args.quiet, total_lines, f"ingesting {args.file}") as advance:
            response = await send_batches(config, batches_in_thread(_skipping(reader, advance)), advance)
    summary = IngestSummary.build(response, reader.line_of, reader.errors)
    summary.print(args.format)
    return summary.exit_code


def _skipping(
    reader: JsonlReader, advance: Callable[[int], None]
) -> Callable[[], list[usage_pb2.UsageRecord]]:
    """Wraps `reader.read_batch` so the lines that yield no record (blank, bad) move the progress bar too."""

    def read_batch() -> list[usage_pb2.UsageRecord]:
        before = reader.lines_read
        batch = reader.read_batch()
        advance(reader.lines_read - before - len(batch))
        return batch

    return read_batch
