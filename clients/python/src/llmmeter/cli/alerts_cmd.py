"""`llmmeter alerts`: alert rules, current alerts, history, live changes and silences.

Rules are named; every command that takes a rule takes its name. `rules apply
FILE` creates or updates the rules of a YAML file (the format of the README),
so a repository of rule files can be applied again and again with the same
result. `rules create` and `rules update` take the same keys as flags.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from google.protobuf import duration_pb2
from rich.table import Table

from llmmeter.cli.common import positive_int
from llmmeter.cli.render import console, message_dict, print_json
from llmmeter.client import AlertsClient
from llmmeter.config import ClientConfig
from llmmeter.errors import LlmmeterError
from llmmeter.timeparse import format_timestamp, parse_span, timestamp
from llmmeter.v1 import alerts_pb2, query_pb2

_GROUP_EPILOG = """\
examples:
  llmmeter alerts rules apply rules.yaml
  llmmeter alerts list --state firing
  llmmeter alerts events --rule payments-error-rate
  llmmeter alerts watch
  llmmeter alerts silence create --match rule=payments-error-rate --duration 2h --comment deploy
"""

_RULES_EPILOG = """\
examples:
  llmmeter alerts rules apply rules.yaml
  llmmeter alerts rules list
  llmmeter alerts rules show payments-error-rate --format json
  llmmeter alerts rules test payments-error-rate
"""

_CREATE_EPILOG = """\
examples:
  llmmeter alerts rules create payments-error-rate --metric error_rate --filter 'team = "payments"' \\
      --group-by model --window 5m --for 2m --warning '> 0.05' --critical '> 0.2' \\
      --webhook https://hooks.example.com/llm --webhook-secret-env HOOK_SECRET
  llmmeter alerts rules create daily-budget --budget day:100 --budget-at 80,100 \\
      --filter 'team = "search"' --slack https://hooks.slack.com/services/T/B/X

Metrics: error_rate, failures, requests, requests_per_second, successes,
success_rate, latency_avg, latency_p50/p75/p90/p95/p99, ttft_avg,
ttft_p50/p75/p90/p95/p99, itl, tpot, cost, input_tokens, output_tokens,
total_tokens, cache_read_tokens, cache_write_tokens, tokens_per_minute.
"""

_UPDATE_EPILOG = """\
examples:
  llmmeter alerts rules update payments-error-rate --window 10m --critical '> 0.3'
  llmmeter alerts rules update payments-error-rate --no-data keep

Only the fields given are changed.
"""

_APPLY_EPILOG = """\
examples:
  llmmeter alerts rules apply rules.yaml
  llmmeter alerts rules apply rules.yaml --format json

Rules of the file are created, or updated in full when one of that name
exists; rules not in the file are left alone. Running it twice changes nothing.
"""

_SHOW_EPILOG = """\
examples:
  llmmeter alerts rules show payments-error-rate
  llmmeter alerts rules show payments-error-rate --format json
"""

_DELETE_EPILOG = """\
examples:
  llmmeter alerts rules delete payments-error-rate
"""

_TEST_EPILOG = """\
examples:
  llmmeter alerts rules test payments-error-rate
  llmmeter alerts rules test payments-error-rate --format json

Evaluates the rule once against current data: no notification, no state change.
"""

_LIST_EPILOG = """\
examples:
  llmmeter alerts list
  llmmeter alerts list --state firing --rule payments-error-rate --format json
"""

_EVENTS_EPILOG = """\
examples:
  llmmeter alerts events
  llmmeter alerts events --rule payments-error-rate --kind delivery --limit 20
"""

_WATCH_EPILOG = """\
examples:
  llmmeter alerts watch
  llmmeter alerts watch --rule payments-error-rate --format json --max 10

Runs until Ctrl-C, or until --max changes were shown.
"""

_SILENCE_EPILOG = """\
examples:
  llmmeter alerts silence create --match rule=payments-error-rate --duration 2h --comment deploy
  llmmeter alerts silence create --match owner=payments --match 'group=~gpt-4.*' --until 2025-06-01T18:00:00Z
  llmmeter alerts silence list --all
  llmmeter alerts silence delete 3
