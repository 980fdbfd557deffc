"""`llmmeter logs export` against the real query service: every matching request to a file or stdout.

Records are stored through the real ingest service; the CLI runs in a worker
thread exactly as from a shell. Exports are CSV (spreadsheet formulas
defused) or NDJSON, oldest first, with a report of what was written; a failed
export leaves no file behind, and on a terminal a progress bar is drawn.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import base_time, cli, listing
from records import ingest, record


@pytest.fixture
async def exportable(ingest_stub: Any) -> datetime:
    t0 = base_time()
    await ingest(
        ingest_stub,
        [
            record(
                t0,
                request_id="e-1",
                user="=cmd|' /C calc'!A0",
                team="payments",
                input_tokens=11,
                metadata={"note": "+1"},
            ),
            record(
                t0 + timedelta(seconds=1),
                request_id="e-2",
                user="bob",
                team="search",
                error_type="@risk",
                status_code=500,
            ),
            record(t0 + timedelta(seconds=2), request_id="e-3", user="carol", team="payments"),
        ],
    )
    return t0


async def test_export_csv_file(capsys, addr, exportable, tmp_path: Path) -> None:
    target = tmp_path / "requests.csv"
    code, out, err = await cli(capsys, addr, "logs", "export", "--since", "1h", "--output", str(target))
    assert code == 0 and err == "" and out == f"wrote 3 rows ({target.stat().st_size} B) to {target}\n"
    assert listing(tmp_path) == [target]
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["request_id"] for r in rows] == ["e-1", "e-2", "e-3"]  # oldest first
    assert rows[0]["user_name"] == "'=cmd|' /C calc'!A0"  # a formula no more
    assert rows[1]["error_type"] == "'@risk" and rows[1]["status_code"] == "500"
    assert rows[0]["input_tokens"] == "11" and rows[2]["user_name"] == "carol"


async def test_export_ndjson_filtered_with_json_report(capsys, addr, exportable, tmp_path: Path) -> None:
    target = tmp_path / "payments.ndjson"
    code, out, _ = await cli(
        capsys,
        addr,
        "logs",
        "export",
        "--since",
        "1h",
        "--filter",
        'team = "payments"',
        "--export-format",
        "ndjson",
        "--output",
        str(target),
        "--format",
        "json",
    )
    assert code == 0
    assert json.loads(out) == {"output": str(target), "rows_written": 2, "bytes": target.stat().st_size}
    objects = [json.loads(line) for line in target.read_text().splitlines()]
    assert [o["request_id"] for o in objects] == ["e-1", "e-3"]
    assert objects[0]["metadata"] == {"note": "+1"} and objects[0]["input_tokens"] == 11


async def test_export_to_stdout_and_errors(capsys, addr, exportable, tmp_path: Path) -> None:
    code, out, err = await cli(
        capsys, addr, "logs", "export", "--since", "1h", "--output", "-", "--filter", 'user = "bob"'
    )
    assert code == 0 and [r["request_id"] for r in csv.DictReader(io.StringIO(out))] == ["e-2"]
    assert re.fullmatch(r"wrote 1 row \(\d+ B\) to stdout\n", err)
    target = tmp_path / "never.csv"
    code, out, err = await cli(capsys, addr, "logs", "export", "--filter", "team =", "--output", str(target))
    assert code == 1 and err.count("\n") == 1 and "ExportRequests" in err and "filter" in err
    assert listing(tmp_path) == []
    code, _, err = await cli(capsys, addr, "logs", "export", "--since", "1h")
    assert code == 2 and "--output" in err


async def test_export_progress_on_a_terminal(capsys, addr, exportable, tmp_path: Path, monkeypatch) -> None:
    """With a terminal on stderr the progress bar runs; the file is the same."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    target = tmp_path / "requests.ndjson"
    code, out, err = await cli(
        capsys,
        addr,
        "logs",
        "export",
        "--since",
        "1h",
        "--export-format",
        "ndjson",
        "--output",
        str(target),
        "--format",
        "csv",
    )
    assert code == 0 and "exporting requests" in err and "\x1b[" in err  # drawn, then cleared
    assert list(csv.reader(io.StringIO(out))) == [
        ["output", "rows_written", "bytes"],
        [str(target), "3", str(target.stat().st_size)],
    ]
    assert [json.loads(line)["request_id"] for line in target.read_text().splitlines()] == [
        "e-1",
        "e-2",
        "e-3",
    ]
