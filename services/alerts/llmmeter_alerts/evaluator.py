"""The evaluation loop: rules scheduled by their `every`, values from the query service.

While this replica leads (see `leader`), each due rule is evaluated: one query
call, the state machine per group, and one transaction per group that stores
the new state with its history and queued notifications. Rules are evaluated
concurrently (bounded), so one slow rule does not delay the others, and
delivery happens elsewhere (`notify`), so a slow target delays nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from llmmeter.v1 import alerts_pb2, query_pb2
from llmmeter_alerts import rules as rules_mod
from llmmeter_alerts.clock import Clock
from llmmeter_alerts.leader import Leader
from llmmeter_alerts.metrics_source import MetricSource, period_key
from llmmeter_alerts.statemachine import AlertStatus, Notice, Observation, Step, budget_step, step
from llmmeter_alerts.store import AlertStore, Event, StoredRule
from llmmeter_common.errors import LlmmeterError

log = logging.getLogger(__name__)


def fmt_value(value: float | None) -> str:
    """A value for annotations."""
    return "no data" if value is None else f"{value:.6g}"


def metric_name(rule: alerts_pb2.Rule) -> str:
    """`failure_rate`, `latency_p95`, ..."""
    return query_pb2.Metric.Name(rule.metric).removeprefix("METRIC_").lower()


def annotation(rule: alerts_pb2.Rule, group: str, status: AlertStatus) -> str:
    """The rule's annotation rendered for one alert."""
    threshold = rule.critical if status.severity == "critical" else rule.warning
    cond = rules_mod.condition(threshold)
    return rules_mod.render(rule.annotation, {
        "rule": rule.name, "group": group, "value": fmt_value(status.value),
        "severity": status.severity or "",
        "state": status.state, "threshold": str(cond) if cond else "", "metric": metric_name(rule),
    }, dict(rule.labels))


def payload(rule: alerts_pb2.Rule, group: str, status: AlertStatus, notice: Notice,
            now: datetime) -> dict[str, Any]:
    """The webhook body of one notification (documented in the README)."""
    threshold = rule.critical if notice.severity == "critical" else rule.warning
    cond = rules_mod.condition(threshold)
    body: dict[str, Any] = {
        "version": 1,
        "kind": notice.kind,
        "rule": rule.name,
        "group": group,
        "group_by": rule.group_by,
        "metric": metric_name(rule),
        "state": status.state,
        "severity": notice.severity or "",
        "value": notice.value,
        "threshold": str(cond) if cond else "",
        "labels": dict(rule.labels),
        "annotation": annotation(rule, group, status),
        "since": (status.since or now).isoformat(),
        "time": now.isoformat(),
    }
    if rules_mod.is_budget(rule):
        body["budget"] = {
            "period": period_key(rule.budget.period, now), "limit": rule.budget.limit,
            "percent": notice.percent,
        }
    return body


@dataclass(frozen=True)
class GroupResult:
    """What one evaluation found for one group (TestRule shows these)."""

    group: str
    observation: Observation
    step: Step