"""

_METRIC_ALIASES = {
    "error_rate": "failure_rate",
    "errors": "failures",
    "error_count": "failures",
    "failure_count": "failures",
    "tpm": "tokens_per_minute",
    "rps": "requests_per_second",
    "tpot": "tpot_avg",
    "itl": "itl_avg",
    "time_per_output_token": "tpot_avg",
}
_COMPARISONS = {
    ">": alerts_pb2.COMPARISON_GREATER,
    ">=": alerts_pb2.COMPARISON_GREATER_OR_EQUAL,
    "<": alerts_pb2.COMPARISON_LESS,
    "<=": alerts_pb2.COMPARISON_LESS_OR_EQUAL,
}
_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+)\s*$")
_STATE_NAMES: dict[int, str] = {int(v): k for k, v in alerts_pb2.AlertState.items()}
_KEYS = {
    "name",
    "metric",
    "filter",
    "group_by",
    "window",
    "every",
    "for",
    "keep_firing_for",
    "min_requests",
    "warning",
    "critical",
    "no_data",
    "labels",
    "annotation",
    "notify",
    "renotify",
    "budget",
}


class RuleError(ValueError):
    """A rule document is wrong; the message names the key."""


def metric(name: str) -> query_pb2.Metric.ValueType:
    """`error_rate`, `latency_p95`, `METRIC_COST` -> the Metric value."""
    key = name.strip().lower().removeprefix("metric_")
    key = _METRIC_ALIASES.get(key, key)
    try:
        return query_pb2.Metric.Value("METRIC_" + key.upper())
    except ValueError:
        raise RuleError(f"metric: unknown metric {name!r}") from None


def threshold(text: Any, key: str) -> alerts_pb2.Threshold:
    """`"> 0.05"` -> a Threshold."""
    match = _THRESHOLD.match(str(text))
    if match is None:
        raise RuleError(f"{key}: {text!r} is not a comparison like '> 0.05'")
    return alerts_pb2.Threshold(comparison=_COMPARISONS[match.group(1)], value=float(match.group(2)))


def duration(text: Any, key: str, allow_zero: bool = True) -> duration_pb2.Duration:
    """`5m`, `30s`, `1h30m` (or 0) -> a Duration."""
    d = duration_pb2.Duration()
    if allow_zero and str(text).strip() in ("0", "0s"):
        return d
    try:
        d.FromTimedelta(parse_span(str(text)))
    except ValueError as error:
        raise RuleError(f"{key}: {error}") from None
    return d


def _channel(item: Any, i: int) -> alerts_pb2.NotificationChannel:
    key = f"notify[{i}]"
    if item == "log":
        item = {"log": {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise RuleError(f"{key}: one of {{webhook: ...}}, {{slack: ...}}, log")
    kind, spec = next(iter(item.items()))
    spec = spec or {}
    ch = alerts_pb2.NotificationChannel()
    if kind == "webhook" and isinstance(spec, dict):
        ch.webhook.url = str(spec.get("url", ""))
        ch.webhook.secret = str(spec.get("secret", ""))
        ch.webhook.secret_env = str(spec.get("secret_env", ""))
    elif kind == "slack" and isinstance(spec, dict):
        ch.slack.url = str(spec.get("url", ""))
    elif kind == "log":
        ch.log.SetInParent()
    else:
        raise RuleError(f"{key}: unknown channel {kind!r} (webhook, slack, log)")
    return ch


def rule_from_doc(doc: Any) -> tuple[alerts_pb2.Rule, list[str]]:
    """A rule of a YAML file (or of flags) and the Rule fields it sets."""
    if not isinstance(doc, dict):
        raise RuleError("a rule must be a mapping")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise RuleError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
    rule = alerts_pb2.Rule(name=str(doc.get("name", "")))
    paths: list[str] = []
    simple = {"filter": "filter", "group_by": "group_by", "annotation": "annotation"}
    for key, field in simple.items():
        if key in doc:
            setattr(rule, field, str(doc[key] or ""))
            paths.append(field)
    if "metric" in doc:
        rule.metric = metric(str(doc["metric"]))
        paths.append("metric")
    for key, field in (
        ("window", "window"),
        ("every", "every"),
        ("for", "for_duration"),
        ("keep_firing_for", "keep_firing_for"),
        ("renotify", "renotify_interval"),
    ):
        if key in doc:
            getattr(rule, field).CopyFrom(duration(doc[key], key))
            paths.append(field)
    if "min_requests" in doc:
        try:
            rule.min_requests = int(doc["min_requests"])
        except (TypeError, ValueError):
            raise RuleError("min_requests: must be an integer") from None
        paths.append("min_requests")
    for key in ("warning", "critical"):
        if key in doc:
            if doc[key] not in (None, ""):
                getattr(rule, key).CopyFrom(threshold(doc[key], key))
            paths.append(key)
    if "no_data" in doc:
        value = str(doc["no_data"]).lower()
        if value not in ("ok", "keep", "alert"):
            raise RuleError(f"no_data: {doc['no_data']!r} is not ok, keep or alert")
        rule.no_data = alerts_pb2.NoDataPolicy.Value("NO_DATA_POLICY_" + value.upper())
        paths.append("no_data")
    if "labels" in doc:
        if not isinstance(doc["labels"], dict):
            raise RuleError("labels: must be a mapping")
        rule.labels.update({str(k): str(v) for k, v in doc["labels"].items()})
        paths.append("labels")
    if "notify" in doc:
        items = doc["notify"] or []
        if not isinstance(items, list):
            raise RuleError("notify: must be a list")
        rule.channels.extend(_channel(item, i) for i, item in enumerate(items))
        paths.append("channels")
    if "budget" in doc:
        b = doc["budget"]
        if not isinstance(b, dict):
            raise RuleError("budget: must be a mapping of period, limit, at")
        period = str(b.get("period", "")).lower()
        if period not in ("day", "month"):
            raise RuleError("budget.period: day or month")
        rule.budget.period = alerts_pb2.BudgetPeriod.Value("BUDGET_PERIOD_" + period.upper())
        try:
            rule.budget.limit = float(b.get("limit", 0))
            rule.budget.percents.extend(float(str(p).rstrip("%")) for p in b.get("at", []) or [])
        except (TypeError, ValueError):
            raise RuleError("budget: limit and at must be numbers") from None
        paths.append("budget")
    return rule, paths


def load_rules_file(path: str) -> list[alerts_pb2.Rule]:
    """The rules of a YAML file; RuleError naming the rule and key when one is wrong."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RuleError(f"{path}: not YAML: {error}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RuleError(f"{path}: expected a mapping with a `rules` list")
    out, seen = [], set()
    for i, item in enumerate(doc["rules"]):
        try:
            rule, _ = rule_from_doc(item)
        except RuleError as error:
            raise RuleError(f"{path}: rules[{i}].{error}") from None
        if not rule.name:
            raise RuleError(f"{path}: rules[{i}].name: required")
        if rule.name in seen:
            raise RuleError(f"{path}: rules[{i}].name: {rule.name!r} appears twice")
        seen.add(rule.name)
        out.append(rule)
    return out


