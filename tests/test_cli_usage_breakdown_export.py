"""`llmmeter usage breakdown` and `usage export` against the real query service: usage per group.

Records are stored through the real ingest service (the `stored` fixture,
conftest.py), the CLI runs in a worker thread exactly as from a shell, and
its stdout/stderr and files are checked: breakdowns sorted and cut to the
top groups in every format, and aggregates exported to a file or stdout.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from llmmeter.v1 import query_pb2

from cli_helpers import cli, listing, table_cells

ROW_KEYS = {f.name for f in query_pb2.BreakdownRow.DESCRIPTOR.fields}


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
    header = next(line for line in out.splitlines() if "requests" in line)
    claude = table_cells(header, table_rows[0])
    assert claude["tpm"] == f"{(10 + 1000 + 500 + 7 + 3) / 60:,.1f}"  # u-3, u-5, u-6 over the hour
    assert not table_rows[0].rstrip(" │").endswith("-")  # claude has a streamed call
    code, out, _ = await cli(capsys, addr, "usage", "breakdown", "--since", "1h",
                             "--filter", "status_code >= 500")
    failed = [line for line in out.splitlines() if "claude" in line or "gpt-4o" in line]
    assert len(failed) == 2 and all(line.rstrip(" │").endswith("-") for line in failed)  # ttft p95: no data
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
