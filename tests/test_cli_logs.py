"""`llmmeter logs` against the real query service: pages, one request in full, live tail, exports.

Records are stored through the real ingest service; the CLI runs in a worker
thread exactly as from a shell, and its stdout, stderr and files are checked.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llmmeter.cli.main import main
from llmmeter.v1 import query_pb2
from llmmeter_common.pgcluster import free_port

from cli_helpers import base_time, cli, listing, rfc3339
from records import ingest, record

ROW_KEYS = {f.name for f in query_pb2.RequestRow.DESCRIPTOR.fields}


@pytest.fixture
def addr(query_server: Any) -> str:
    return f"127.0.0.1:{query_server.port}"


@pytest.fixture
async def seven(ingest_stub: Any) -> datetime:
    """Seven requests ten seconds apart, `l-0` oldest; two of them share a start time."""
    t0 = base_time()
    recs = [
        record(
            t0 + timedelta(seconds=10 * i),
            request_id=f"l-{i}",
            team="payments" if i % 2 else "search",
            input_tokens=100 + i,
            status_code=500 if i == 3 else 200,
        )
        for i in range(6)
    ]
    recs.append(record(t0 + timedelta(seconds=50), request_id="l-6", team="search", input_tokens=106))
    await ingest(ingest_stub, recs)
    return t0


# list


async def test_pages_cover_everything_once_newest_first(capsys, addr, seven) -> None:
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        args = ["logs", "list", "--page-size", "3", "--format", "json"]
        args += ["--since", "1h"] + (["--page-token", token] if token else [])
        code, out, err = await cli(capsys, addr, *args)
        assert (code, err) == (0, "")
        body = json.loads(out)
        assert set(body) == {"requests", "next_page_token"}
        assert all(set(r) == ROW_KEYS for r in body["requests"])
        seen += [r["request_id"] for r in body["requests"]]
        pages += 1
        token = body["next_page_token"]
        if not token:
            break
    # newest first; at the shared start time the larger id first
    assert seen == ["l-6", "l-5", "l-4", "l-3", "l-2", "l-1", "l-0"]
    assert pages == 3


async def test_list_row_values_and_filter(capsys, addr, seven) -> None:
    t0 = seven
    code, out, _ = await cli(
        capsys,
        addr,
        "logs",
        "list",
        "--since",
        "1h",
        "--format",
        "json",
        "--filter",
        'team = "payments" AND status_code >= 500',
    )
    assert code == 0
    rows = json.loads(out)["requests"]
    assert [r["request_id"] for r in rows] == ["l-3"]
    row = rows[0]
    assert (row["status_code"], row["success"], row["team"], row["model"]) == (
        500,
        False,
        "payments",
        "gpt-4o",
    )
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == ("103", "50", "153")
    assert row["start_time"] == rfc3339(t0 + timedelta(seconds=30))
    assert (row["latency_ms"], row["ttft_ms"], row["cost"], row["error_type"]) == (1200, 300, 0.00075, "")


async def test_list_table_and_csv_print_the_next_token(capsys, addr, seven) -> None:
    code, out, err = await cli(capsys, addr, "logs", "list", "--since", "1h", "--page-size", "2")
    assert code == 0 and err == ""
    body = [line for line in out.splitlines() if "l-" in line]
    assert len(body) == 2 and "l-6" in body[0] and "l-5" in body[1] and "payments" in body[1]
    token = out.splitlines()[-1].removeprefix("next_page_token: ")
    assert out.splitlines()[-1].startswith("next_page_token: ") and token
    code, out, err = await cli(
        capsys, addr, "logs", "list", "--page-token", token, "--page-size", "4", "--format", "csv"
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["request_id"] for r in rows] == ["l-4", "l-3", "l-2", "l-1"]
    assert set(rows[0]) == ROW_KEYS and rows[1]["success"] == "false" and rows[0]["input_tokens"] == "104"
    assert err.startswith("next_page_token: ") and err.count("\n") == 1


async def test_token_of_another_filter_is_refused(capsys, addr, seven) -> None:
    code, out, _ = await cli(
        capsys, addr, "logs", "list", "--since", "1h", "--page-size", "1", "--format", "json"
    )
    token = json.loads(out)["next_page_token"]
    code, out, err = await cli(capsys, addr, "logs", "list", "--page-token", token, "--filter", 'team = "x"')
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "ListRequests" in err and "page_token" in err and "another filter" in err


async def test_empty_list(capsys, addr) -> None:
    code, out, _ = await cli(capsys, addr, "logs", "list", "--format", "json")
    assert code == 0 and json.loads(out) == {"requests": [], "next_page_token": ""}
    code, out, _ = await cli(capsys, addr, "logs", "list", "--format", "csv")
    assert code == 0 and out.splitlines() == [
        ",".join(f.name for f in query_pb2.RequestRow.DESCRIPTOR.fields)
    ]


# show


@pytest.fixture
async def detailed(ingest_stub: Any) -> datetime:
    t0 = base_time()
    rec = record(
        t0,
        request_id="full-1",
        model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
        team="payments",
        user="alice",
        input_tokens=812,
        output_tokens=95,
        cost=0.003,
        cache_read_tokens=512,
        cost_breakdown={"input": 0.001, "output": 0.002},
        metadata={"feature": "chat", "env": "prod"},
    )
    rec.payload.request.struct_value.update({"messages": [{"role": "user", "content": "hi"}]})
    rec.payload.response.struct_value.update({"choices": [{"text": "hello"}]})
    await ingest(ingest_stub, [rec, record(t0 - timedelta(minutes=5), request_id="full-1", input_tokens=1)])
    return t0


async def test_show_json(capsys, addr, detailed) -> None:
    code, out, err = await cli(capsys, addr, "logs", "show", "full-1", "--format", "json")
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert set(body) == {f.name for f in query_pb2.GetRequestResponse.DESCRIPTOR.fields}
    rec = body["record"]
    assert rec["request_id"] == "full-1" and rec["input_tokens"] == "812"  # the newest of the two
    assert rec["cost_breakdown"] == {"input": 0.001, "output": 0.002}
    assert rec["metadata"] == {"feature": "chat", "env": "prod"}
    assert rec["payload"] == {
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "response": {"choices": [{"text": "hello"}]},
    }
    assert rec["user"] == "alice" and rec["cache_read_tokens"] == "512"
    assert rec["media"] == {"images": "0", "audio_seconds": 0, "video_seconds": 0, "characters": "0"}
    assert body["latency_ms"] == 1200
    # the older request of the same id, by its start time
    older = rfc3339(detailed - timedelta(minutes=5))
    code, out, _ = await cli(
        capsys, addr, "logs", "show", "full-1", "--start-time", older, "--format", "json"
    )
    assert code == 0 and json.loads(out)["record"]["input_tokens"] == "1"


async def test_show_table(capsys, addr, detailed) -> None:
    code, out, _ = await cli(capsys, addr, "logs", "show", "full-1")
    assert code == 0
    for text in (
        "full-1",
        "gpt-4o (answered by gpt-4o-2024-08-06)",
        "alice",
        "payments",
        "812 (cache read 512, cache write 0)",
        "$0.003 USD",
        "cost breakdown",
        "input",
        "$0.001",
        "metadata",
        "feature",
        "chat",
        "request payload",
        '"content": "hi"',
        "response payload",
        '"text": "hello"',
    ):
        assert text in out, text
    code, out, _ = await cli(capsys, addr, "logs", "show", "full-1", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and rows[0]["record.request_id"] == "full-1"
    assert json.loads(rows[0]["record.metadata"]) == {"feature": "chat", "env": "prod"}


async def test_show_unknown_id(capsys, addr) -> None:
    code, out, err = await cli(capsys, addr, "logs", "show", "nope")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("llmmeter: error: GetRequest on the query service") and "NOT_FOUND" in err


# tail


async def _wait_for(
    capsys: pytest.CaptureFixture[str], text: str, task: asyncio.Future[int], seconds: float = 15
) -> tuple[str, str]:
    """Collects output of a running command until `text` shows up on its stderr."""
    out = err = ""
    deadline = time.monotonic() + seconds
    while text not in err:
        assert not task.done(), (out, err, task.result())
        assert time.monotonic() < deadline, (out, err)
        await asyncio.sleep(0.05)
        o, e = capsys.readouterr()
        out, err = out + o, err + e
    return out, err


async def test_tail_receives_a_record_stored_after_it_started(capsys, addr, ingest_stub, query_stub) -> None:
    capsys.readouterr()
    # The service hands out commits in order: once a probe has seen a sentinel stored after
    # "before", "before" is behind it, and a tail started now cannot receive it.
    probe = query_stub.TailRequests(query_pb2.TailRequestsRequest(filter='request_id = "sentinel"'))
    await probe.initial_metadata()
    await ingest(ingest_stub, [record(request_id="before", team="payments")])
    await ingest(ingest_stub, [record(request_id="sentinel", team="probe")])
    assert (await asyncio.wait_for(probe.read(), 15)).request.request_id == "sentinel"
    probe.cancel()
    tail = asyncio.ensure_future(
        asyncio.to_thread(
            main,
            [
                "logs",
                "tail",
                "--filter",
                'team = "payments"',
                "--max",
                "2",
                "--format",
                "json",
                "--query-addr",
                addr,
            ],
        )
    )
    out, err = await _wait_for(capsys, "watching for new requests", tail)
    assert out == "" and 'matching team = "payments"' in err
    await ingest(ingest_stub, [record(request_id="other-team", team="search")])
    await ingest(ingest_stub, [record(request_id="after-1", team="payments", input_tokens=7)])
    await ingest(ingest_stub, [record(request_id="after-2", team="payments", status_code=502)])
    assert await asyncio.wait_for(tail, 15) == 0
    o, _ = capsys.readouterr()
    lines = (out + o).splitlines()
    assert [json.loads(line)["request"]["request_id"] for line in lines] == ["after-1", "after-2"]
    first = json.loads(lines[0])
    assert set(first) == {"request"} and set(first["request"]) == ROW_KEYS
    assert first["request"]["input_tokens"] == "7" and json.loads(lines[1])["request"]["success"] is False


async def test_tail_table(capsys, addr, ingest_stub) -> None:
    capsys.readouterr()
    tail = asyncio.ensure_future(
        asyncio.to_thread(main, ["logs", "tail", "--max", "1", "--query-addr", addr])
    )
    await _wait_for(capsys, "stopping after 1", tail)
    await ingest(ingest_stub, [record(request_id="tailed", model="claude", user="bob", cost=0.25)])
    assert await asyncio.wait_for(tail, 15) == 0
    out = capsys.readouterr().out
    assert "tailed" in out and "claude" in out and "bob" in out and "$0.25" in out


async def test_tail_bad_filter_and_unreachable(capsys, addr) -> None:
    code, out, err = await cli(capsys, addr, "logs", "tail", "--filter", "colour = 3")
    assert code == 1 and out == "" and err.count("\n") == 1 and "TailRequests" in err and "filter" in err
    nobody = f"127.0.0.1:{free_port()}"
    code, out, err = await cli(capsys, nobody, "logs", "tail")
    assert code == 1 and out == "" and err.count("\n") == 1 and nobody in err and "UNAVAILABLE" in err


# export


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


async def test_ctrl_c_stops_tail_cleanly(addr, ingest_stub) -> None:
    """A real process: rows show up as they are stored, and SIGINT ends it with status 0."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmmeter.cli.main",
        "logs",
        "tail",
        "--query-addr",
        addr,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        live = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert live.decode() == "watching for new requests of every kind; Ctrl-C to stop\n"
        header = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
        assert header.split() == [
            "start_time",
            "status",
            "model",
            "user",
            "team",
            "in",
            "out",
            "latency",
            "ttft",
            "cost",
            "error_type",
            "request_id",
        ]
        await ingest(
            ingest_stub,
            [
                record(
                    request_id="sigint-1",
                    status_code=429,
                    error_type="RateLimit",
                    user="dora",
                    input_tokens=1234,
                )
            ],
        )
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.split()[2:] == [
            "429",
            "gpt-4o",
            "dora",
            "1,234",
            "50",
            "1.20",
            "s",
            "300",
            "ms",
            "$0.00075",
            "RateLimit",
            "sigint-1",
        ]
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert (await proc.stderr.read()).decode() == "stopped after 1 row\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


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


