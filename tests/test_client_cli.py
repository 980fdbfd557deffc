"""The client's settings and the `llmmeter` CLI against the real ingest service.

Reports and exit codes are checked against what the real server stored in
this test's own database; failures are real too (an address where nothing
listens, a missing file, unusable settings) and must reach stderr as one
line, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from llmmeter.cli.main import build_parser, main
from llmmeter.config import ClientConfig, RetryPolicy
from llmmeter.errors import ConfigError
from llmmeter_common.pgcluster import free_port

START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def _line(**fields: Any) -> str:
    """One JSON line of a valid record, any field overridable (camelCase keys are accepted too)."""
    record = {
        "start_time": START.isoformat().replace("+00:00", "Z"),
        "end_time": (START + timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
        "status_code": 200,
        "model": "gpt-4o",
        **fields,
    }
    return json.dumps(record)


async def _run_cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def test_config_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .llmmeter/admin.key of a `make run` here or above
    config = ClientConfig.from_env(
        {"LLMMETER_INGEST_ADDR": "i:1", "LLMMETER_QUERY_ADDR": " ", "LLMMETER_TIMEOUT": "2.5"}
    )
    assert (config.ingest_addr, config.query_addr, config.alerts_addr, config.timeout) == (
        "i:1",
        "localhost:50052",
        "localhost:50053",
        2.5,
    )
    assert ClientConfig.from_env({}) == ClientConfig()
    with pytest.raises(ConfigError):
        ClientConfig.from_env({"LLMMETER_TIMEOUT": "soon"})
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    assert [RetryPolicy().backoff(n) for n in (1, 2, 3, 10)] == [0.2, 0.4, 0.8, 5.0]


async def test_cli_ingest_maps_every_outcome_to_its_line(
    ingest_addr: str, db_pool: asyncpg.Pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        _line(request_id="a"),
        "",
        "{broken",
        _line(requestId="b", model=""),
        _line(request_id="a"),
        _line(request_id="c"),
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code = await _run_cli(
        "--ingest-addr", ingest_addr, "ingest", str(path), "--format", "json", "--batch-size", "2"
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (2, 1, 2)
    assert [(r["line"], r["request_id"], r["field"]) for r in report["rejections"]] == [
        (3, "", ""),
        (4, "b", "model"),
    ]
    stored = await db_pool.fetch("SELECT request_id FROM usage_records ORDER BY request_id")
    assert [r["request_id"] for r in stored] == ["a", "c"]


async def test_cli_ingest_all_good_exits_0_and_reads_stdin(
    ingest_addr: str,
    db_pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = "\n".join(_line(request_id=f"r{i}") for i in range(5)).encode()
    monkeypatch.setattr("sys.stdin", type("Stdin", (), {"buffer": io.BytesIO(data)})())
    monkeypatch.setenv("LLMMETER_INGEST_ADDR", ingest_addr)
    assert await _run_cli("ingest", "-", "--quiet") == 0
    out = capsys.readouterr().out
    assert "accepted" in out and "5" in out
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 5


async def test_cli_demo_sends_the_generated_records(
    ingest_addr: str, db_pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await _run_cli(
        "demo", "--ingest-addr", ingest_addr, "--records", "250", "--batch-size", "100",
        "--seed", "1", "--format", "json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "accepted": 250,
        "duplicates": 0,
        "rejected": 0,
        "rejections": [],
    }
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 250


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (["--ingest-addr", "__NOBODY__", "--timeout", "1", "ingest", "__FILE__"], {}, 1, "UNAVAILABLE"),
        (
            ["ingest", "/nonexistent/records.jsonl"],
            {},
            1,
            "No such file or directory: /nonexistent/records.jsonl",
        ),
        (["ingest", "__FILE__"], {"LLMMETER_TIMEOUT": "later"}, 2, "LLMMETER_TIMEOUT must be a number"),
        (["ingest", "__FILE__", "--batch-size", "0"], {}, 2, "--batch-size: must be at least 1"),
        (["frobnicate"], {}, 2, "invalid choice"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str],
    env: dict[str, str],
    code: int,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(_line(request_id="r") + "\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    placeholders = {"__FILE__": str(path), "__NOBODY__": nobody}
    assert main([placeholders.get(a, a) for a in argv]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if code == 1:
        assert err.count("\n") == 1 and err.startswith("llmmeter: error: ")
    if "__NOBODY__" in argv:
        assert nobody in err and "gave up after" in err


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every runnable command of the parser tree, e.g. ("ingest",) and ("db", "migrate")."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path
        return
    for name, sub in groups[0].choices.items():
        yield from _commands(sub, (*path, name))


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(_commands(build_parser()))
    assert {("ingest",), ("demo",)} <= set(commands)
    for command in [(), *commands]:
        assert main([*command, "--help"]) == 0
        assert "examples:" in capsys.readouterr().out, command
