"""`llmmeter alerts` against the real alerts service (itself reading the real query service).

The CLI runs in a worker thread exactly as from a shell; stdout, stderr and
exit codes are checked. `rules apply` is applied twice to show it is idempotent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmmeter.cli.main import build_parser, main
from llmmeter_alerts.server import AlertsServer

from records import ingest, record

RULES = """\
rules:
  - name: payments-error-rate
    metric: error_rate            # or latency_p95, ttft_p95, cost, requests, ...
    filter: 'team = "payments"'
    group_by: model               # optional: one alert per model
    window: 5m
    every: 30s                    # evaluation interval
    for: 2m
    keep_firing_for: 5m
    min_requests: 20
    warning: "> 0.05"
    critical: "> 0.2"
    no_data: ok                   # ok | keep | alert
    labels: {owner: payments}
    annotation: "{{ group }} error rate is {{ value }}"
    notify:
      - webhook: {url: "https://hooks.example.com/llm", secret: "..."}   # or secret_env: NAME
      - slack: {url: "https://hooks.slack.com/services/T/B/X"}
    renotify: 1h
  - name: search-budget
    filter: 'team = "search"'
    budget: {period: month, limit: 2500, at: [50, 80, 100]}
    notify: [log]
"""


@pytest.fixture
def alerts_addr(alerts_server: AlertsServer) -> str:
    return f"127.0.0.1:{alerts_server.port}"


async def cli(capsys: pytest.CaptureFixture[str], addr: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, "--alerts-addr", addr])
    out, err = capsys.readouterr()
    return code, out, err


async def test_rules_apply_is_idempotent_and_crud(
        capsys: pytest.CaptureFixture[str], alerts_addr: str, tmp_path: Path, ingest_stub: object) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "apply", str(path))
    assert (code, err) == (0, "")
    assert out.split("\n")[:2] == ["created payments-error-rate", "created search-budget"]
    code, first, _ = await cli(capsys, alerts_addr, "alerts", "rules", "show", "payments-error-rate",
                               "--format", "json")
    code, out, _ = await cli(capsys, alerts_addr, "alerts", "rules", "apply", str(path), "--format", "json")
    assert json.loads(out) == {"rules": [{"name": "payments-error-rate", "action": "updated"},
                                         {"name": "search-budget", "action": "updated"}]}
    code, second, _ = await cli(capsys, alerts_addr, "alerts", "rules", "show", "payments-error-rate",
                                "--format", "json")
    a, b = json.loads(first), json.loads(second)
    a.pop("update_time")
    b.pop("update_time")
    assert a == b
    assert a["metric"] == "METRIC_FAILURE_RATE" and a["for_duration"] == "120s" and a["group_by"] == "model"
    assert a["warning"] == {"comparison": "COMPARISON_GREATER", "value": 0.05}
    assert a["channels"][0]["webhook"]["secret"] == ""  # never read back

    code, out, _ = await cli(capsys, alerts_addr, "alerts", "rules", "list", "--format", "json")
    assert [r["name"] for r in json.loads(out)["rules"]] == ["payments-error-rate", "search-budget"]
    code, out, _ = await cli(capsys, alerts_addr, "alerts", "rules", "list")
    assert "budget month $2500" in out and "payments-error-rate" in out

    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "update", "payments-error-rate",
                               "--window", "10m", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["rules"][0]["window"] == "600s"

    code, out, err = await cli(
        capsys, alerts_addr, "alerts", "rules", "create", "latency", "--metric", "latency_p95",
        "--window", "15m", "--warning", "> 2000", "--log", "--label", "owner=platform")
    assert code == 0, err
    now = datetime.now(UTC).replace(microsecond=0)
    await ingest(ingest_stub, [record(now - timedelta(minutes=2), latency_ms=3000) for _ in range(5)])
    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "test", "latency", "--format", "json")
    assert code == 0, err
    result = json.loads(out)["results"][0]
    assert result["severity"] == "SEVERITY_WARNING" and result["request_count"] == "5"

    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "create", "x",
                               "--metric", "latency_p95", "--window", "0s", "--warning", "> 1")
    assert code == 1 and out == "" and err.count("\n") == 1 and "rule.window" in err

    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "delete", "latency")
    assert (code, out) == (0, "deleted rule latency\n")
    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "show", "latency")
    assert code == 1 and "no rule named 'latency'" in err


async def test_bad_rules_file_names_the_rule_and_key(
        capsys: pytest.CaptureFixture[str], alerts_addr: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: a\n    metric: error_rate\n    windw: 5m\n")
    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "apply", str(path))
    assert code == 1 and out == "" and f"{path}: rules[0].windw: unknown key" in err
    path.write_text("rules:\n  - name: a\n    metric: error_rate\n    warning: 'above 3'\n")
    code, out, err = await cli(capsys, alerts_addr, "alerts", "rules", "apply", str(path))
    assert code == 1 and "rules[0].warning: 'above 3' is not a comparison" in err


async def test_alerts_events_silences(capsys: pytest.CaptureFixture[str], alerts_addr: str) -> None:
    code, out, err = await cli(capsys, alerts_addr, "alerts", "list", "--format", "json")
    assert (code, json.loads(out)) == (0, {"alerts": []})
    code, out, err = await cli(capsys, alerts_addr, "alerts", "events", "--format", "json")
    assert (code, json.loads(out)) == (0, {"events": []})
    code, out, err = await cli(capsys, alerts_addr, "alerts", "silence", "create", "--match", "rule=a",
                               "--match", "group=~gpt-.*", "--duration", "2h", "--comment", "deploy",
                               "--format", "json")
    assert code == 0, err
    silence = json.loads(out)["silences"][0]
    assert silence["matchers"][1] == {"name": "group", "value": "gpt-.*", "regex": True}
    code, out, err = await cli(capsys, alerts_addr, "alerts", "silence", "list")
    assert "rule=a, group=~gpt-.*" in out and "deploy" in out
    code, out, err = await cli(capsys, alerts_addr, "alerts", "silence", "delete", silence["id"])
    assert (code, out) == (0, f"deleted silence {silence['id']}\n")
    code, out, err = await cli(capsys, alerts_addr, "alerts", "silence", "delete", silence["id"])
    assert code == 1 and "no silence" in err


Parsers = list[tuple[list[str], argparse.ArgumentParser]]


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> Parsers:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _walk(sub, [*path, name])
    return out


def test_every_alerts_command_has_examples() -> None:
    alerts = [(p, sub) for p, sub in _walk(build_parser(), []) if p[:1] == ["alerts"]]
    assert len(alerts) >= 15
    for path, sub in alerts:
        assert sub.epilog and "examples:" in sub.epilog, path


def test_every_latency_metric_is_accepted_by_rule_validation() -> None:
    from llmmeter.cli.alerts_cmd import metric
    from llmmeter_alerts import rules as rules_mod

    for name in ("tpot", "itl", "latency_p50", "latency_p75", "ttft_p99", "cache_write_tokens"):
        value = metric(name)
        assert rules_mod.METRICS[value].summary is not None, name
        assert rules_mod.METRICS[value].row is not None, name
