"""`llmmeter ingest` and `llmmeter demo` end to end: the real ingest service over a fresh database.

Checks what a user sees (the JSON report and the exit status) against what
was actually stored, for valid, invalid, blank and duplicate lines, and that
every record the demo generates passes the real server's validation.
Uses the `ingest_addr` and `db_pool` fixtures of conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from llmmeter.cli.main import main

LLMMETER = Path(sys.executable).with_name("llmmeter")


def _line(request_id: str, *, camel: bool = False, **overrides: Any) -> str:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    fields: dict[str, Any] = {
        "request_id": request_id,
        "start_time": start.isoformat().replace("+00:00", "Z"),
        "end_time": (start + timedelta(seconds=2)).isoformat().replace("+00:00", "Z"),
        "time_to_first_token": "0.300s",
        "status_code": 200,
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cost": 0.0045,
        "cost_breakdown": {"input": 0.0025, "output": 0.002},
        "metadata": {"tenant": "acme"},
    }
    fields.update(overrides)
    if camel:
        fields = {_camel(k): v for k, v in fields.items()}
    return json.dumps(fields)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


async def _ingest(
    path: Path | str, capsys: pytest.CaptureFixture[str], addr: str, *extra: str
) -> tuple[int, Any]:
    argv = ["--ingest-addr", addr, "ingest", str(path), "--format", "json", *extra]
    code = await asyncio.to_thread(main, argv)
    return code, json.loads(capsys.readouterr().out)


async def _stored_ids(db_pool: asyncpg.Pool) -> list[str]:
    return sorted(r["request_id"] for r in await db_pool.fetch("SELECT request_id FROM usage_records"))


async def test_valid_invalid_blank_and_duplicate_lines(
    ingest_addr: str, db_pool: asyncpg.Pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _line("e2e-1")
    lines = [
        first,  # 1
        "",  # 2
        _line("e2e-2", camel=True),  # 3
        "{not json",  # 4
        _line("e2e-3", end_time="2000-01-01T00:00:00Z"),  # 5: ends before it starts
        "   ",  # 6
        first,  # 7: duplicate of line 1 (the same line, whatever the clock did meanwhile)
        _line("e2e-4", colour="blue"),  # 8: unknown field
        _line("e2e-5", model=""),  # 9: model is required
        _line("e2e-6"),  # 10
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")

    code, report = await _ingest(path, capsys, ingest_addr, "--batch-size", "3")

    assert code == 1
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (3, 1, 4)
    rejections = [(r["line"], r["request_id"], r["field"]) for r in report["rejections"]]
    assert rejections == [(4, "", ""), (5, "e2e-3", "end_time"), (8, "", "colour"), (9, "e2e-5", "model")]
    assert all(r["reason"] for r in report["rejections"])
    assert await _stored_ids(db_pool) == ["e2e-1", "e2e-2", "e2e-6"]


async def test_sending_a_file_again_stores_nothing_twice(
    ingest_addr: str, db_pool: asyncpg.Pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text("".join(_line(f"again-{i}") + "\n" for i in range(250)))

    first = await _ingest(path, capsys, ingest_addr, "--batch-size", "100")
    second = await _ingest(path, capsys, ingest_addr)

    assert first == (0, {"accepted": 250, "duplicates": 0, "rejected": 0, "rejections": []})
    assert second == (0, {"accepted": 0, "duplicates": 250, "rejected": 0, "rejections": []})
    assert len(await _stored_ids(db_pool)) == 250


async def test_a_file_of_only_invalid_records_is_reported_not_crashed(
    ingest_addr: str, db_pool: asyncpg.Pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(_line("bad-1", status_code=0) + "\n\n" + _line("bad-2", input_tokens=-1) + "\n")

    code, report = await _ingest(path, capsys, ingest_addr)

    assert code == 1
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (0, 0, 2)
    assert [(r["line"], r["field"]) for r in report["rejections"]] == [
        (1, "status_code"),
        (3, "input_tokens"),
    ]
    assert await _stored_ids(db_pool) == []


async def test_demo_records_are_all_accepted(
    ingest_addr: str, db_pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--ingest-addr", ingest_addr, "--records", "3000", "--seed", "11", "--format", "json"]
    code = await asyncio.to_thread(main, argv)
    report = json.loads(capsys.readouterr().out)
    assert report == {"accepted": 3000, "duplicates": 0, "rejected": 0, "rejections": []}
    assert code == 0
    row = await db_pool.fetchrow("SELECT count(*) AS n, count(DISTINCT model) AS models FROM usage_records")
    assert row is not None and row["n"] == 3000 and row["models"] >= 8


async def test_installed_command_reads_stdin(ingest_addr: str, db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    data = "".join(_line(f"stdin-{i}") + "\n" for i in range(20)) + "{oops\n"
    proc = await asyncio.create_subprocess_exec(
        str(LLMMETER), "--ingest-addr", ingest_addr, "ingest", "-", "--format", "json",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(data.encode())
    assert proc.returncode == 1, err.decode()
    report = json.loads(out)
    assert (report["accepted"], report["rejected"], report["rejections"][0]["line"]) == (20, 1, 21)
    assert len(await _stored_ids(db_pool)) == 20
