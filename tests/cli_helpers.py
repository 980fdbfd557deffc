"""Helpers the CLI tests share: running `llmmeter` in-process against a real server, times, row fields."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmmeter.cli.main import main
from llmmeter.v1 import query_pb2

#: The fields of a RequestRow: what `logs list` and `logs tail` print of each request.
REQUEST_ROW_KEYS = {f.name for f in query_pb2.RequestRow.DESCRIPTOR.fields}


def base_time() -> datetime:
    """A whole minute about 40 minutes ago, so every record sits well inside `--since 1h`."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=40)


def listing(directory: Path) -> list[Path]:
    """The files of a directory, sorted (what an export left behind)."""
    return sorted(directory.iterdir())


def rfc3339(when: datetime) -> str:
    """A timestamp as the CLI's --from/--to take it."""
    return when.isoformat().replace("+00:00", "Z")


async def cli(capsys: pytest.CaptureFixture[str], addr: str, *argv: str) -> tuple[int, str, str]:
    """Runs `llmmeter ARGV --query-addr ADDR` in a thread; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, "--query-addr", addr])
    out, err = capsys.readouterr()
    return code, out, err


def table_cells(header: str, row: str) -> dict[str, str]:
    """The cells of one line of a `rich` table, by column title (title line `┃`, rows `│`)."""
    return dict(zip([c.strip() for c in header.split("┃")], [c.strip() for c in row.split("│")], strict=True))