def _add_rule_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rule")
    g.add_argument("--metric", help="error_rate, latency_p95, ttft_p95, cost, requests, ...")
    g.add_argument("--filter", help="query-service filter, e.g. 'team = \"payments\"'")
    g.add_argument("--group-by", help="one alert per value of a dimension or metadata.<key>")
    g.add_argument("--window", metavar="SPAN", help="evaluation window, e.g. 5m")
    g.add_argument("--every", metavar="SPAN", help="evaluation interval (default 1m)")
    g.add_argument("--for", dest="for_", metavar="SPAN", help="pending this long before firing")
    g.add_argument("--keep-firing-for", metavar="SPAN", help="keep firing this long after it stops")
    g.add_argument("--min-requests", type=int, metavar="N", help="do not judge windows with fewer requests")
    g.add_argument("--warning", metavar="COND", help="warning condition, e.g. '> 0.05'")
    g.add_argument("--critical", metavar="COND", help="critical condition, e.g. '> 0.2'")
    g.add_argument("--no-data", choices=("ok", "keep", "alert"), help="what no requests mean")
    g.add_argument("--label", action="append", metavar="KEY=VALUE", help="a label (repeatable)")
    g.add_argument("--annotation", help="template: {{ rule }} {{ group }} {{ value }} {{ severity }}")
    g.add_argument("--webhook", action="append", metavar="URL", help="a signed JSON webhook (repeatable)")
    g.add_argument(
        "--webhook-secret-env", metavar="NAME", help="env var of the alerts service with the secret"
    )
    g.add_argument("--slack", action="append", metavar="URL", help="a Slack incoming webhook (repeatable)")
    g.add_argument("--log", action="store_true", help="notify to the alerts service's log")
    g.add_argument("--renotify", metavar="SPAN", help="re-notify a still-firing alert after this long")
    g.add_argument("--budget", metavar="PERIOD:LIMIT", help="a budget rule, e.g. day:100 or month:2500 (USD)")
    g.add_argument("--budget-at", metavar="PERCENTS", help="notify at these percentages (default 80,100)")


