"""`llmmeter usage` against the real query service: exact numbers in every format, windows, errors.

Records are stored through the real ingest service, the CLI runs in a worker
thread exactly as from a shell, and its stdout/stderr are checked.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llmmeter.cli.main import main
from llmmeter.timeparse import TimePoint, parse_span, parse_time, resolve_window
from llmmeter.v1 import query_pb2
from llmmeter_common.pgcluster import free_port

from cli_helpers import base_time, cli, listing, rfc3339
from records import ingest, record

SUMMARY_KEYS = {f.name for f in query_pb2.Summary.DESCRIPTOR.fields}
ROW_KEYS = {f.name for f in query_pb2.BreakdownRow.DESCRIPTOR.fields}


@pytest.fixture
def addr(query_server: Any) -> str:
    return f"127.0.0.1:{query_server.port}"


@pytest.fixture
async def stored(ingest_stub: Any) -> datetime:
    """Six records over three teams and two models; returns the base time."""
    t0 = base_time()
    await ingest(
        ingest_stub,
        [
            record(
                t0,
                latency_ms=1000,
                ttft_ms=200,
                request_id="u-1",
                model="gpt-4o",
                team="payments",
                input_tokens=100,
                output_tokens=50,
                cost=0.01,
                cache_read_tokens=40,
            ),
            record(
                t0 + timedelta(seconds=5),
                latency_ms=2000,
                ttft_ms=400,
                request_id="u-2",
                model="gpt-4o",
                team="payments",
                input_tokens=300,
                output_tokens=150,
                cost=0.02,
            ),
            record(
                t0 + timedelta(seconds=9),
                latency_ms=500,
                ttft_ms=None,
                request_id="u-3",
                model="claude",
                team="payments",
                status_code=503,
                error_type="ServiceUnavailable",
                input_tokens=10,
                output_tokens=0,
                cost=0,
            ),
            record(
                t0 + timedelta(minutes=2),
                latency_ms=3000,
                ttft_ms=None,
                request_id="u-4",
                model="gpt-4o",
                team="search",
                status_code=500,
                input_tokens=20,
                output_tokens=0,
                cost=0.005,
            ),
            record(
                t0 + timedelta(minutes=3),
                latency_ms=800,
                ttft_ms=100,
                request_id="u-5",
                model="claude",
                team="search",
                input_tokens=1000,
                output_tokens=500,
                cost=0.3,
            ),
            record(
                t0 + timedelta(minutes=4),
                latency_ms=600,
                ttft_ms=None,
                request_id="u-6",
                model="claude",
                team='=HYPERLINK("http://x")',
                input_tokens=7,
                output_tokens=3,
                cost=0.0001,
            ),
        ],
    )
    return t0


# summary


async def test_summary_json_has_exact_numbers_and_every_key(capsys, addr, stored) -> None:
    code, out, err = await cli(capsys, addr, "usage", "summary", "--since", "50m", "--format", "json")
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert set(body) == {"summary"} and set(body["summary"]) == SUMMARY_KEYS
    s = body["summary"]
    # proto JSON mapping: int64 as strings, defaults present
    assert (s["request_count"], s["success_count"], s["error_count"]) == ("6", "4", "2")
    assert (s["input_tokens"], s["output_tokens"], s["total_tokens"]) == ("1437", "703", "2140")
    assert s["cache_read_tokens"] == "40" and s["images"] == "0" and s["audio_seconds"] == 0
    assert s["cost_exact"] == "0.3351"
    assert s["success_rate"] == pytest.approx(4 / 6)
    assert s["latency_avg_ms"] == pytest.approx((1000 + 2000 + 500 + 3000 + 800 + 600) / 6)
    assert s["percentile_method"] == "PERCENTILE_METHOD_EXACT"


async def test_summary_filter_and_absolute_window(capsys, addr, stored) -> None:
    t0 = stored
    code, out, _ = await cli(
        capsys,
        addr,
        "usage",
        "summary",
        "--since",
        "1h",
        "--format",
        "json",
        "--filter",
        'team = "payments" AND status_code >= 500',
    )
    assert code == 0
    s = json.loads(out)["summary"]
    assert (s["request_count"], s["error_count"], s["input_tokens"]) == ("1", "1", "10")
    # [t0 + 5s, t0 + 3m): u-2, u-3, u-4
    code, out, _ = await cli(
        capsys,
        addr,
        "usage",
        "summary",
        "--format",
        "json",
        "--from",
        rfc3339(t0 + timedelta(seconds=5)),
        "--to",
        rfc3339(t0 + timedelta(minutes=3)),
    )
    assert code == 0
    s = json.loads(out)["summary"]
    assert (s["request_count"], s["cost_exact"]) == ("3", "0.025")
    # a relative --from: "41m" ago reaches back before t0 (40 min ago), so all six
    code, out, _ = await cli(capsys, addr, "usage", "summary", "--format", "json", "--from", "45m")
    assert json.loads(out)["summary"]["request_count"] == "6"
    # a window that ends before anything was stored
    code, out, _ = await cli(
        capsys, addr, "usage", "summary", "--format", "json", "--since", "10m", "--to", "50m"
    )
    assert json.loads(out)["summary"]["request_count"] == "0"


async def test_summary_table_and_csv(capsys, addr, stored) -> None:
    code, out, _ = await cli(capsys, addr, "usage", "summary", "--since", "1h")
    assert code == 0
    cards = dict(re.split(r"\s{2,}", line.strip())[:2] for line in out.splitlines()[1:-1])
    assert (cards["requests"], cards["successes"], cards["errors"]) == ("6", "4", "2")
    assert (cards["success rate"], cards["total tokens"], cards["cost"]) == ("66.7%", "2,140", "$0.3351")
    assert cards["latency"] == "1.32 s" and out.splitlines()[-1].startswith("percentiles: ")
    code, out, _ = await cli(capsys, addr, "usage", "summary", "--since", "1h", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and set(rows[0]) == SUMMARY_KEYS
    assert (rows[0]["request_count"], rows[0]["cost_exact"], rows[0]["error_count"]) == ("6", "0.3351", "2")


# breakdown


async def test_breakdown_by_team_sorted_by_cost(capsys, addr, stored) -> None:
    code, out, _ = await cli(
        capsys,
        addr,
        "usage",
        "breakdown",
        "--since",
        "1h",
        "--by",
        "team",
        "--sort",
        "cost",
        "--format",
        "json",
    )
    assert code == 0
    body = json.loads(out)
    assert set(body) == {"rows", "omitted_groups", "percentile_method"}
    assert all(set(r) == ROW_KEYS for r in body["rows"])
    assert [r["group"] for r in body["rows"]] == ["search", "payments", '=HYPERLINK("http://x")']
    assert [r["request_count"] for r in body["rows"]] == ["2", "3", "1"]
    assert [r["cost"] for r in body["rows"]] == pytest.approx([0.305, 0.03, 0.0001])
    assert body["omitted_groups"] == "0"
    # ascending, then top 2 of the default sort (request_count desc)
    _, out, _ = await cli(
        capsys,
        addr,
        "usage",
        "breakdown",
        "--since",
        "1h",
        "--by",
        "team",
        "--sort",
        "cost asc",
        "--format",
        "json",
    )
    assert [r["group"] for r in json.loads(out)["rows"]] == ['=HYPERLINK("http://x")', "payments", "search"]
    _, out, _ = await cli(
        capsys, addr, "usage", "breakdown", "--since", "1h", "--by", "team", "--top", "2", "--format", "json"
    )
    body = json.loads(out)
    assert [r["group"] for r in body["rows"]] == ["payments", "search"] and body["omitted_groups"] == "1"


async def test_breakdown_default_by_model_table_and_csv(capsys, addr, stored) -> None:
    code, out, _ = await cli(capsys, addr, "usage", "breakdown", "--since", "1h", "--sort", "-input_tokens")
    assert code == 0
    table_rows = [line for line in out.splitlines() if "claude" in line or "gpt-4o" in line]
    assert len(table_rows) == 2 and "claude" in table_rows[0] and "1,017" in table_rows[0]
    assert "gpt-4o" in table_rows[1] and "$0.035" in table_rows[1]
    code, out, _ = await cli(
        capsys, addr, "usage", "breakdown", "--since", "1h", "--by", "team", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["group"] for r in rows] == ["payments", "search", '\'=HYPERLINK("http://x")']
    assert [r["total_tokens"] for r in rows] == ["610", "1520", "10"]
    assert rows[0]["failure_count"] == "1" and float(rows[0]["success_rate"]) == pytest.approx(2 / 3)


async def test_breakdown_empty_window_and_bad_sort(capsys, addr, stored) -> None:
    code, out, _ = await cli(
        capsys, addr, "usage", "breakdown", "--since", "5m", "--to", "2h", "--format", "csv"
    )
    assert code == 0 and out.splitlines() == [
        ",".join(f.name for f in query_pb2.BreakdownRow.DESCRIPTOR.fields)
    ]
    code, out, err = await cli(capsys, addr, "usage", "breakdown", "--since", "1h", "--sort", "colour")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("llmmeter: error: GetBreakdown on the query service") and "order_by" in err


# series


async def test_series_json_by_model(capsys, addr, stored) -> None:
    t0 = stored
    code, out, _ = await cli(
        capsys,
        addr,
        "usage",
        "series",
        "--format",
        "json",
        "--granularity",
        "1m",
        "--from",
        rfc3339(t0),
        "--to",
        rfc3339(t0 + timedelta(minutes=5)),
        "--metric",
        "requests",
        "--metric",
        "cost",
        "--by",
        "model",
    )
    assert code == 0
    body = json.loads(out)
    assert set(body) == {"series", "granularity", "percentile_method"} and body["granularity"] == "1m"
    keyed = {(s["metric"], s["group"]): s["points"] for s in body["series"]}
    assert list(keyed) == [
        ("METRIC_REQUESTS", "claude"),
        ("METRIC_REQUESTS", "gpt-4o"),
        ("METRIC_COST", "claude"),
        ("METRIC_COST", "gpt-4o"),
    ]
    assert all(
        len(points) == 5 and set(points[0]) == {"time", "value", "present"} for points in keyed.values()
    )
    assert [p["value"] for p in keyed["METRIC_REQUESTS", "claude"]] == [1, 0, 0, 1, 1]
    assert [p["value"] for p in keyed["METRIC_REQUESTS", "gpt-4o"]] == [2, 0, 1, 0, 0]
    assert [p["value"] for p in keyed["METRIC_COST", "gpt-4o"]] == pytest.approx([0.03, 0, 0.005, 0, 0])
    assert keyed["METRIC_REQUESTS", "gpt-4o"][0]["time"] == rfc3339(t0)


async def test_series_metric_names_top_and_csv(capsys, addr, stored) -> None:
    t0 = stored
    window = ["--from", rfc3339(t0), "--to", rfc3339(t0 + timedelta(minutes=5)), "--granularity", "1m"]
    code, out, _ = await cli(
        capsys,
        addr,
        "usage",
        "series",
        *window,
        "--metric",
        "failure_rate",
        "--metric",
        "rps",
        "--metric",
        "latency_p95",
        "--metric",
        "tpm",
        "--format",
        "csv",
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4 * 5 and set(rows[0]) == {"metric", "group", "time", "value", "present"}
    first = {r["metric"]: r for r in rows if r["time"] == rfc3339(t0)}
    assert float(first["failure_rate"]["value"]) == pytest.approx(1 / 3)
    assert float(first["rps"]["value"]) == pytest.approx(3 / 60)
    assert float(first["latency_p95"]["value"]) == pytest.approx(2000)
    assert float(first["tpm"]["value"]) == pytest.approx(610)
    empty = [r for r in rows if r["metric"] == "latency_p95" and r["present"] == "false"]
    assert len(empty) == 1 and empty[0]["time"] == rfc3339(t0 + timedelta(minutes=1))
    # --top 1 folds the other teams into "other"
    _, out, _ = await cli(
        capsys, addr, "usage", "series", *window, "--by", "team", "--top", "1", "--format", "json"
    )
    groups = [(s["group"], sum(p["value"] for p in s["points"])) for s in json.loads(out)["series"]]
    assert groups == [("payments", 3), ("other", 3)]


async def test_series_chart(capsys, addr, stored) -> None:
    t0 = stored
    code, out, _ = await cli(
        capsys,
        addr,
        "usage",
        "series",
        "--from",
        rfc3339(t0),
        "--to",
        rfc3339(t0 + timedelta(minutes=5)),
        "--granularity",
        "1m",
        "--metric",
        "requests",
        "--by",
        "model",
    )
    assert code == 0
    assert "buckets 5 x 1m" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("requests")}
    # one sparkline per group: 5 buckets, the highest bar where the most requests were
    assert set(lines) == {"claude", "gpt-4o"}
    assert "█▁▁██" in lines["claude"] and "█▁▅▁▁" in lines["gpt-4o"]
    assert lines["gpt-4o"].split()[-1] == "3"  # total


async def test_bad_metric_and_granularity_are_usage_errors(capsys, addr) -> None:
    code, _, err = await cli(capsys, addr, "usage", "series", "--metric", "happiness")
    assert code == 2 and "unknown metric 'happiness'" in err and "latency_p95" in err
    code, _, err = await cli(capsys, addr, "usage", "series", "--granularity", "2m")
    assert code == 2 and "invalid choice" in err
    code, _, err = await cli(capsys, addr, "usage", "summary", "--since", "1h", "--from", "2h")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = await cli(capsys, addr, "usage", "summary", "--since", "yesterday")
    assert code == 2 and "not a duration" in err


# export


async def test_export_aggregates_to_file(capsys, addr, stored, tmp_path: Path) -> None:
    target = tmp_path / "chargeback.csv"
    code, out, err = await cli(
        capsys,
        addr,
        "usage",
        "export",
        "--since",
        "1h",
        "--by",
        "team",
        "--by",
        "model",
        "--output",
        str(target),
        "--format",
        "json",
    )
    assert code == 0 and err == ""
    assert json.loads(out) == {"output": str(target), "rows_written": 5, "bytes": target.stat().st_size}
    assert listing(tmp_path) == [target]  # no .part left behind
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [(r["team"], r["model"], r["request_count"], r["cost"]) for r in rows] == [
        ('\'=HYPERLINK("http://x")', "claude", "1", "0.0001"),
        ("payments", "claude", "1", "0"),
        ("payments", "gpt-4o", "2", "0.03"),
        ("search", "claude", "1", "0.3"),
        ("search", "gpt-4o", "1", "0.005"),
    ]
    by_key = {(r["team"], r["model"]): r for r in rows}
    assert by_key["payments", "gpt-4o"]["input_tokens"] == "400"
    assert by_key["search", "gpt-4o"]["failure_count"] == "1"


async def test_export_aggregates_default_team_to_stdout(capsys, addr, stored) -> None:
    code, out, err = await cli(capsys, addr, "usage", "export", "--since", "1h", "--output", "-")
    assert code == 0 and "wrote 3 rows" in err and "to stdout" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["team"] for r in rows] == ['\'=HYPERLINK("http://x")', "payments", "search"]
    assert [r["request_count"] for r in rows] == ["1", "3", "2"]


async def test_export_failure_leaves_no_file(capsys, addr, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    code, _, err = await cli(capsys, addr, "usage", "export", "--by", "colour", "--output", str(target))
    assert code == 1 and err.count("\n") == 1 and "group_by" in err
    assert listing(tmp_path) == []


# errors


async def test_bad_filter_is_one_line(capsys, addr) -> None:
    code, out, err = await cli(capsys, addr, "usage", "summary", "--filter", 'team = "payments" AND (')
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("llmmeter: error: GetSummary on the query service")
    assert "INVALID_ARGUMENT" in err and "filter" in err and "Traceback" not in err


async def test_unreachable_address_is_one_line(capsys) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    code, out, err = await cli(capsys, nobody, "usage", "breakdown")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert nobody in err and "UNAVAILABLE" in err and "is the query service running" in err


async def test_query_addr_from_environment(capsys, addr, stored, monkeypatch) -> None:
    monkeypatch.setenv("LLMMETER_QUERY_ADDR", addr)
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["usage", "summary", "--since", "1h", "--format", "json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["summary"]["request_count"] == "6"


# time arguments


def test_spans_and_points() -> None:
    assert parse_span("30s") == timedelta(seconds=30)
    assert parse_span("15m") == timedelta(minutes=15)
    assert parse_span("24h") == timedelta(hours=24)
    assert parse_span("7d") == timedelta(days=7)
    assert parse_span("1h30m") == timedelta(minutes=90)
    for bad in ("", "0h", "h", "5", "1y", "-1h"):
        with pytest.raises(ValueError):
            parse_span(bad)
    assert parse_time("2h") == TimePoint(ago=timedelta(hours=2))
    when = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_time("2025-06-01T12:00:00Z").absolute == when
    assert parse_time("2025-06-01T14:00:00+02:00").absolute == when
    assert parse_time("2025-06-01T12:00:00").absolute == when  # no offset: UTC
    assert parse_time("2025-06-01").absolute == when - timedelta(hours=12)
    with pytest.raises(ValueError):
        parse_time("last tuesday")


def test_windows() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    hour = timedelta(hours=1)
    default = resolve_window(None, None, None, now)
    assert (default.start, default.end) == (now - 24 * hour, None)
    w = resolve_window(2 * hour, None, TimePoint(ago=hour), now)
    assert (w.start, w.end) == (now - 3 * hour, now - hour)
    w = resolve_window(None, TimePoint(ago=3 * hour), None, now)
    assert (w.start, w.end) == (now - 3 * hour, None)
    w = resolve_window(None, None, TimePoint(absolute=now - hour), now)
    assert (w.start, w.end) == (now - 25 * hour, now - hour)
    with pytest.raises(ValueError):
        resolve_window(None, TimePoint(ago=hour), TimePoint(ago=2 * hour), now)