class Evaluator:
    """Evaluates due rules while this replica leads."""

    def __init__(self, store: AlertStore, source: MetricSource, clock: Clock, leader: Leader,
                 on_queued: Callable[[], None], concurrency: int = 32) -> None:
        self._store = store
        self._source = source
        self._clock = clock
        self._leader = leader
        self._on_queued = on_queued
        self._rules: dict[int, StoredRule] = {}
        self._next: dict[int, datetime] = {}
        self._sem = asyncio.Semaphore(concurrency)
        self._failing: dict[int, str] = {}
        """Rules whose last evaluation failed, with why (to log a failure once, not every round)."""
        self.last_lag = timedelta(0)
        """How late the latest tick started its most overdue rule."""
        self.on_evaluated: Callable[[int, timedelta], None] = lambda n, lag: None
        """Told after each tick how many rules it evaluated and its lag (for metrics)."""

    async def _refresh(self) -> None:
        current = dict(await self._store.all_rules())
        for rid in list(self._rules):
            if rid not in current:
                del self._rules[rid]
                self._next.pop(rid, None)
        stale = [rid for rid, version in current.items()
                 if rid not in self._rules or self._rules[rid].version != version]
        for sr in await self._store.rules_by_id(stale) if stale else []:
            self._rules[sr.id] = sr

    def next_due(self) -> datetime | None:
        """When the next rule is due (None: no rules)."""
        return min(self._next.values(), default=None)

    async def tick(self) -> int:
        """Evaluate every due rule once, if this replica leads; returns how many were evaluated."""
        if not await self._leader.check():
            self._next.clear()
            return 0
        await self._refresh()
        now = self._clock.now()
        due = [sr for sr in self._rules.values() if self._next.get(sr.id, now) <= now]
        if not due:
            return 0
        self.last_lag = max((now - self._next.get(sr.id, now) for sr in due), default=timedelta(0))
        silences = await self._store.active_silences(now)
        for sr in due:
            self._next[sr.id] = now + rules_mod.every(sr.rule)
        await asyncio.gather(*(self._guarded(sr, now, silences) for sr in due))
        self._on_queued()
        self.on_evaluated(len(due), self.last_lag)
        return len(due)

    async def run(self, poll: float = 1.0) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("alert evaluation failed")
            nxt = self.next_due()
            wait = poll if nxt is None else (nxt - self._clock.now()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.01), poll))

    async def _guarded(self, sr: StoredRule, now: datetime, silences: list[list[dict[str, Any]]]) -> None:
        """Evaluate one rule; a failure is logged when it starts or changes (not at every round), and
        holds up no other rule."""
        async with self._sem:
            try:
                await self.evaluate(sr, now, silences)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, LlmmeterError) else type(exc).__name__
                if self._failing.get(sr.id) != reason:
                    self._failing[sr.id] = reason
                    log.warning("rule %s not evaluated: %s (logged again when this changes)",
                                sr.rule.name, reason, exc_info=not isinstance(exc, LlmmeterError))
            else:
                if self._failing.pop(sr.id, None) is not None:
                    log.info("rule %s is evaluated again", sr.rule.name)

    async def observe(self, rule: alerts_pb2.Rule, now: datetime,
                      known: dict[str, AlertStatus], silences: list[list[dict[str, Any]]],
                      ) -> list[GroupResult]:
        """Run the state machine of every group of a rule (no writes)."""
        observed = await self._source.observe(rule, now)
        groups = sorted(set(observed) | set(known)) if rule.group_by else [""]
        pol = rules_mod.policy(rule)
        labels = dict(rule.labels)
        out = []
        for g in groups:
            prev = known.get(g, AlertStatus())
            obs = observed.get(g, Observation(None, 0))
            silenced = any(rules_mod.silence_matches(m, rule.name, g, labels) for m in silences)
            if rules_mod.is_budget(rule):
                st = budget_step(rule.budget.limit, rules_mod.percents(rule),
                                 period_key(rule.budget.period, now), prev, obs.value or 0.0, now, silenced)
            else:
                st = step(pol, prev, obs, now, silenced)
            out.append(GroupResult(g, obs, st))
        return out

    async def evaluate(self, sr: StoredRule, now: datetime, silences: list[list[dict[str, Any]]]) -> None:
        """Evaluate one rule at `now` and persist every group's outcome."""
        rule = sr.rule
        known = await self._store.states(sr.id)
        for res in await self.observe(rule, now, known, silences):
            prev = known.get(res.group, AlertStatus())
            new = res.step.status
            events: list[Event] = []
            if new.state != prev.state or new.severity != prev.severity or res.group not in known:
                events.append(Event("state_change", prev.state if res.group in known else None, new.state,
                                    new.severity, new.value, message=annotation(rule, res.group, new)))
            outbox = []
            for notice in res.step.notices:
                body = payload(rule, res.group, new, notice, now)
                log.info("alert %s [%s] %s %s value=%s", rule.name, res.group, notice.kind,
                         notice.severity or "", fmt_value(notice.value))
                for ch in rule.channels:
                    kind = ch.WhichOneof("target") or "log"
                    events.append(Event("notification", severity=notice.severity, value=notice.value,
                                        channel=kind, message=notice.kind))
                    outbox.append((ch, body))
            for notice in res.step.suppressed:
                events.append(Event("silenced", severity=notice.severity, value=notice.value,
                                    message=f"{notice.kind} not sent: silenced"))
            await self._store.save(sr.id, rule, res.group, new, events, outbox, now)