async def test_token_with_an_absolute_window(capsys, addr, seven) -> None:
    t0 = seven
    scope = ["--from", rfc3339(t0 + timedelta(seconds=10)), "--to", rfc3339(t0 + timedelta(seconds=45))]
    code, out, _ = await cli(capsys, addr, "logs", "list", *scope, "--page-size", "2", "--format", "json")
    body = json.loads(out)
    assert [r["request_id"] for r in body["requests"]] == ["l-4", "l-3"]
    token = body["next_page_token"]
    code, out, _ = await cli(capsys, addr, "logs", "list", *scope, "--page-token", token, "--format", "json")
    body = json.loads(out)
    assert [r["request_id"] for r in body["requests"]] == ["l-2", "l-1"] and body["next_page_token"] == ""
    other = ["--from", rfc3339(t0), "--to", rfc3339(t0 + timedelta(seconds=45))]
    code, out, err = await cli(capsys, addr, "logs", "list", *other, "--page-token", token)
    assert code == 1 and out == "" and "another time window" in err and err.count("\n") == 1


async def test_tail_ended_by_the_server_is_an_error(capsys, addr, query_server) -> None:
    capsys.readouterr()
    tail = asyncio.ensure_future(asyncio.to_thread(main, ["logs", "tail", "--query-addr", addr]))
    await _wait_for(capsys, "Ctrl-C to stop", tail)
    await query_server.stop()
    assert await asyncio.wait_for(tail, 15) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UNAVAILABLE" in err and "shutting down" in err
