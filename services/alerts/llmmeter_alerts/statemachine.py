"""The alert state machine of one (rule, group): pure, no I/O, time passed in.

    ok/resolved --condition--> pending --`for` elapsed--> firing --condition gone
    for keep_firing_for--> resolved

`step` takes the previous state, what one evaluation observed and the time,
and returns the next state plus the notifications it calls for. Everything
that must survive a restart (pending-since, last notification, the severity
notified) is part of `AlertStatus`, which the store persists before any
notification is sent. Budget rules have their own step: a notification at
each configured percentage of the limit, once per calendar period.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

State = Literal["ok", "pending", "firing", "resolved"]
Severity = Literal["warning", "critical"]
NoData = Literal["ok", "keep", "alert"]
Op = Literal[">", ">=", "<", "<="]
NoticeKind = Literal["firing", "resolved", "renotify", "escalation", "budget"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}
_RANK: dict[Severity | None, int] = {None: 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Condition:
    """`value <op> threshold`."""

    op: Op
    threshold: float

    def holds(self, value: float) -> bool:
        """Whether the value crosses the threshold."""
        return _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Policy:
    """What the state machine needs of a rule."""

    warning: Condition | None = None
    critical: Condition | None = None
    for_: timedelta = timedelta(0)
    keep_firing_for: timedelta = timedelta(0)
    min_requests: int = 0
    no_data: NoData = "ok"
    renotify: timedelta = timedelta(0)


@dataclass(frozen=True)
class Observation:
    """One evaluation's result for one group: the value (None: no data) and the request count."""

    value: float | None
    requests: int


@dataclass(frozen=True)
class AlertStatus:
    """The persisted state of one (rule, group)."""

    state: State = "ok"
    severity: Severity | None = None
    value: float | None = None
    since: datetime | None = None
    pending_since: datetime | None = None
    firing_since: datetime | None = None
    last_true: datetime | None = None
    evaluated: datetime | None = None
    notified: datetime | None = None
    notified_severity: Severity | None = None
    budget_period: str | None = None
    budget_fired: tuple[float, ...] = field(default=())


@dataclass(frozen=True)
class Notice:
    """A notification the transition calls for (sent to every channel of the rule)."""

    kind: NoticeKind
    severity: Severity | None
    value: float | None
    percent: float | None = None


@dataclass(frozen=True)
class Step:
    """The outcome of one evaluation."""

    status: AlertStatus
    notices: list[Notice]
    suppressed: list[Notice]
    """Notices a silence swallowed (recorded in the history, not sent)."""

    judged: bool
    """False when the evaluation did not judge (below min_requests, or no data with `keep`)."""


def severity_of(policy: Policy, value: float) -> Severity | None:
    """The highest severity whose condition holds."""
    if policy.critical is not None and policy.critical.holds(value):
        return "critical"
    if policy.warning is not None and policy.warning.holds(value):
        return "warning"
    return None


def _highest(policy: Policy) -> Severity:
    return "critical" if policy.critical is not None else "warning"


def _send(notices: list[Notice], silenced: bool, prev: AlertStatus,
          cur: AlertStatus) -> tuple[list[Notice], list[Notice]]:
    """(sent, suppressed): a silence swallows notices; they are reported once, when the state changes."""
    if not silenced:
        return notices, []
    changed = (prev.state, prev.severity) != (cur.state, cur.severity)
    return [], notices if changed else []


def step(policy: Policy, prev: AlertStatus, obs: Observation, now: datetime, silenced: bool = False) -> Step:
    """Advances one alert by one evaluation at `now`."""
    no_data = obs.value is None or obs.requests == 0
    if no_data and policy.no_data == "keep":
        return Step(replace(prev, evaluated=now), [], [], judged=False)
    if not no_data and obs.requests < policy.min_requests:
        return Step(replace(prev, evaluated=now), [], [], judged=False)
    severity: Severity | None
    if no_data:
        severity = _highest(policy) if policy.no_data == "alert" else None
        value = None
    else:
        assert obs.value is not None
        value = obs.value
        severity = severity_of(policy, value)
    cur = replace(prev, evaluated=now, value=value)
    notices: list[Notice] = []
    if severity is not None:
        cur = replace(cur, last_true=now)
        if prev.state in ("ok", "resolved"):
            cur = replace(cur, state="pending", since=now, pending_since=now, severity=severity)
        else:
            cur = replace(cur, severity=severity)
        due = cur.pending_since is not None and now - cur.pending_since >= policy.for_
        if cur.state == "pending" and due:
            cur = replace(cur, state="firing", since=now, firing_since=now)
        if cur.state == "firing":
            if cur.notified_severity is None:
                notices.append(Notice("firing", severity, value))
            elif _RANK[severity] > _RANK[cur.notified_severity]:
                notices.append(Notice("escalation", severity, value))
            elif (policy.renotify > timedelta(0) and cur.notified is not None
                  and now - cur.notified >= policy.renotify):
                notices.append(Notice("renotify", severity, value))
    else:
        if prev.state == "pending":
            cur = replace(cur, state="ok", since=now, severity=None, pending_since=None)
        elif prev.state == "firing":
            held = prev.last_true is not None and now - prev.last_true < policy.keep_firing_for
            if not held:
                if prev.notified_severity is not None:
                    notices.append(Notice("resolved", prev.severity, value))
                cur = replace(cur, state="resolved", since=now, severity=None, pending_since=None,
                              firing_since=None, notified_severity=None)
    sent, suppressed = _send(notices, silenced, prev, cur)
    for n in sent:
        if n.kind == "resolved":
            cur = replace(cur, notified=now)
        else:
            cur = replace(cur, notified=now, notified_severity=n.severity)
    return Step(cur, sent, suppressed, judged=True)


def budget_step(limit: float, percents: tuple[float, ...], period: str, prev: AlertStatus, spent: float,
                now: datetime, silenced: bool = False) -> Step:
    """Advances a budget alert: each percentage of `limit` fires once per `period` (a key like `2025-06`).

    Several percentages crossed at once give one notification, for the highest.
    A new period starts from ok with nothing fired.
    """
    cur = replace(prev, evaluated=now, value=spent)
    if prev.budget_period != period:
        cur = replace(cur, state="ok", since=now, severity=None, pending_since=None, firing_since=None,
                      notified_severity=None, budget_period=period, budget_fired=())
    percent = spent / limit * 100 if limit > 0 else 0.0
    crossed = sorted(p for p in percents if percent >= p and p not in cur.budget_fired)
    notices: list[Notice] = []
    if crossed:
        top = crossed[-1]
        severity: Severity = "critical" if top >= 100 else "warning"
        cur = replace(cur, budget_fired=tuple(sorted((*cur.budget_fired, *crossed))), severity=severity,
                      last_true=now)
        if cur.state != "firing":
            cur = replace(cur, state="firing", since=now, pending_since=now, firing_since=now)
        notices.append(Notice("budget", severity, spent, percent=top))
    sent, suppressed = _send(notices, silenced, prev, cur)
    for n in sent:
        cur = replace(cur, notified=now, notified_severity=n.severity)
    return Step(cur, sent, suppressed, judged=True)
