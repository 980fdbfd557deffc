"""`llmmeter logs list` and `logs show` against the real query service: pages of requests, one in full.

Records are stored through the real ingest service; the CLI runs in a worker
thread exactly as from a shell, and its stdout and stderr are checked. A page
token only continues the listing of its own filter and time window.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from llmmeter.v1 import query_pb2

from cli_helpers import REQUEST_ROW_KEYS as ROW_KEYS
from cli_helpers import base_time, cli, rfc3339, table_cells
from records import ingest, record


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
    assert len(body) == 2 and "l-6" in body[0] and "l-5" in body[1]
    header = next(line for line in out.splitlines() if "Request" in line)
    newest = table_cells(header, body[0])
    seed = ["Time", "Status", "Prompt", "Completion", "Total", "Latency", "Spend", "Request"]
    assert [c for c in newest if c] == seed  # the product pages' columns by default
    assert (newest["Prompt"], newest["Completion"], newest["Total"], newest["Spend"]) == (
        "106", "50", "156", "$0.00075")
    table = [line for line in out.splitlines() if not line.startswith("next_page_token")]
    assert all(len(line) <= 100 for line in table), [len(line) for line in table]
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
    code, out, err = await cli(capsys, addr, "logs", "list", "--since", "1h", "--page-size", "2",
                               "--columns", "model,team,ttft,request")
    header = next(line for line in out.splitlines() if "Request" in line)
    row = table_cells(header, next(line for line in out.splitlines() if "l-5" in line))
    assert (row["Model"], row["Team"], row["Request"]) == ("gpt-4o", "payments", "l-5")
    code, out, err = await cli(capsys, addr, "logs", "list", "--columns", "model,bogus")
    assert code == 2 and "unknown column bogus" in err


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
