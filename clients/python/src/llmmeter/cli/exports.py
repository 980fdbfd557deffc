"""Export files of `usage export` and `logs export`: streamed to disk, never half-written, then reported.

Both commands receive a server stream of file chunks and must write it without
holding it in memory, show progress on a terminal, leave no truncated file
under the requested name when interrupted, and report what they wrote in the
same three formats; one implementation keeps the two commands identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llmmeter.cli.render import CsvOut


@contextlib.contextmanager
def output_file(name: str) -> Iterator[IO[bytes]]:
    """Opens the export target: `-` is stdout; a file is written as `NAME.part` and renamed when complete.

    A failed or interrupted export therefore never leaves a truncated file
    under the requested name.
    """
    if name == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(name)
    partial = target.with_name(target.name + ".part")
    stream = open(partial, "wb")  # noqa: SIM115 - closed below on every path
    try:
        yield stream
        stream.close()
        os.replace(partial, target)
    except BaseException:
        stream.close()
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


@contextlib.contextmanager
def rows_progress(enabled: bool, description: str) -> Iterator[Progress | None]:
    """A rich spinner with the rows written so far, on stderr when that is a terminal."""
    err = Console(stderr=True)
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("[bold]{task.completed:,.0f}[/] rows"),
        TextColumn("{task.fields[size]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        progress.add_task(description, total=None, size="")
        yield progress


def human_bytes(size: int) -> str:
    """`1.5 MiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


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
