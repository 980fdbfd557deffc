"""What `llmmeter alerts` prints: tables for people and JSON documents for scripts.

`--format json` of the alerts commands is one JSON document per command
(`{"rules": [...]}`, `{"alerts": [...]}`, ...) holding the messages in
protobuf's JSON mapping; the tables spell enums, spans and thresholds the way
the flags take them (`firing`, `5m`, `> 0.05`) so what is shown can be typed
back.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from google.protobuf import duration_pb2
from rich.table import Table

from llmmeter.cli.alerts_rules import COMPARISONS
from llmmeter.cli.render import console, message_dict
from llmmeter.timeparse import format_timestamp
from llmmeter.v1 import alerts_pb2, query_pb2

_STATE_NAMES: dict[int, str] = {int(v): k for k, v in alerts_pb2.AlertState.items()}


def print_document(obj: Any) -> None:
    """Prints a JSON document on stdout, indented, with non-ASCII text as is."""
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _span(d: duration_pb2.Duration) -> str:
    s = d.seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _cond(t: alerts_pb2.Threshold) -> str:
    ops = {v: k for k, v in COMPARISONS.items()}
    return f"{ops[t.comparison]} {t.value:g}" if t.comparison else ""


def _metric_name(rule: alerts_pb2.Rule) -> str:
    return query_pb2.Metric.Name(rule.metric).removeprefix("METRIC_").lower()


def _severity(value: alerts_pb2.Severity.ValueType) -> str:
    """`warning`, `critical`, or "" when there is none."""
    sev = alerts_pb2.Severity.Name(value).removeprefix("SEVERITY_").lower()
    return "" if sev == "unspecified" else sev


def state_name(value: int) -> str:
    """`firing`, `pending`, ... of an AlertState value ("" when unknown)."""
    return _STATE_NAMES.get(value, "").removeprefix("ALERT_STATE_").lower()


def print_rules(rules: list[alerts_pb2.Rule], fmt: str) -> None:
    """Prints rules as one table row each (budget rules show period, limit and percentages)."""
    if fmt == "json":
        print_document({"rules": [message_dict(r) for r in rules]})
        return
    table = Table("name", "metric", "filter", "group_by", "window", "every", "warning", "critical")
    for r in rules:
        if r.budget.period:
            period = alerts_pb2.BudgetPeriod.Name(r.budget.period).removeprefix("BUDGET_PERIOD_").lower()
            table.add_row(
                r.name,
                f"budget {period} ${r.budget.limit:g}",
                r.filter,
                r.group_by,
                "",
                _span(r.every),
                "",
                ",".join(f"{p:g}%" for p in r.budget.percents),
            )
        else:
            table.add_row(
                r.name,
                _metric_name(r),
                r.filter,
                r.group_by,
                _span(r.window),
                _span(r.every),
                _cond(r.warning),
                _cond(r.critical),
            )
    console().print(table)


def print_test_results(response: alerts_pb2.TestRuleResponse) -> None:
    """Prints what one evaluation of a rule found, a row per group."""
    table = Table("group", "value", "requests", "severity", "why")
    for r in response.results:
        table.add_row(
            r.group or "-",
            f"{r.value:.6g}" if r.has_value else "no data",
            f"{r.request_count:,}",
            _severity(r.severity),
            r.message,
        )
    console().print(table)


def print_alerts(alerts: list[alerts_pb2.Alert], fmt: str) -> None:
    """Prints the current alerts, a row per rule and group."""
    if fmt == "json":
        print_document({"alerts": [message_dict(a) for a in alerts]})
        return
    table = Table("rule", "group", "state", "severity", "value", "since", "silenced", "annotation")
    for a in alerts:
        table.add_row(
            a.rule,
            a.group or "-",
            state_name(a.state),
            _severity(a.severity),
            f"{a.value:.6g}" if a.has_value else "-",
            format_timestamp(a.state_time),
            "yes" if a.silenced else "",
            a.annotation,
        )
    console().print(table)


def event_row(e: alerts_pb2.AlertEvent) -> list[str]:
    """The cells of one history event: time, rule, group, kind, what happened, message."""
    kind = alerts_pb2.AlertEventKind.Name(e.kind).removeprefix("ALERT_EVENT_KIND_").lower()
    what = (
        f"{state_name(e.from_state) or '-'} -> {state_name(e.to_state)}"
        if kind == "state_change"
        else e.channel
    )
    if kind == "delivery":
        what += f" #{e.attempt} {'ok' if e.success else 'failed'}"
    return [format_timestamp(e.time), e.rule, e.group or "-", kind, what, e.message]


def print_events(events: Iterable[alerts_pb2.AlertEvent], fmt: str) -> None:
    """Prints history events, as given (newest first from the service)."""
    if fmt == "json":
        print_document({"events": [message_dict(e) for e in events]})
        return
    table = Table("time", "rule", "group", "kind", "what", "message")
    for e in events:
        table.add_row(*event_row(e))
    console().print(table)


def print_silences(silences: list[alerts_pb2.Silence], fmt: str) -> None:
    """Prints silences with their matchers written as `--match` takes them."""
    if fmt == "json":
        print_document({"silences": [message_dict(s) for s in silences]})
        return
    table = Table("id", "matchers", "start", "end", "comment")
    for s in silences:
        matchers = ", ".join(f"{m.name}{'=~' if m.regex else '='}{m.value}" for m in s.matchers)
        table.add_row(s.id, matchers, format_timestamp(s.start_time), format_timestamp(s.end_time), s.comment)
    console().print(table)
