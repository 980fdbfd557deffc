"""Alert rules as documents: the YAML of `rules apply` and the flags of `rules create`/`rules update`.

Both ways of writing a rule go through one parser, so a rule file and a
command line take the same keys, accept the same spellings (`error_rate`,
`> 0.05`, `5m`) and fail with the same messages naming the offending key,
before anything is sent to the alerts service.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from google.protobuf import duration_pb2

from llmmeter.timeparse import parse_span
from llmmeter.v1 import alerts_pb2, query_pb2

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
#: The comparison operators a threshold is written with (and shown with in listings).
COMPARISONS = {
    ">": alerts_pb2.COMPARISON_GREATER,
    ">=": alerts_pb2.COMPARISON_GREATER_OR_EQUAL,
    "<": alerts_pb2.COMPARISON_LESS,
    "<=": alerts_pb2.COMPARISON_LESS_OR_EQUAL,
}
_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+)\s*$")
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
    return alerts_pb2.Threshold(comparison=COMPARISONS[match.group(1)], value=float(match.group(2)))


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


def add_rule_flags(p: argparse.ArgumentParser) -> None:
    """Adds the rule keys as flags (`--metric`, `--window`, ...) for `rules create` and `rules update`."""
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
        "--webhook-secret-env", metavar="NAME",
        help="env var of the alerts service with the secret (LLMMETER_WEBHOOK_SECRET_..., the operator's)",
    )
    g.add_argument("--slack", action="append", metavar="URL", help="a Slack incoming webhook (repeatable)")
    g.add_argument("--log", action="store_true", help="notify to the alerts service's log")
    g.add_argument("--renotify", metavar="SPAN", help="re-notify a still-firing alert after this long")
    g.add_argument("--budget", metavar="PERIOD:LIMIT", help="a budget rule, e.g. day:100 or month:2500 (USD)")
    g.add_argument("--budget-at", metavar="PERCENTS", help="notify at these percentages (default 80,100)")


def doc_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The rule document the flags of `add_rule_flags` spell, for :func:`rule_from_doc` to check."""
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
