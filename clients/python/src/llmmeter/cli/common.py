"""Pieces shared by the `llmmeter` commands: argument types, progress, sending and the ingest summary.

`ingest` and `demo` both push records through StreamRecords and must report
the outcome identically, and every future command group needs the same
argument checks and output formats; keeping them here avoids each command
growing its own slightly different copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from llmmeter.cli.jsonl import LineError
from llmmeter.client import IngestClient
from llmmeter.config import ClientConfig
from llmmeter.v1 import ingest_pb2, usage_pb2

T = TypeVar("T")
OutputFormat = Literal["table", "json"]
_TABLE_ROWS = 50


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--format` and `--quiet`, which every command that prints a report understands."""
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="report as a human-readable table or as one JSON object (default: table)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@contextmanager
def progress_bar(enabled: bool, total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """Shows a rich progress bar on stderr and yields the function that advances it.

    When disabled (not a terminal, or `--quiet`), the yielded function does
    nothing, so callers never branch on it.
    """
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda _n: None
        return
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *((TaskProgressColumn(), TimeRemainingColumn()) if total is not None else ()),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


async def batches_in_thread(read_batch: Callable[[], list[T]]) -> AsyncIterator[list[T]]:
    """Calls the blocking `read_batch` in a worker thread until it returns an empty list.

    Reading and parsing (or generating) records is CPU and I/O work that would
    otherwise stall the event loop that is sending the previous batches.
    """
    while batch := await asyncio.to_thread(read_batch):
        yield batch


async def send_batches(
    config: ClientConfig,
    batches: AsyncIterator[list[usage_pb2.UsageRecord]],
    on_sent: Callable[[int], None],
) -> ingest_pb2.StreamRecordsResponse:
    """Streams `batches` to the ingest service of `config` and returns the summed-up outcome."""
    async with IngestClient(config) as client:
        return await client.stream_records(batches, on_sent=on_sent)


@dataclass(frozen=True)
class Rejection:
    """One rejected input item, located by its line (ingest) or record number (demo)."""

    line: int
    request_id: str
    field: str
    reason: str


@dataclass(frozen=True)
class IngestSummary:
    """What became of an ingested input: the counts `ingest` and `demo` print, and their exit status."""

    accepted: int
    duplicates: int
    rejected: int
    rejections: list[Rejection]

    @property
    def exit_code(self) -> int:
        """0 when every record was stored or already there, 1 when anything was rejected."""
        return 0 if self.rejected == 0 else 1

    @classmethod
    def build(
        cls,
        response: ingest_pb2.StreamRecordsResponse,
        line_of: Callable[[int], int],
        local_errors: Sequence[LineError] = (),
    ) -> IngestSummary:
        """Merges the server's rejections (mapped through `line_of`) with errors found before sending."""
        rejections = [
            Rejection(line_of(r.index), r.request_id, r.field, r.reason) for r in response.rejections
        ]
        rejections.extend(Rejection(e.line, "", e.field, e.reason) for e in local_errors)
        rejections.sort(key=lambda r: r.line)
        rejected = len({r.index for r in response.rejections}) + len(local_errors)
        return cls(int(response.accepted_count), int(response.duplicate_count), rejected, rejections)

    def print(self, output_format: OutputFormat, position_label: str = "line") -> None:
        """Writes the report to stdout as a table or as one JSON object.

        `position_label` names what the positions count: input lines for
        `ingest`, generated records for `demo`.
        """
        if output_format == "json":
            document = asdict(self)
            document["rejections"] = [
                {position_label: r.line, "request_id": r.request_id, "field": r.field, "reason": r.reason}
                for r in self.rejections
            ]
            json.dump(document, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return
        console = Console(soft_wrap=False)
        counts = Table.grid(padding=(0, 2))
        counts.add_column()
        counts.add_column(justify="right")
        for name, value in (
            ("accepted", self.accepted),
            ("duplicates", self.duplicates),
            ("rejected", self.rejected),
        ):
            counts.add_row(name, f"{value:,}")
        console.print(counts)
        if not self.rejections:
            return
        table = Table(
            position_label, "request_id", "field", "reason", title="rejections", title_justify="left"
        )
        for r in self.rejections[:_TABLE_ROWS]:
            table.add_row(str(r.line), r.request_id, r.field, r.reason)
        console.print(table)
        if len(self.rejections) > _TABLE_ROWS:
            console.print(
                f"... and {len(self.rejections) - _TABLE_ROWS:,} more; use --format json to see all"
            )
