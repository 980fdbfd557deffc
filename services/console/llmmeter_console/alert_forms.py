"""The alerts page's forms: a rule or a silence from a submitted form, as the alerts service takes it.

Only the form's words are turned into messages here; the alerts service validates every field
(and names the one that is wrong), so the console never restates its rules.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import field_mask_pb2
from google.protobuf.duration_pb2 import Duration

from llmmeter.alerts_client import AlertsClient
from llmmeter.timeparse import parse_span, timestamp
from llmmeter.v1 import alerts_pb2, query_pb2

#: Metrics a threshold rule can watch, as the form offers them.
RULE_METRICS = ("failure_rate", "latency_p95", "latency_p99", "ttft_p95", "cost", "requests",
                "requests_per_second", "total_tokens")
#: The Rule fields the form sets, and so the only ones an update from it replaces.
FORM_FIELDS = ("metric", "filter", "group_by", "window", "every", "warning", "critical", "annotation")
COMPARISONS = {">": alerts_pb2.COMPARISON_GREATER, ">=": alerts_pb2.COMPARISON_GREATER_OR_EQUAL,
               "<": alerts_pb2.COMPARISON_LESS, "<=": alerts_pb2.COMPARISON_LESS_OR_EQUAL}


def _duration(text: str, field: str) -> Duration:
    try:
        span = parse_span(text)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    out = Duration()
    out.FromTimedelta(span)
    return out


def _threshold(form: dict[str, str], level: str) -> alerts_pb2.Threshold | None:
    text = form.get(level, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{level}: a number") from None
    return alerts_pb2.Threshold(comparison=COMPARISONS.get(form.get("comparison", ">"),
                                                           alerts_pb2.COMPARISON_GREATER), value=value)


def rule_from_form(form: dict[str, str]) -> alerts_pb2.Rule:
    """A threshold rule from the form; ValueError naming the form field that cannot be read."""
    metric = form.get("metric", "")
    if metric not in RULE_METRICS:
        raise ValueError(f"metric: one of {', '.join(RULE_METRICS)}")
    rule = alerts_pb2.Rule(
        name=form.get("name", "").strip(), metric=query_pb2.Metric.Value(f"METRIC_{metric.upper()}"),
        filter=form.get("filter", "").strip(), group_by=form.get("group_by", "").strip(),
        window=_duration(form.get("window", "") or "5m", "window"),
        every=_duration(form.get("every", "") or "1m", "every"),
        annotation=form.get("annotation", "").strip())
    for level in ("warning", "critical"):
        threshold = _threshold(form, level)
        if threshold is not None:
            getattr(rule, level).CopyFrom(threshold)
    return rule


def silence_from_form(form: dict[str, str], now: datetime | None = None) -> alerts_pb2.Silence:
    """A silence of one rule (optionally one group) for a while."""
    span = _duration(form.get("duration", "") or "1h", "duration").ToTimedelta()
    matchers = [alerts_pb2.Matcher(name="rule", value=form.get("rule", "").strip())]
    if form.get("group", "").strip():
        matchers.append(alerts_pb2.Matcher(name="group", value=form["group"].strip()))
    silence = alerts_pb2.Silence(matchers=matchers, comment=form.get("comment", "").strip())
    silence.end_time.CopyFrom(timestamp((now or datetime.now(UTC)) + span))
    return silence


async def apply(alerts: AlertsClient, action: str, form: dict[str, str]) -> str:
    """Carry out one form of the alerts page; returns what was done, in words."""
    if action == "save-rule":
        rule = rule_from_form(form)
        if form.get("mode") == "update":  # only what the form filled in: the rest (channels...) stays
            filled = ["metric", *(f for f in FORM_FIELDS if f != "metric" and form.get(f, "").strip())]
            await alerts.call("UpdateRule", alerts_pb2.UpdateRuleRequest(
                rule=rule, update_mask=field_mask_pb2.FieldMask(paths=filled)))
            return f"rule {rule.name} updated"
        await alerts.create_rule(rule)
        return f"rule {rule.name} created"
    if action == "delete-rule":
        await alerts.call("DeleteRule", alerts_pb2.DeleteRuleRequest(name=form.get("name", "")))
        return f"rule {form.get('name', '')} deleted"
    if action == "silence":
        created = await alerts.call("CreateSilence", alerts_pb2.CreateSilenceRequest(
            silence=silence_from_form(form)))
        return f"silence {created.silence.id} created"
    if action == "delete-silence":
        await alerts.call("DeleteSilence", alerts_pb2.DeleteSilenceRequest(id=form.get("id", "")))
        return f"silence {form.get('id', '')} deleted"
    raise ValueError(f"unknown action {action!r}")