def _doc_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": args.name}
    for flag, key in (
        ("metric", "metric"),
        ("filter", "filter"),
        ("group_by", "group_by"),
        ("window", "window"),
        ("every", "every"),
        ("for_", "for"),
        ("keep_firing_for", "keep_firing_for"),
        ("min_requests", "min_requests"),
        ("warning", "warning"),
        ("critical", "critical"),
        ("no_data", "no_data"),
        ("annotation", "annotation"),
        ("renotify", "renotify"),
    ):
        if getattr(args, flag) is not None:
            doc[key] = getattr(args, flag)
    if args.label:
        labels = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep:
                raise RuleError(f"--label: {item!r} is not KEY=VALUE")
            labels[key] = value
        doc["labels"] = labels
    notify: list[Any] = [
        {"webhook": {"url": url, "secret_env": args.webhook_secret_env or ""}} for url in args.webhook or []
    ]
    notify += [{"slack": {"url": url}} for url in args.slack or []]
    if args.log:
        notify.append("log")
    if notify:
        doc["notify"] = notify
    if args.budget:
        period, _, limit = args.budget.partition(":")
        doc["budget"] = {"period": period, "limit": limit or 0}
        if args.budget_at:
            doc["budget"]["at"] = [p for p in args.budget_at.split(",") if p.strip()]
    return doc


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Adds the `alerts` command group to the `llmmeter` parser."""
    alerts = subparsers.add_parser(
        "alerts",
        help="alert rules, alerts, history, silences",
        description="Alert rules on usage metrics, their current state, history and silences.",
        epilog=_GROUP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = alerts.add_subparsers(dest="alerts_command", metavar="COMMAND", required=True)

    def add(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, epilog: str
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(
            name,
            parents=parents,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
        return p

    rules = sub.add_parser(
        "rules",
        help="create, list, show, update, delete, test and apply rules",
        description="Alert rules, by name.",
        epilog=_RULES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = rules.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)
    create = add(rsub, "create", "create a rule", _CREATE_EPILOG)
    create.add_argument("name", help="the rule's unique name")
    _add_rule_flags(create)
    create.set_defaults(handler=run_create)
    lst = add(rsub, "list", "list rules", _RULES_EPILOG)
    lst.set_defaults(handler=run_rules_list)
    show = add(rsub, "show", "show one rule", _SHOW_EPILOG)
    show.add_argument("name", help="the rule's name")
    show.set_defaults(handler=run_show)
    update = add(rsub, "update", "change fields of a rule", _UPDATE_EPILOG)
    update.add_argument("name", help="the rule's name")
    _add_rule_flags(update)
    update.set_defaults(handler=run_update)
    delete = add(rsub, "delete", "delete a rule, its alerts and history", _DELETE_EPILOG)
    delete.add_argument("name", help="the rule's name")
    delete.set_defaults(handler=run_delete)
    test = add(rsub, "test", "evaluate a rule once against current data, without notifying", _TEST_EPILOG)
    test.add_argument("name", help="the rule's name")
    test.set_defaults(handler=run_test)
    apply = add(rsub, "apply", "create or update the rules of a YAML file", _APPLY_EPILOG)
    apply.add_argument("file", metavar="FILE", help="rules file (YAML), or - for stdin")
    apply.set_defaults(handler=run_apply)

    alist = add(sub, "list", "current alerts: state per rule and group", _LIST_EPILOG)
    alist.add_argument("--rule", help="only this rule")
    alist.add_argument("--state", choices=("ok", "pending", "firing", "resolved"), help="only this state")
    alist.set_defaults(handler=run_alerts_list)
    events = add(sub, "events", "the history: state changes, notifications, deliveries", _EVENTS_EPILOG)
    events.add_argument("--rule", help="only this rule")
    events.add_argument("--kind", choices=("state_change", "notification", "delivery", "silenced"))
    events.add_argument("--limit", type=positive_int, default=50, metavar="N", help="newest N (default 50)")
    events.set_defaults(handler=run_events)
    watch = add(sub, "watch", "follow state changes as they happen", _WATCH_EPILOG)
    watch.add_argument("--rule", help="only this rule")
    watch.add_argument("--max", dest="max_events", type=positive_int, metavar="N", help="stop after N")
    watch.set_defaults(handler=run_watch)

    silence = sub.add_parser(
        "silence",
        help="mute notifications: create, list, delete",
        description="Silences mute the notifications of matching alerts for a time.",
        epilog=_SILENCE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ssub = silence.add_subparsers(dest="silence_command", metavar="COMMAND", required=True)
    screate = add(ssub, "create", "create a silence", _SILENCE_EPILOG)
    screate.add_argument(
        "--match",
        action="append",
        required=True,
        metavar="NAME=VALUE",
        help="rule=NAME, group=VALUE or LABEL=VALUE; =~ for a regex (repeatable, all must match)",
    )
    end = screate.add_mutually_exclusive_group(required=True)
    end.add_argument("--duration", metavar="SPAN", help="from now, e.g. 2h")
    end.add_argument("--until", metavar="TIME", help="end, RFC 3339")
    screate.add_argument("--comment", default="", help="why")
    screate.set_defaults(handler=run_silence_create)
    slist = add(ssub, "list", "list silences", _SILENCE_EPILOG)
    slist.add_argument("--all", action="store_true", help="include ended silences")
    slist.set_defaults(handler=run_silence_list)
    sdelete = add(ssub, "delete", "delete a silence", _SILENCE_EPILOG)
    sdelete.add_argument("id", help="the silence id")
    sdelete.set_defaults(handler=run_silence_delete)


def _usage_error(error: RuleError) -> LlmmeterError:
    return LlmmeterError(str(error))


def _json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _span(d: duration_pb2.Duration) -> str:
    s = d.seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _cond(t: alerts_pb2.Threshold) -> str:
    ops = {v: k for k, v in _COMPARISONS.items()}
    return f"{ops[t.comparison]} {t.value:g}" if t.comparison else ""


def _metric_name(rule: alerts_pb2.Rule) -> str:
    return query_pb2.Metric.Name(rule.metric).removeprefix("METRIC_").lower()


def _print_rules(rules: list[alerts_pb2.Rule], fmt: str) -> None:
    if fmt == "json":
        _json({"rules": [message_dict(r) for r in rules]})
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


async def run_create(args: argparse.Namespace, config: ClientConfig) -> int:
    """Creates a rule from flags."""
    try:
        rule, _ = rule_from_doc(_doc_from_flags(args))
    except RuleError as error:
        raise _usage_error(error) from None
    async with AlertsClient(config) as client:
        created = await client.create_rule(rule)
    _print_rules([created], args.format)
    return 0


async def run_update(args: argparse.Namespace, config: ClientConfig) -> int:
    """Changes the fields given as flags."""
    try:
        rule, paths = rule_from_doc(_doc_from_flags(args))
    except RuleError as error:
        raise _usage_error(error) from None
    if not paths:
        raise LlmmeterError("nothing to update: give at least one rule flag")
    async with AlertsClient(config) as client:
        updated = await client.update_rule(rule, paths)
    _print_rules([updated], args.format)
    return 0


async def run_rules_list(args: argparse.Namespace, config: ClientConfig) -> int:
    """Lists every rule."""
    async with AlertsClient(config) as client:
        rules = await client.list_rules()
    _print_rules(rules, args.format)
    return 0


async def run_show(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints one rule in full."""
    async with AlertsClient(config) as client:
        rule = await client.get_rule(args.name)
    if args.format == "json":
        print_json(rule)
    else:
        console().print_json(json.dumps(message_dict(rule)))
    return 0


