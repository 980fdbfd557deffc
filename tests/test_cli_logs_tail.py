"""`llmmeter logs tail` against the real query service: requests shown as they are stored, until stopped.

Records are stored through the real ingest service while the tail runs: in a
worker thread exactly as from a shell, and once as a real process that Ctrl-C
(SIGINT) ends with status 0. A tail the server ends, a bad filter and an
unreachable service are errors on one line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import pytest

from llmmeter.cli.main import main
from llmmeter.v1 import query_pb2
from llmmeter_common.pgcluster import free_port

from cli_helpers import REQUEST_ROW_KEYS as ROW_KEYS
from cli_helpers import cli
from records import ingest, record


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


async def test_tail_ended_by_the_server_is_an_error(capsys, addr, query_server) -> None:
    capsys.readouterr()
    tail = asyncio.ensure_future(asyncio.to_thread(main, ["logs", "tail", "--query-addr", addr]))
    await _wait_for(capsys, "Ctrl-C to stop", tail)
    await query_server.stop()
    assert await asyncio.wait_for(tail, 15) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UNAVAILABLE" in err and "shutting down" in err
