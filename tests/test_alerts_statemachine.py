"""The alert state machine, table-driven in the manner of `promtool test rules`.

Each case is a rule policy, a series of observations at evaluation instants
(minutes from a start time) and, at each instant, the expected state, severity
and notifications. Pure: no database, no clock, no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from llmmeter_alerts.rules import silence_matches
from llmmeter_alerts.statemachine import (
    AlertStatus,
    Condition,
    Observation,
    Policy,
    budget_step,
    step,
)

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
WARN = Condition(">", 0.05)
CRIT = Condition(">", 0.2)
NO_DATA = None


@dataclass(frozen=True)
class At:
    """One evaluation instant: minute, observed value (None: no data), requests, silenced; expectations."""

    minute: float
    value: float | None
    state: str
    severity: str | None = None
    notify: list[str] = field(default_factory=list)
    requests: int = 100
    silenced: bool = False
    suppressed: list[str] = field(default_factory=list)


CASES: dict[str, tuple[Policy, list[At]]] = {
    "fires at once without for": (Policy(warning=WARN), [
        At(0, 0.01, "ok"),
        At(1, 0.1, "firing", "warning", ["firing"]),
        At(2, 0.1, "firing", "warning"),
        At(3, 0.01, "resolved", None, ["resolved"]),
        At(4, 0.01, "resolved"),
        At(5, 0.1, "firing", "warning", ["firing"]),
    ]),
    "for: pending until it elapses, back to ok if it stops": (
        Policy(warning=WARN, for_=timedelta(minutes=2)), [
        At(0, 0.1, "pending", "warning"),
        At(1, 0.1, "pending", "warning"),
        At(1.5, 0.01, "ok"),
        At(2, 0.1, "pending", "warning"),
        At(3, 0.1, "pending", "warning"),
        At(4, 0.1, "firing", "warning", ["firing"]),
        At(5, 0.01, "resolved", None, ["resolved"]),
        ]),
    "keep_firing_for rides out flapping": (Policy(warning=WARN, keep_firing_for=timedelta(minutes=5)), [
        At(0, 0.1, "firing", "warning", ["firing"]),
        At(1, 0.01, "firing", "warning"),
        At(3, 0.1, "firing", "warning"),
        At(4, 0.01, "firing", "warning"),
        At(7, 0.01, "firing", "warning"),
        At(8, 0.01, "resolved", None, ["resolved"]),
    ]),
    "min_requests: too few requests are not judged": (Policy(warning=WARN, min_requests=20), [
        At(0, 0.9, "ok", requests=5),
        At(1, 0.9, "firing", "warning", ["firing"], requests=20),
        At(2, 0.0, "firing", "warning", requests=3),
        At(3, 0.0, "resolved", None, ["resolved"], requests=50),
    ]),
    "no_data ok resolves": (Policy(warning=WARN, no_data="ok"), [
        At(0, 0.1, "firing", "warning", ["firing"]),
        At(1, NO_DATA, "resolved", None, ["resolved"], requests=0),
    ]),
    "no_data keep keeps": (Policy(warning=WARN, no_data="keep"), [
        At(0, 0.1, "firing", "warning", ["firing"]),
        At(1, NO_DATA, "firing", "warning", requests=0),
        At(2, 0.0, "resolved", None, ["resolved"]),
        At(3, NO_DATA, "resolved", requests=0),
    ]),
    "no_data alert fires at the highest severity": (Policy(warning=WARN, critical=CRIT, no_data="alert"), [
        At(0, 0.0, "ok"),
        At(1, NO_DATA, "firing", "critical", ["firing"], requests=0),
        At(2, 0.0, "resolved", None, ["resolved"]),
    ]),
    "escalation warning -> critical notifies, de-escalation does not": (Policy(warning=WARN, critical=CRIT), [
        At(0, 0.1, "firing", "warning", ["firing"]),
        At(1, 0.3, "firing", "critical", ["escalation"]),
        At(2, 0.1, "firing", "warning"),
        At(3, 0.3, "firing", "critical"),
        At(4, 0.0, "resolved", None, ["resolved"]),
    ]),
    "critical straight away": (Policy(warning=WARN, critical=CRIT, for_=timedelta(minutes=1)), [
        At(0, 0.5, "pending", "critical"),
        At(1, 0.5, "firing", "critical", ["firing"]),
    ]),
    "renotify after the interval only": (Policy(warning=WARN, renotify=timedelta(minutes=60)), [
        At(0, 0.1, "firing", "warning", ["firing"]),
        At(30, 0.1, "firing", "warning"),
        At(59, 0.1, "firing", "warning"),
        At(60, 0.1, "firing", "warning", ["renotify"]),
        At(90, 0.1, "firing", "warning"),
        At(120, 0.1, "firing", "warning", ["renotify"]),
    ]),
    "silenced: state moves, nothing is sent; sent once the silence ends": (Policy(warning=WARN), [
        At(0, 0.1, "firing", "warning", [], silenced=True, suppressed=["firing"]),
        At(1, 0.1, "firing", "warning", [], silenced=True),
        At(2, 0.1, "firing", "warning", ["firing"]),
        At(3, 0.0, "resolved", None, [], silenced=True, suppressed=["resolved"]),
    ]),
    "resolve of a never-notified alert is not sent": (Policy(warning=WARN), [
        At(0, 0.1, "firing", "warning", [], silenced=True, suppressed=["firing"]),
        At(1, 0.0, "resolved", None, []),
    ]),
    "less-than conditions": (Policy(warning=Condition("<", 0.99), critical=Condition("<=", 0.9)), [
        At(0, 1.0, "ok"),
        At(1, 0.95, "firing", "warning", ["firing"]),
        At(2, 0.9, "firing", "critical", ["escalation"]),
    ]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_state_machine(name: str) -> None:
    policy, instants = CASES[name]
    status = AlertStatus()
    for at in instants:
        now = T0 + timedelta(minutes=at.minute)
        obs = Observation(at.value, at.requests if at.value is not None else 0)
        result = step(policy, status, obs, now, at.silenced)
        status = result.status
        where = f"{name} @ {at.minute}m"
        assert (status.state, status.severity) == (at.state, at.severity), where
        assert [n.kind for n in result.notices] == at.notify, where
        assert [n.kind for n in result.suppressed] == at.suppressed, where


def test_pending_since_is_kept_across_steps_and_a_restart() -> None:
    """`for` counts from the stored pending-since: a status rebuilt from storage continues."""
    policy = Policy(warning=WARN, for_=timedelta(minutes=5))
    s = step(policy, AlertStatus(), Observation(0.1, 100), T0).status
    assert s.pending_since == T0
    reloaded = AlertStatus(**{k: getattr(s, k) for k in AlertStatus.__dataclass_fields__})
    s2 = step(policy, reloaded, Observation(0.1, 100), T0 + timedelta(minutes=4)).status
    assert (s2.state, s2.pending_since) == ("pending", T0)
    r = step(policy, s2, Observation(0.1, 100), T0 + timedelta(minutes=5))
    assert r.status.state == "firing" and [n.kind for n in r.notices] == ["firing"]
    again = step(policy, r.status, Observation(0.1, 100), T0 + timedelta(minutes=6))
    assert again.notices == []


BUDGET = [
    # (day, spent, expected percents notified, state, severity)
    ("2025-06-01", 10.0, [], "ok", None),
    ("2025-06-01", 80.0, [80.0], "firing", "warning"),
    ("2025-06-01", 85.0, [], "firing", "warning"),
    ("2025-06-01", 100.0, [100.0], "firing", "critical"),
    ("2025-06-01", 150.0, [], "firing", "critical"),
    ("2025-06-02", 5.0, [], "ok", None),
    ("2025-06-02", 120.0, [100.0], "firing", "critical"),
    ("2025-06-02", 130.0, [], "firing", "critical"),
]


def test_budget_fires_each_percent_once_per_period() -> None:
    status = AlertStatus()
    for i, (period, spent, percents, state, severity) in enumerate(BUDGET):
        r = budget_step(100.0, (80.0, 100.0), period, status, spent, T0 + timedelta(hours=i))
        status = r.status
        assert [n.percent for n in r.notices] == percents, (i, period, spent)
        assert (status.state, status.severity) == (state, severity), (i, period, spent)
    assert status.budget_fired == (80.0, 100.0)


def test_budget_silenced_percent_is_not_sent_later() -> None:
    r = budget_step(100.0, (80.0, 100.0), "2025-06", AlertStatus(), 90.0, T0, silenced=True)
    assert r.notices == [] and [n.percent for n in r.suppressed] == [80.0]
    r2 = budget_step(100.0, (80.0, 100.0), "2025-06", r.status, 95.0, T0 + timedelta(hours=1))
    assert r2.notices == []


@pytest.mark.parametrize(("matchers", "expected"), [
    ([{"name": "rule", "value": "payments-error-rate"}], True),
    ([{"name": "rule", "value": "other"}], False),
    ([{"name": "group", "value": "gpt-4o"}, {"name": "owner", "value": "payments"}], True),
    ([{"name": "group", "value": "gpt-.*", "regex": True}], True),
    ([{"name": "owner", "value": "search"}], False),
    ([{"name": "missing", "value": ""}], False),
])
def test_silence_matchers(matchers: list[dict[str, object]], expected: bool) -> None:
    assert silence_matches(matchers, "payments-error-rate", "gpt-4o", {"owner": "payments"}) is expected