async def run_delete(args: argparse.Namespace, config: ClientConfig) -> int:
    """Deletes a rule."""
    async with AlertsClient(config) as client:
        await client.delete_rule(args.name)
    if args.format == "json":
        _json({"deleted": args.name})
    else:
        print(f"deleted rule {args.name}")
    return 0


async def run_test(args: argparse.Namespace, config: ClientConfig) -> int:
    """Evaluates a rule once."""
    async with AlertsClient(config) as client:
        response = await client.test_rule(name=args.name)
    if args.format == "json":
        print_json(response)
        return 0
    table = Table("group", "value", "requests", "severity", "why")
    for r in response.results:
        sev = alerts_pb2.Severity.Name(r.severity).removeprefix("SEVERITY_").lower()
        table.add_row(
            r.group or "-",
            f"{r.value:.6g}" if r.has_value else "no data",
            f"{r.request_count:,}",
            "" if sev == "unspecified" else sev,
            r.message,
        )
    console().print(table)
    return 0


async def run_apply(args: argparse.Namespace, config: ClientConfig) -> int:
    """Creates or updates the rules of a file."""
    try:
        rules = load_rules_file(args.file)
    except RuleError as error:
        raise _usage_error(error) from None
    outcome: list[tuple[str, str]] = []
    async with AlertsClient(config) as client:
        existing = {r.name for r in await client.list_rules()}
        for rule in rules:
            if rule.name in existing:
                await client.update_rule(rule)
                outcome.append((rule.name, "updated"))
            else:
                await client.create_rule(rule)
                outcome.append((rule.name, "created"))
    if args.format == "json":
        _json({"rules": [{"name": n, "action": a} for n, a in outcome]})
    else:
        for name, action in outcome:
            print(f"{action} {name}")
    return 0


