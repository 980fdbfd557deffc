"""AlertsService over gRPC: convert, call the domain, shape the answer.

Errors leave as domain exceptions (`llmmeter_common.errors`) that the shared
interceptor maps to statuses with BadRequest details.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import grpc

from llmmeter.v1 import alerts_pb2, alerts_pb2_grpc
from llmmeter_alerts import rules as rules_mod
from llmmeter_alerts.clock import Clock
from llmmeter_alerts.evaluator import Evaluator, annotation
from llmmeter_alerts.metrics_source import MetricSource
from llmmeter_alerts.notify import history_message
from llmmeter_alerts.statemachine import severity_of
from llmmeter_alerts.store import EVENTS_CHANNEL, AlertStore, page_size, parse_filter, status_of
from llmmeter_alerts.targets import TargetPolicy
from llmmeter_common.errors import FieldViolation, InvalidArgument

STATES: dict[str, Any] = {"ok": alerts_pb2.ALERT_STATE_OK, "pending": alerts_pb2.ALERT_STATE_PENDING,
          "firing": alerts_pb2.ALERT_STATE_FIRING, "resolved": alerts_pb2.ALERT_STATE_RESOLVED}
SEVERITIES: dict[str, Any] = {"warning": alerts_pb2.SEVERITY_WARNING,
                              "critical": alerts_pb2.SEVERITY_CRITICAL}
KINDS: dict[str, Any] = {"state_change": alerts_pb2.ALERT_EVENT_KIND_STATE_CHANGE,
         "notification": alerts_pb2.ALERT_EVENT_KIND_NOTIFICATION,
         "delivery": alerts_pb2.ALERT_EVENT_KIND_DELIVERY, "silenced": alerts_pb2.ALERT_EVENT_KIND_SILENCED}
_EVENT_FILTER = ("rule", "group", "kind")


def _set_time(msg: Any, name: str, when: datetime | None) -> None:
    if when is not None:
        getattr(msg, name).FromDatetime(when)


def event_message(row: asyncpg.Record) -> alerts_pb2.AlertEvent:
    """A history row as a message."""
    ev = alerts_pb2.AlertEvent(
        id=row["id"], kind=KINDS.get(row["kind"], 0), rule=row["rule_name"], group=row["grp"],
        from_state=STATES.get(row["from_state"] or "", 0), to_state=STATES.get(row["to_state"] or "", 0),
        severity=SEVERITIES.get(row["severity"] or "", 0), value=row["value"] or 0.0,
        channel=row["channel"] or "", attempt=row["attempt"] or 0, success=bool(row["success"]),
        message=history_message(row["message"]) if row["kind"] == "delivery" else row["message"])
    _set_time(ev, "time", row["at"])
    return ev


def silence_message(row: asyncpg.Record) -> alerts_pb2.Silence:
    """A silence row as a message."""
    s = alerts_pb2.Silence(id=str(row["id"]), comment=row["comment"],
                           matchers=[alerts_pb2.Matcher(**m) for m in json.loads(row["matchers"])])
    _set_time(s, "start_time", row["starts_at"])
    _set_time(s, "end_time", row["ends_at"])
    _set_time(s, "create_time", row["created_at"])
    return s


#: How far below the newest id a watch looks again for events committed late.
_WATCH_REREAD_IDS = 1000


class AlertsServicer(alerts_pb2_grpc.AlertsServiceServicer):
    """The gRPC face of the alerts domain."""

    def __init__(self, store: AlertStore, source: MetricSource, evaluator: Evaluator, clock: Clock,
                 database_url: str, targets: TargetPolicy | None = None) -> None:
        self._store = store
        self._targets = targets or TargetPolicy()
        self._source = source
        self._evaluator = evaluator
        self._clock = clock
        self._url = database_url

    async def _checked(self, rule: alerts_pb2.Rule) -> alerts_pb2.Rule:
        rules_mod.validate(rule)
        await self._targets.check_rule(rule)
        await self._source.check(rule)
        return rules_mod.normalize(rule)

    async def CreateRule(self, request: alerts_pb2.CreateRuleRequest,
                         context: grpc.aio.ServicerContext) -> alerts_pb2.CreateRuleResponse:
        """Validate and store a new rule."""
        rule = await self._checked(request.rule)
        stored = await self._store.create_rule(rule, self._clock.now())
        return alerts_pb2.CreateRuleResponse(rule=rules_mod.redacted(stored.rule))

    async def GetRule(self, request: alerts_pb2.GetRuleRequest,
                      context: grpc.aio.ServicerContext) -> alerts_pb2.GetRuleResponse:
        """One rule."""
        stored = await self._store.get_rule(request.name)
        return alerts_pb2.GetRuleResponse(rule=rules_mod.redacted(stored.rule))

    async def ListRules(self, request: alerts_pb2.ListRulesRequest,
                        context: grpc.aio.ServicerContext) -> alerts_pb2.ListRulesResponse:
        """A page of rules."""
        rows, token = await self._store.list_rules(page_size(request.page_size), request.page_token)
        return alerts_pb2.ListRulesResponse(rules=[rules_mod.redacted(r.rule) for r in rows],
                                            next_page_token=token)

    async def UpdateRule(self, request: alerts_pb2.UpdateRuleRequest,
                         context: grpc.aio.ServicerContext) -> alerts_pb2.UpdateRuleResponse:
        """Replace the masked fields of a rule."""
        stored = await self._store.get_rule(request.rule.name)
        merged = rules_mod.apply_mask(stored.rule, request.rule, request.update_mask)
        rules_mod.restore_redacted(merged, stored.rule)
        rule = await self._checked(merged)
        updated = await self._store.update_rule(rule, self._clock.now())
        return alerts_pb2.UpdateRuleResponse(rule=rules_mod.redacted(updated.rule))

    async def DeleteRule(self, request: alerts_pb2.DeleteRuleRequest,
                         context: grpc.aio.ServicerContext) -> alerts_pb2.DeleteRuleResponse:
        """Delete a rule with its alerts and history."""
        await self._store.delete_rule(request.name)
        return alerts_pb2.DeleteRuleResponse()

    async def TestRule(self, request: alerts_pb2.TestRuleRequest,
                       context: grpc.aio.ServicerContext) -> alerts_pb2.TestRuleResponse:
        """Evaluate once against current data; no state change, no notification."""
        known = {}
        if request.HasField("rule"):
            rule = await self._checked(request.rule)
        elif request.name:
            stored = await self._store.get_rule(request.name)
            rule, known = stored.rule, await self._store.states(stored.id)
        else:
            raise InvalidArgument("rule or name is required", [FieldViolation("rule", "a rule or a name")])
        results = await self._evaluator.observe(rule, self._clock.now(), known, [])
        pol = rules_mod.policy(rule)
        out = []
        for r in results:
            obs = r.observation
            sev = None if obs.value is None else severity_of(pol, obs.value)
            if rules_mod.is_budget(rule):
                sev = r.step.status.severity if r.step.notices else None
                why = f"{(obs.value or 0) / rule.budget.limit * 100:.1f}% of the budget"
            elif obs.value is None or obs.requests == 0:
                why = f"no data (no_data: {pol.no_data})"
            elif obs.requests < pol.min_requests:
                why = f"not judged: {obs.requests} requests < min_requests {pol.min_requests}"
            else:
                why = f"{sev} condition holds" if sev else "no condition holds"
            out.append(alerts_pb2.TestResult(
                group=r.group, value=obs.value or 0.0, has_value=obs.value is not None,
                request_count=obs.requests, severity=SEVERITIES.get(sev or "", 0), message=why))
        return alerts_pb2.TestRuleResponse(results=out)

    async def ListAlerts(self, request: alerts_pb2.ListAlertsRequest,
                         context: grpc.aio.ServicerContext) -> alerts_pb2.ListAlertsResponse:
        """Current state per (rule, group)."""
        rows, token = await self._store.list_alerts(request.filter, page_size(request.page_size),
                                                    request.page_token)
        now = self._clock.now()
        silences = await self._store.active_silences(now)
        alerts = []
        for row in rows:
            rule = rules_mod.from_json(row["spec"])
            st = status_of(row)
            a = alerts_pb2.Alert(
                rule=row["rule_name"], group=row["grp"], state=STATES[st.state],
                severity=SEVERITIES.get(st.severity or "", 0), value=st.value or 0.0,
                has_value=st.value is not None, labels=dict(rule.labels),
                annotation=annotation(rule, row["grp"], st),
                silenced=any(rules_mod.silence_matches(m, rule.name, row["grp"], dict(rule.labels))
                             for m in silences))
            _set_time(a, "state_time", st.since)
            _set_time(a, "pending_time", st.pending_since)
            _set_time(a, "firing_time", st.firing_since)
            _set_time(a, "evaluate_time", st.evaluated)
            _set_time(a, "notify_time", st.notified)
            alerts.append(a)
        return alerts_pb2.ListAlertsResponse(alerts=alerts, next_page_token=token)

    async def ListAlertEvents(self, request: alerts_pb2.ListAlertEventsRequest,
                              context: grpc.aio.ServicerContext) -> alerts_pb2.ListAlertEventsResponse:
        """History, newest first."""
        rows, token = await self._store.list_events(request.filter, page_size(request.page_size),
                                                    request.page_token)
        return alerts_pb2.ListAlertEventsResponse(events=[event_message(r) for r in rows],
                                                  next_page_token=token)

    async def WatchAlerts(self, request: alerts_pb2.WatchAlertsRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[alerts_pb2.WatchAlertsResponse]:
        """State changes as they are stored (by any replica); headers go out once the watch is live."""
        f = parse_filter(request.filter, _EVENT_FILTER)
        f.setdefault("kind", "state_change")
        wake = asyncio.Event()
        conn = await asyncpg.connect(self._url)
        try:
            await conn.add_listener(EVENTS_CHANNEL, lambda *_args: wake.set())
            floor = await conn.fetchval("SELECT coalesce(max(id), 0) FROM alert_events")
            # Ids are taken before commit by concurrent transactions, so they become visible out
            # of order: re-read a trailing window of ids and skip the ones already sent.
            seen: set[int] = set()
            await context.send_initial_metadata((("llmmeter-watch", "live"),))
            while True:
                await wake.wait()
                wake.clear()
                rows = await conn.fetch("SELECT * FROM alert_events WHERE id > $1 ORDER BY id", floor)
                for row in rows:
                    if row["id"] in seen:
                        continue
                    seen.add(row["id"])
                    if all(row[{"rule": "rule_name", "group": "grp"}.get(k, k)] == v for k, v in f.items()):
                        yield alerts_pb2.WatchAlertsResponse(event=event_message(row))
                floor = max(floor, max(seen, default=floor) - _WATCH_REREAD_IDS)
                seen = {i for i in seen if i > floor}
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def CreateSilence(self, request: alerts_pb2.CreateSilenceRequest,
                            context: grpc.aio.ServicerContext) -> alerts_pb2.CreateSilenceResponse:
        """Store a silence."""
        s = request.silence
        now = self._clock.now()
        bad = []
        if not s.matchers:
            bad.append(FieldViolation("silence.matchers", "at least one matcher"))
        for i, m in enumerate(s.matchers):
            if not m.name:
                bad.append(FieldViolation(f"silence.matchers[{i}].name", "required"))
            if m.regex:
                try:
                    re.compile(m.value)
                except re.error as exc:
                    bad.append(FieldViolation(f"silence.matchers[{i}].value",
                                              f"not a regular expression: {exc}"))
        start = s.start_time.ToDatetime().replace(tzinfo=now.tzinfo) if s.HasField("start_time") else now
        if not s.HasField("end_time"):
            bad.append(FieldViolation("silence.end_time", "required"))
        elif s.end_time.ToDatetime().replace(tzinfo=now.tzinfo) <= max(start, now):
            bad.append(FieldViolation("silence.end_time", "must be after the start and in the future"))
        if bad:
            raise InvalidArgument(f"{bad[0].field}: {bad[0].description}", bad)
        end = s.end_time.ToDatetime().replace(tzinfo=now.tzinfo)
        matchers = [{"name": m.name, "value": m.value, "regex": m.regex} for m in s.matchers]
        row = await self._store.create_silence(matchers, start, end, s.comment, now)
        return alerts_pb2.CreateSilenceResponse(silence=silence_message(row))

    async def ListSilences(self, request: alerts_pb2.ListSilencesRequest,
                           context: grpc.aio.ServicerContext) -> alerts_pb2.ListSilencesResponse:
        """A page of silences, newest first."""
        rows, token = await self._store.list_silences(self._clock.now(), request.show_expired,
                                                      page_size(request.page_size), request.page_token)
        return alerts_pb2.ListSilencesResponse(silences=[silence_message(r) for r in rows],
                                               next_page_token=token)

    async def DeleteSilence(self, request: alerts_pb2.DeleteSilenceRequest,
                            context: grpc.aio.ServicerContext) -> alerts_pb2.DeleteSilenceResponse:
        """Delete a silence."""
        if not request.id.isdigit():
            raise InvalidArgument("id: not a silence id", [FieldViolation("id", "a silence id")])
        await self._store.delete_silence(int(request.id))
        return alerts_pb2.DeleteSilenceResponse()
