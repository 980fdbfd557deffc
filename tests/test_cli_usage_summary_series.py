"""`llmmeter usage summary` and `usage series` against the real query service: exact numbers, windows.

Records are stored through the real ingest service (the `stored` fixture,
conftest.py), the CLI runs in a worker thread exactly as from a shell, and
its stdout/stderr are checked: the summary in every format, over relative
and absolute windows, time series per group as JSON, CSV and charts, and the
usage errors of their arguments.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest

from llmmeter.v1 import query_pb2

from cli_helpers import cli, rfc3339

SUMMARY_KEYS = {f.name for f in query_pb2.Summary.DESCRIPTOR.fields}


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
    assert cards["time to first token"] == "233 ms"  # (200 + 400 + 100) / 3 streamed calls
    # the failed calls were not streamed: no TTFT at all, which is not a TTFT of 0 ms
    code, out, _ = await cli(capsys, addr, "usage", "summary", "--since", "1h",
                             "--filter", "status_code >= 500")
    assert code == 0
    ttft = next(line for line in out.splitlines() if line.strip().startswith("time to first token"))
    assert re.split(r"\s{2,}", ttft.strip()) == ["time to first token", "-", "no streamed requests"]
    # nothing in the window: no rate or latency to show, rather than 0.0% and 0 ms
    code, out, _ = await cli(capsys, addr, "usage", "summary", "--since", "10m", "--to", "50m")
    cards = dict(re.split(r"\s{2,}", line.strip())[:2] for line in out.splitlines()[1:-1])
    assert (code, cards["requests"], cards["success rate"], cards["latency"]) == (0, "0", "-", "-")
    code, out, _ = await cli(capsys, addr, "usage", "summary", "--since", "1h", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and set(rows[0]) == SUMMARY_KEYS
    assert (rows[0]["request_count"], rows[0]["cost_exact"], rows[0]["error_count"]) == ("6", "0.3351", "2")


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
    # ranked by cost, the team with two requests but $0.305 of the $0.3351 is the one shown
    _, out, _ = await cli(capsys, addr, "usage", "series", *window, "--by", "team", "--top", "1",
                          "--rank-by", "cost", "--format", "json")
    groups = [(s["group"], sum(p["value"] for p in s["points"])) for s in json.loads(out)["series"]]
    assert groups == [("search", 2), ("other", 4)]
    code, out, err = await cli(capsys, addr, "usage", "series", *window, "--by", "team", "--rank-by", "rps")
    assert code == 1 and out == "" and "rank_by" in err and err.count("\n") == 1


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


async def test_series_table_values_carry_their_units(capsys, addr, stored) -> None:
    window = ("--from", rfc3339(stored), "--to", rfc3339(stored + timedelta(minutes=5)),
              "--granularity", "1m")
    code, out, _ = await cli(capsys, addr, "usage", "series", *window, "--metric", "cost", "--metric",
                             "latency_p95", "--metric", "failure_rate", "--metric", "input_tokens")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()
             if line.strip() and not line.startswith("window")}
    cost = next(v for k, v in lines.items() if k.startswith("cost"))
    assert "$0.3351" in cost  # the total of the six records' cost, in dollars
    assert "600 ms" in next(v for k, v in lines.items() if k.startswith("latency"))
    assert "%" in next(v for k, v in lines.items() if k.startswith("failure"))
    assert "tok" in next(v for k, v in lines.items() if k.startswith("input"))
