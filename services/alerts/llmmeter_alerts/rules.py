"""Alert rules: validation, defaults, update masks, and what a rule means to the state machine.

Rules travel as `llmmeter.v1.Rule` messages and are stored as their proto
JSON. Every check names the offending field (`rule.window`, `rule.channels[1].webhook.url`)
so the one interceptor reports INVALID_ARGUMENT with a BadRequest. The filter
and group_by are checked by the query service itself (see `metrics_source`),
the single owner of that syntax.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2, json_format
from google.protobuf.message import Message

from llmmeter.v1 import alerts_pb2, query_pb2
from llmmeter_alerts.statemachine import Condition, NoData, Op, Policy
from llmmeter_alerts.targets import mask_url
from llmmeter_common.errors import FieldViolation, InvalidArgument

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
_TEMPLATE_NAMES = {"rule", "group", "value", "severity", "state", "threshold", "metric"}
_OPS: dict[int, Op] = {
    alerts_pb2.COMPARISON_GREATER: ">", alerts_pb2.COMPARISON_GREATER_OR_EQUAL: ">=",
    alerts_pb2.COMPARISON_LESS: "<", alerts_pb2.COMPARISON_LESS_OR_EQUAL: "<=",
}
_NO_DATA: dict[int, NoData] = {
    alerts_pb2.NO_DATA_POLICY_UNSPECIFIED: "ok", alerts_pb2.NO_DATA_POLICY_OK: "ok",
    alerts_pb2.NO_DATA_POLICY_KEEP: "keep", alerts_pb2.NO_DATA_POLICY_ALERT: "alert",
}
DEFAULT_EVERY = timedelta(minutes=1)
DEFAULT_PERCENTS = (80.0, 100.0)
MAX_PERCENTS = 20
MUTABLE_FIELDS = frozenset(
    f.name for f in alerts_pb2.Rule.DESCRIPTOR.fields if f.name not in ("name", "create_time", "update_time"))

Summary = query_pb2.Summary
Row = query_pb2.BreakdownRow
Extract = Callable[[Any, float], float | None]
"""(summary or breakdown row, window minutes) -> value, None without data."""


def _count(attr: str) -> Extract:
    return lambda m, _minutes: float(getattr(m, attr))


def _mean(attr: str) -> Extract:
    return lambda m, _minutes: float(getattr(m, attr)) if m.request_count else None


def _failure_rate(m: Any, _minutes: float) -> float | None:
    return 1.0 - m.success_rate if m.request_count else None


@dataclass(frozen=True)
class MetricDef:
    """How one query-side metric is read from a GetSummary and from a GetBreakdown row."""

    summary: Extract | None
    row: Extract | None


M = query_pb2
METRICS: dict[int, MetricDef] = {
    M.METRIC_REQUESTS: MetricDef(_count("request_count"), _count("request_count")),
    M.METRIC_REQUESTS_PER_SECOND: MetricDef(lambda m, mins: m.request_count / (mins * 60),
                                            lambda m, mins: m.request_count / (mins * 60)),
    M.METRIC_SUCCESSES: MetricDef(_count("success_count"), _count("success_count")),
    M.METRIC_FAILURES: MetricDef(_count("error_count"), _count("failure_count")),
    M.METRIC_FAILURE_RATE: MetricDef(_failure_rate, _failure_rate),
    M.METRIC_SUCCESS_RATE: MetricDef(_mean("success_rate"), _mean("success_rate")),
    M.METRIC_LATENCY_AVG: MetricDef(_mean("latency_avg_ms"), _mean("latency_avg_ms")),
    M.METRIC_TTFT_AVG: MetricDef(_mean("ttft_avg_ms"), _mean("ttft_avg_ms")),
    M.METRIC_ITL_AVG: MetricDef(_mean("itl_avg_ms"), _mean("itl_avg_ms")),
    M.METRIC_TPOT_AVG: MetricDef(_mean("tpot_avg_ms"), _mean("tpot_avg_ms")),
    **{getattr(M, f"METRIC_{kind.upper()}_P{q}"): MetricDef(_mean(f"{kind}_p{q}_ms"),
                                                            _mean(f"{kind}_p{q}_ms"))
       for kind in ("latency", "ttft") for q in (50, 75, 90, 95, 99)},
    M.METRIC_COST: MetricDef(_count("cost"), _count("cost")),
    M.METRIC_INPUT_TOKENS: MetricDef(_count("input_tokens"), _count("input_tokens")),
    M.METRIC_OUTPUT_TOKENS: MetricDef(_count("output_tokens"), _count("output_tokens")),
    M.METRIC_CACHE_READ_TOKENS: MetricDef(_count("cache_read_tokens"), _count("cache_read_tokens")),
    M.METRIC_CACHE_WRITE_TOKENS: MetricDef(_count("cache_write_tokens"), _count("cache_write_tokens")),
    M.METRIC_TOTAL_TOKENS: MetricDef(_count("total_tokens"), _count("total_tokens")),
    M.METRIC_TOKENS_PER_MINUTE: MetricDef(lambda m, mins: m.total_tokens / mins, lambda m, mins: m.tpm),
}


def seconds(d: duration_pb2.Duration) -> timedelta:
    """A Duration as a timedelta."""
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def is_budget(rule: alerts_pb2.Rule) -> bool:
    """Whether the rule is a budget rule."""
    return rule.HasField("budget") and rule.budget.period != alerts_pb2.BUDGET_PERIOD_UNSPECIFIED


def condition(t: alerts_pb2.Threshold) -> Condition | None:
    """The threshold as a condition (None when unset)."""
    op = _OPS.get(t.comparison)
    return Condition(op, t.value) if op is not None else None


def policy(rule: alerts_pb2.Rule) -> Policy:
    """What the state machine needs of a (validated) rule."""
    return Policy(
        warning=condition(rule.warning), critical=condition(rule.critical),
        for_=seconds(rule.for_duration), keep_firing_for=seconds(rule.keep_firing_for),
        min_requests=rule.min_requests, no_data=_NO_DATA[rule.no_data],
        renotify=seconds(rule.renotify_interval),
    )


def every(rule: alerts_pb2.Rule) -> timedelta:
    """The evaluation interval."""
    return seconds(rule.every) if rule.HasField("every") else DEFAULT_EVERY


def percents(rule: alerts_pb2.Rule) -> tuple[float, ...]:
    """The budget percentages, sorted."""
    return tuple(sorted(rule.budget.percents)) or DEFAULT_PERCENTS


def _duration(rule: Message, name: str, lo: timedelta, hi: timedelta,
              bad: list[FieldViolation], required: bool = False) -> None:
    if not rule.HasField(name):
        if required:
            bad.append(FieldViolation(f"rule.{name}", "required"))
        return
    raw = getattr(rule, name)
    # out-of-range seconds (a hand-made message) do not fit a timedelta; nanos must fit the Duration spec
    if abs(raw.seconds) > 10 * 366 * 86400 or not -10**9 < raw.nanos < 10**9 \
            or (raw.seconds and raw.nanos and (raw.seconds > 0) != (raw.nanos > 0)):
        bad.append(FieldViolation(f"rule.{name}", f"must be between {lo} and {hi}"))
        return
    d = seconds(raw)
    if not lo <= d <= hi:
        bad.append(FieldViolation(f"rule.{name}", f"must be between {lo} and {hi}"))


def _url(url: str, path: str, bad: list[FieldViolation]) -> None:
    if not re.match(r"^https?://[^/\s]+", url):
        bad.append(FieldViolation(path, "an http:// or https:// URL is required"))
    elif url.endswith("/****") and mask_url(url) == url:
        bad.append(FieldViolation(path, "a masked URL (as reads show it) is kept only by an update of the "
                                        "channel that has it; send the full URL"))


def validate(rule: alerts_pb2.Rule) -> None:
    """Raise InvalidArgument naming every bad field of a rule (filter and group_by aside)."""
    bad: list[FieldViolation] = []
    if not _NAME.match(rule.name):
        bad.append(FieldViolation("rule.name", "1..100 letters, digits, '.', '_' or '-', not starting "
                                               "with a punctuation mark"))
    budget = is_budget(rule)
    if budget:
        if rule.metric not in (M.METRIC_UNSPECIFIED, M.METRIC_COST):
            bad.append(FieldViolation("rule.metric", "a budget rule's metric is METRIC_COST"))
        if not (rule.budget.limit > 0 and math.isfinite(rule.budget.limit)):
            bad.append(FieldViolation("rule.budget.limit", "must be a positive number of USD"))
        if len(rule.budget.percents) > MAX_PERCENTS:
            bad.append(FieldViolation("rule.budget.percents", f"at most {MAX_PERCENTS} percentages"))
        for i, p in enumerate(rule.budget.percents[:MAX_PERCENTS]):
            if not 0 < p <= 10_000:
                bad.append(FieldViolation(f"rule.budget.percents[{i}]", "must be in (0, 10000]"))
    else:
        if rule.HasField("budget"):
            bad.append(FieldViolation("rule.budget.period", "BUDGET_PERIOD_DAY or BUDGET_PERIOD_MONTH"))
        metric = METRICS.get(rule.metric)
        if rule.metric == M.METRIC_UNSPECIFIED:
            bad.append(FieldViolation("rule.metric", "required"))
        elif metric is None:
            bad.append(FieldViolation("rule.metric", f"{M.Metric.Name(rule.metric)} is not available to "
                                                     "alert rules"))
        elif metric.summary is None and not rule.group_by:
            bad.append(FieldViolation("rule.metric", f"{M.Metric.Name(rule.metric)} needs group_by "
                                                     "(the summary does not carry it)"))
        elif metric.row is None and rule.group_by:
            bad.append(FieldViolation("rule.metric", f"{M.Metric.Name(rule.metric)} cannot be grouped"))
        _duration(rule, "window", timedelta(seconds=1), timedelta(days=31), bad, required=True)
        if condition(rule.warning) is None and condition(rule.critical) is None:
            bad.append(FieldViolation("rule.warning", "a warning or a critical threshold is required"))
        for name in ("warning", "critical"):
            if not math.isfinite(getattr(rule, name).value):
                bad.append(FieldViolation(f"rule.{name}.value", "must be a finite number"))
    for name, known in (("no_data", _NO_DATA), ("warning.comparison", _OPS), ("critical.comparison", _OPS)):
        value = rule.no_data if name == "no_data" else getattr(rule, name.split(".")[0]).comparison
        if value and value not in known:
            bad.append(FieldViolation(f"rule.{name}", f"unknown value {value}"))
    if budget and rule.budget.period not in (alerts_pb2.BUDGET_PERIOD_DAY, alerts_pb2.BUDGET_PERIOD_MONTH):
        bad.append(FieldViolation("rule.budget.period", "BUDGET_PERIOD_DAY or BUDGET_PERIOD_MONTH"))
    for field, most in (("annotation", 2000), ("filter", 4000), ("group_by", 200)):
        if len(getattr(rule, field)) > most:
            bad.append(FieldViolation(f"rule.{field}", f"at most {most:,} characters"))
    if len(rule.channels) > 10 or len(rule.labels) > 32:
        bad.append(FieldViolation("rule.channels" if len(rule.channels) > 10 else "rule.labels",
                                  "at most 10 channels and 32 labels"))
    if any(len(v) > 256 for v in rule.labels.values()):
        bad.append(FieldViolation("rule.labels", "label values are at most 256 characters"))
    _duration(rule, "every", timedelta(seconds=1), timedelta(days=1), bad)
    _duration(rule, "for_duration", timedelta(0), timedelta(days=7), bad)
    _duration(rule, "keep_firing_for", timedelta(0), timedelta(days=7), bad)
    _duration(rule, "renotify_interval", timedelta(0), timedelta(days=30), bad)
    if not 0 <= rule.min_requests <= 10**12:
        bad.append(FieldViolation("rule.min_requests", "must be between 0 and 10^12"))
    for key in rule.labels:
        if not _LABEL.match(key):
            bad.append(FieldViolation(f"rule.labels[{key}]", "label names are [A-Za-z_][A-Za-z0-9_]*"))
    for name in _PLACEHOLDER.findall(rule.annotation):
        if name not in _TEMPLATE_NAMES and not (name.startswith("labels.") and name[7:] in rule.labels):
            bad.append(FieldViolation("rule.annotation", f"unknown placeholder {{{{ {name} }}}}"))
    for i, ch in enumerate(rule.channels):
        path = f"rule.channels[{i}]"
        kind = ch.WhichOneof("target")
        if kind is None:
            bad.append(FieldViolation(path, "one of webhook, slack, log"))
        elif kind == "webhook":
            _url(ch.webhook.url, f"{path}.webhook.url", bad)
            env = ch.webhook.secret_env
            if env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", env):
                bad.append(FieldViolation(f"{path}.webhook.secret_env", "an environment variable name"))
        elif kind == "slack":
            _url(ch.slack.url, f"{path}.slack.url", bad)
    if bad:
        raise InvalidArgument(f"{bad[0].field}: {bad[0].description}", bad)


def normalize(rule: alerts_pb2.Rule) -> alerts_pb2.Rule:
    """A copy with defaults made explicit and output-only fields cleared."""
    out = alerts_pb2.Rule()
    out.CopyFrom(rule)
    out.ClearField("create_time")
    out.ClearField("update_time")
    if is_budget(out):
        out.metric = M.METRIC_COST
        if not out.budget.percents:
            out.budget.percents.extend(DEFAULT_PERCENTS)
    if not out.HasField("every"):
        out.every.FromTimedelta(DEFAULT_EVERY)
    if out.no_data == alerts_pb2.NO_DATA_POLICY_UNSPECIFIED:
        out.no_data = alerts_pb2.NO_DATA_POLICY_OK
    return out


def apply_mask(stored: alerts_pb2.Rule, patch: alerts_pb2.Rule,
               mask: field_mask_pb2.FieldMask) -> alerts_pb2.Rule:
    """`stored` with the masked fields (top-level Rule fields; all mutable ones when empty) from `patch`."""
    paths = list(mask.paths) or sorted(MUTABLE_FIELDS)
    out: Message = alerts_pb2.Rule()
    out.CopyFrom(stored)
    src: Message = patch
    for i, path in enumerate(paths):
        top = path.split(".")[0]
        if top not in MUTABLE_FIELDS:
            raise InvalidArgument(f"update_mask: {path!r} is not an updatable Rule field",
                                  [FieldViolation(f"update_mask.paths[{i}]", f"unknown field {path!r}")])
        descriptor = alerts_pb2.Rule.DESCRIPTOR.fields_by_name[top]
        if descriptor.message_type is None and not descriptor.is_repeated:
            setattr(out, top, getattr(patch, top))
        else:
            out.ClearField(top)
            if descriptor.is_repeated:
                if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
                    getattr(out, top).update(getattr(patch, top))
                else:
                    getattr(out, top).extend(getattr(patch, top))
            elif src.HasField(top):
                getattr(out, top).CopyFrom(getattr(patch, top))
    assert isinstance(out, alerts_pb2.Rule)
    return out


def to_json(rule: alerts_pb2.Rule) -> str:
    """The stored form."""
    return json_format.MessageToJson(rule, indent=None, preserving_proto_field_name=True)


def from_json(text: str) -> alerts_pb2.Rule:
    """The rule of a stored form."""
    return json_format.Parse(text, alerts_pb2.Rule(), ignore_unknown_fields=True)


def _target(ch: alerts_pb2.NotificationChannel) -> Any:
    kind = ch.WhichOneof("target")
    return ch.webhook if kind == "webhook" else ch.slack if kind == "slack" else None


def redacted(rule: alerts_pb2.Rule) -> alerts_pb2.Rule:
    """A copy for reads: no webhook secrets, and notification URLs masked (a Slack webhook URL, or a
    token in a path or query, is a credential)."""
    out = alerts_pb2.Rule()
    out.CopyFrom(rule)
    for ch in out.channels:
        target = _target(ch)
        if target is not None:
            target.url = mask_url(target.url)
        if ch.WhichOneof("target") == "webhook":
            ch.webhook.secret = ""
    return out


def restore_redacted(rule: alerts_pb2.Rule, stored: alerts_pb2.Rule) -> None:
    """A rule read back (URLs masked, secrets cleared) and sent again keeps the stored URL and secret
    of each channel whose masked URL it repeats: the stored channel of the same kind at the same
    position, else the only stored channel of that kind with that masked URL (channels reordered)."""
    for i, ch in enumerate(rule.channels):
        target, kind = _target(ch), ch.WhichOneof("target")
        if target is None:
            continue
        same = [old for old in stored.channels if old.WhichOneof("target") == kind]
        at = stored.channels[i] if i < len(stored.channels) else None
        if at is not None and at.WhichOneof("target") == kind and target.url in (_target(at).url,
                                                                              mask_url(_target(at).url)):
            old = at
        else:
            matches = {_target(o).url: o for o in same if target.url == mask_url(_target(o).url)}
            if len(matches) != 1:
                continue
            old = next(iter(matches.values()))
        if target.url == mask_url(_target(old).url):
            target.url = _target(old).url
        if kind == "webhook" and not ch.webhook.secret and not ch.webhook.secret_env \
                and ch.webhook.url == old.webhook.url:
            ch.webhook.secret = old.webhook.secret


def render(template: str, values: dict[str, str], labels: dict[str, str]) -> str:
    """The annotation with `{{ name }}` placeholders filled in (unknown ones left empty)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("labels."):
            return labels.get(name[7:], "")
        return values.get(name, "")

    return _PLACEHOLDER.sub(sub, template)


def silence_matches(matchers: list[dict[str, Any]], rule: str, group: str, labels: dict[str, str]) -> bool:
    """Whether every matcher of a silence matches an alert (`rule`, `group`, or a label name)."""
    for m in matchers:
        name, value = m.get("name", ""), m.get("value", "")
        actual = rule if name == "rule" else group if name == "group" else labels.get(name)
        if actual is None:
            return False
        if m.get("regex"):
            try:
                if re.fullmatch(value, actual) is None:
                    return False
            except re.error:
                return False
        elif actual != value:
            return False
    return True
