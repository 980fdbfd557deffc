"""`llmmeter usage`: errors on one line, the query address, and the time arguments every subcommand takes.

A bad filter or an unreachable query service is one line on stderr, not a
traceback; the address can come from the environment. The time arguments
(`--since`, `--from`, `--to`) are parsed and resolved into windows without a
server.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from llmmeter.cli.main import main
from llmmeter.timeparse import TimePoint, parse_span, parse_time, resolve_window
from llmmeter_common.pgcluster import free_port

from cli_helpers import cli

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