def _state(value: int) -> str:
    return _STATE_NAMES.get(value, "").removeprefix("ALERT_STATE_").lower()


async def run_alerts_list(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints the current alerts."""
    terms = []
    if args.rule:
        terms.append(f"rule = {json.dumps(args.rule)}")
    if args.state:
        terms.append(f"state = {args.state}")
    alerts: list[alerts_pb2.Alert] = []
    async with AlertsClient(config) as client:
        token = ""
        while True:
            page = await client.call(
                "ListAlerts",
                alerts_pb2.ListAlertsRequest(filter=" AND ".join(terms), page_size=1000, page_token=token),
            )
            alerts.extend(page.alerts)
            token = page.next_page_token
            if not token:
                break
    if args.format == "json":
        _json({"alerts": [message_dict(a) for a in alerts]})
        return 0
    table = Table("rule", "group", "state", "severity", "value", "since", "silenced", "annotation")
    for a in alerts:
        sev = alerts_pb2.Severity.Name(a.severity).removeprefix("SEVERITY_").lower()
        table.add_row(
            a.rule,
            a.group or "-",
            _state(a.state),
            "" if sev == "unspecified" else sev,
            f"{a.value:.6g}" if a.has_value else "-",
            format_timestamp(a.state_time),
            "yes" if a.silenced else "",
            a.annotation,
        )
    console().print(table)
    return 0


def _event_row(e: alerts_pb2.AlertEvent) -> list[str]:
    kind = alerts_pb2.AlertEventKind.Name(e.kind).removeprefix("ALERT_EVENT_KIND_").lower()
    what = f"{_state(e.from_state) or '-'} -> {_state(e.to_state)}" if kind == "state_change" else e.channel
    if kind == "delivery":
        what += f" #{e.attempt} {'ok' if e.success else 'failed'}"
    return [format_timestamp(e.time), e.rule, e.group or "-", kind, what, e.message]


async def run_events(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints the history, newest first."""
    terms = [f"rule = {json.dumps(args.rule)}"] if args.rule else []
    if args.kind:
        terms.append(f"kind = {args.kind}")
    async with AlertsClient(config) as client:
        page = await client.call(
            "ListAlertEvents",
            alerts_pb2.ListAlertEventsRequest(filter=" AND ".join(terms), page_size=min(args.limit, 1000)),
        )
    if args.format == "json":
        _json({"events": [message_dict(e) for e in page.events]})
        return 0
    table = Table("time", "rule", "group", "kind", "what", "message")
    for e in page.events:
        table.add_row(*_event_row(e))
    console().print(table)
    return 0


async def run_watch(args: argparse.Namespace, config: ClientConfig) -> int:
    """Follows state changes."""
    request = alerts_pb2.WatchAlertsRequest(filter=f"rule = {json.dumps(args.rule)}" if args.rule else "")
    shown = 0
    out = console()
    async with AlertsClient(config) as client:
        async for response in client.watch_alerts(request):
            if args.format == "json":
                sys.stdout.write(json.dumps(message_dict(response.event), ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                out.print("  ".join(_event_row(response.event)))
            shown += 1
            if args.max_events is not None and shown >= args.max_events:
                break
    return 0


def _matcher(text: str) -> alerts_pb2.Matcher:
    if "=~" in text:
        name, value = text.split("=~", 1)
        return alerts_pb2.Matcher(name=name.strip(), value=value, regex=True)
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise LlmmeterError(f"--match: {text!r} is not NAME=VALUE or NAME=~REGEX")
    return alerts_pb2.Matcher(name=name.strip(), value=value)


def _print_silences(silences: list[alerts_pb2.Silence], fmt: str) -> None:
    if fmt == "json":
        _json({"silences": [message_dict(s) for s in silences]})
        return
    table = Table("id", "matchers", "start", "end", "comment")
    for s in silences:
        matchers = ", ".join(f"{m.name}{'=~' if m.regex else '='}{m.value}" for m in s.matchers)
        table.add_row(s.id, matchers, format_timestamp(s.start_time), format_timestamp(s.end_time), s.comment)
    console().print(table)


async def run_silence_create(args: argparse.Namespace, config: ClientConfig) -> int:
    """Creates a silence."""
    now = datetime.now(UTC)
    try:
        if args.duration:
            end = now + parse_span(args.duration)
        else:
            end = datetime.fromisoformat(args.until.replace("Z", "+00:00"))
            end = end if end.tzinfo else end.replace(tzinfo=UTC)
    except ValueError as error:
        raise LlmmeterError(f"--duration/--until: {error}") from None
    silence = alerts_pb2.Silence(matchers=[_matcher(m) for m in args.match], comment=args.comment)
    silence.end_time.CopyFrom(timestamp(end))
    async with AlertsClient(config) as client:
        response = await client.call("CreateSilence", alerts_pb2.CreateSilenceRequest(silence=silence))
    _print_silences([response.silence], args.format)
    return 0


async def run_silence_list(args: argparse.Namespace, config: ClientConfig) -> int:
    """Lists silences."""
    async with AlertsClient(config) as client:
        response = await client.call(
            "ListSilences", alerts_pb2.ListSilencesRequest(show_expired=args.all, page_size=1000)
        )
    _print_silences(list(response.silences), args.format)
    return 0


async def run_silence_delete(args: argparse.Namespace, config: ClientConfig) -> int:
    """Deletes a silence."""
    async with AlertsClient(config) as client:
        await client.call("DeleteSilence", alerts_pb2.DeleteSilenceRequest(id=args.id))
    if args.format == "json":
        _json({"deleted": args.id})
    else:
        print(f"deleted silence {args.id}")
    return 0
