"""The alerts service's tables (migration 0003): rules, alert states, history, outbox, silences.

An evaluation's new state, its history rows and the notifications it calls for
are written in one transaction (`save`), before anything is sent: the
dispatcher only ever sends what the outbox holds, so a restart neither loses
nor repeats a transition, and `for` keeps counting from the stored
pending-since time.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from google.protobuf import json_format

from llmmeter.v1 import alerts_pb2
from llmmeter_alerts import rules as rules_mod
from llmmeter_alerts.statemachine import AlertStatus
from llmmeter_common.errors import FieldViolation, InvalidArgument, NotFound

EVENTS_CHANNEL = "llmmeter_alert_events"
_FILTER_TERM = re.compile(r'\s*([a-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_.:-]+))\s*')


def parse_filter(text: str, allowed: Sequence[str], field: str = "filter") -> dict[str, str]:
    """`a = "x" AND b = y`: a conjunction of equalities on the allowed names."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    for i, part in enumerate(re.split(r"\s+AND\s+", text.strip())):
        m = _FILTER_TERM.fullmatch(part)
        if m is None or m.group(1) not in allowed:
            raise InvalidArgument(
                f"{field}: term {i + 1} ({part!r}) is not `name = value`, name one of {', '.join(allowed)}",
                [FieldViolation(field, f"conjunction of `name = value`, name in {', '.join(allowed)}")])
        value = m.group(2) if m.group(2) is not None else m.group(3)
        out[m.group(1)] = value.replace('\\"', '"').lower() if m.group(1) in ("state", "severity", "kind") \
            else value.replace('\\"', '"')
    return out


def page_size(size: int) -> int:
    """1..1000, default 100."""
    if size < 0 or size > 1000:
        raise InvalidArgument("page_size: must be between 0 and 1000",
                              [FieldViolation("page_size", "0..1000 (0: default 100)")])
    return size or 100


def encode_token(key: Any) -> str:
    """An opaque page token for a keyset position."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_token(token: str) -> Any:
    """The keyset position of a page token."""
    if not token:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        raise InvalidArgument("page_token: not a token of this list",
                              [FieldViolation("page_token", "use next_page_token as returned")]) from None


@dataclass(frozen=True)
class StoredRule:
    """A rule with its row id and version."""

    id: int
    version: int
    rule: alerts_pb2.Rule


@dataclass(frozen=True)
class Event:
    """A history row to insert."""

    kind: str
    from_state: str | None = None
    to_state: str | None = None
    severity: str | None = None
    value: float | None = None
    channel: str | None = None
    attempt: int | None = None
    success: bool | None = None
    message: str = ""


@dataclass(frozen=True)
class OutboxItem:
    """A notification waiting for delivery."""

    id: int
    rule_name: str
    group: str
    channel: alerts_pb2.NotificationChannel
    payload: dict[str, Any]
    attempts: int


def _rule(row: asyncpg.Record) -> StoredRule:
    rule = rules_mod.from_json(row["spec"])
    rule.create_time.FromDatetime(row["created_at"])
    rule.update_time.FromDatetime(row["updated_at"])
    return StoredRule(row["id"], row["version"], rule)


def status_of(row: asyncpg.Record) -> AlertStatus:
    """The state-machine status of an alert_states row."""
    return AlertStatus(
        state=row["state"], severity=row["severity"], value=row["value"], since=row["state_since"],
        pending_since=row["pending_since"], firing_since=row["firing_since"], last_true=row["last_true_at"],
        evaluated=row["evaluated_at"], notified=row["notified_at"],
        notified_severity=row["notified_severity"], budget_period=row["budget_period"],
        budget_fired=tuple(row["budget_fired"]),
    )


class AlertStore:
    """Typed access to the alerts tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # rules

    async def create_rule(self, rule: alerts_pb2.Rule, now: datetime) -> StoredRule:
        """Insert a rule; INVALID_ARGUMENT on `rule.name` when the name is taken."""
        row = await self.pool.fetchrow(
            """INSERT INTO alert_rules (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3)
               ON CONFLICT (name) DO NOTHING RETURNING *""", rule.name, rules_mod.to_json(rule), now)
        if row is None:
            raise InvalidArgument(f"rule.name: a rule named {rule.name!r} already exists",
                                  [FieldViolation("rule.name", "already exists")])
        return _rule(row)

    async def get_rule(self, name: str) -> StoredRule:
        """One rule; NotFound when absent."""
        row = await self.pool.fetchrow("SELECT * FROM alert_rules WHERE name = $1", name)
        if row is None:
            raise NotFound(f"no rule named {name!r}")
        return _rule(row)

    async def list_rules(self, size: int, token: str) -> tuple[list[StoredRule], str]:
        """One page of rules by name."""
        after = decode_token(token) or ""
        rows = await self.pool.fetch(
            "SELECT * FROM alert_rules WHERE name > $1 ORDER BY name LIMIT $2", after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return [_rule(r) for r in rows], encode_token(rows[-1]["name"]) if more else ""

    async def all_rules(self) -> list[tuple[int, int]]:
        """(id, version) of every rule."""
        return [(r["id"], r["version"]) for r in await self.pool.fetch("SELECT id, version FROM alert_rules")]

    async def rules_by_id(self, ids: Sequence[int]) -> list[StoredRule]:
        """Rules by id."""
        return [_rule(r) for r in await self.pool.fetch(
            "SELECT * FROM alert_rules WHERE id = ANY($1::bigint[])", list(ids))]

    async def update_rule(self, rule: alerts_pb2.Rule, now: datetime) -> StoredRule:
        """Replace a rule's spec (its states stay: groups and `for` keep counting)."""
        row = await self.pool.fetchrow(
            """UPDATE alert_rules SET spec = $2, version = version + 1, updated_at = $3
               WHERE name = $1 RETURNING *""", rule.name, rules_mod.to_json(rule), now)
        if row is None:
            raise NotFound(f"no rule named {rule.name!r}")
        return _rule(row)

    async def delete_rule(self, name: str) -> None:
        """Delete a rule with its alerts, history and queued notifications."""
        if await self.pool.fetchval("DELETE FROM alert_rules WHERE name = $1 RETURNING id", name) is None:
            raise NotFound(f"no rule named {name!r}")

    # alert states

    async def states(self, rule_id: int) -> dict[str, AlertStatus]:
        """The alerts of one rule by group."""
        rows = await self.pool.fetch("SELECT * FROM alert_states WHERE rule_id = $1", rule_id)
        return {r["grp"]: status_of(r) for r in rows}

    async def save(self, rule_id: int, rule: alerts_pb2.Rule, group: str, status: AlertStatus,
                   events: Sequence[Event],
                   outbox: Sequence[tuple[alerts_pb2.NotificationChannel, dict[str, Any]]],
                   now: datetime) -> bool:
        """Persist one alert's new state with its history and notifications, atomically.

        Returns False (and writes nothing) when the rule was deleted meanwhile.
        """
        s = status
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM alert_rules WHERE id = $1 FOR SHARE", rule_id) is None:
                return False
            await conn.execute(
                """INSERT INTO alert_states (rule_id, grp, state, severity, value, state_since, pending_since,
                       firing_since, last_true_at, evaluated_at, notified_at, notified_severity,
                       budget_period, budget_fired)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                   ON CONFLICT (rule_id, grp) DO UPDATE SET state = $3, severity = $4, value = $5,
                       state_since = $6, pending_since = $7, firing_since = $8, last_true_at = $9,
                       evaluated_at = $10, notified_at = $11, notified_severity = $12, budget_period = $13,
                       budget_fired = $14""",
                rule_id, group, s.state, s.severity, s.value, s.since or now, s.pending_since, s.firing_since,
                s.last_true, s.evaluated, s.notified, s.notified_severity, s.budget_period,
                list(s.budget_fired))
            last = None
            for e in events:
                last = await self._event(conn, now, rule_id, rule.name, group, e)
            for channel, payload in outbox:
                await conn.execute(
                    """INSERT INTO alert_outbox (created_at, rule_id, rule_name, grp, channel, payload,
                           next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $1)""",
                    now, rule_id, rule.name, group, json_format.MessageToJson(channel, indent=None),
                    json.dumps(payload))
            if last is not None:
                await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(last))
        return True

    async def _event(self, conn: Any, now: datetime, rule_id: int | None, rule_name: str,
                     group: str, e: Event) -> int:
        value: int = await conn.fetchval(
            """INSERT INTO alert_events (at, kind, rule_id, rule_name, grp, from_state, to_state, severity,
                   value, channel, attempt, success, message)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id""",
            now, e.kind, rule_id, rule_name, group, e.from_state, e.to_state, e.severity, e.value, e.channel,
            e.attempt, e.success, e.message)
        return value

    async def list_alerts(self, filter_: str, size: int, token: str) -> tuple[list[asyncpg.Record], str]:
        """One page of alerts (state rows joined with their rule) by rule name and group."""
        f = parse_filter(filter_, ("rule", "group", "state", "severity"))
        after = decode_token(token) or ["", ""]
        rows = await self.pool.fetch(
            """SELECT s.*, r.name AS rule_name, r.spec
               FROM alert_states s JOIN alert_rules r ON r.id = s.rule_id
               WHERE (r.name, s.grp) > ($1, $2)
                 AND ($3::text IS NULL OR r.name = $3) AND ($4::text IS NULL OR s.grp = $4)
                 AND ($5::text IS NULL OR s.state = $5) AND ($6::text IS NULL OR s.severity = $6)
               ORDER BY r.name, s.grp LIMIT $7""",
            after[0], after[1], f.get("rule"), f.get("group"), f.get("state"), f.get("severity"), size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return rows, encode_token([rows[-1]["rule_name"], rows[-1]["grp"]]) if more else ""

    async def list_events(self, filter_: str, size: int, token: str) -> tuple[list[asyncpg.Record], str]:
        """One page of history, newest first."""
        f = parse_filter(filter_, ("rule", "group", "kind"))
        before = decode_token(token) or 2**62
        rows = await self.pool.fetch(
            """SELECT * FROM alert_events WHERE id < $1
                 AND ($2::text IS NULL OR rule_name = $2) AND ($3::text IS NULL OR grp = $3)
                 AND ($4::text IS NULL OR kind = $4)
               ORDER BY id DESC LIMIT $5""",
            before, f.get("rule"), f.get("group"), f.get("kind"), size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return rows, encode_token(rows[-1]["id"]) if more else ""

    async def event(self, event_id: int) -> asyncpg.Record | None:
        """One history row."""
        return await self.pool.fetchrow("SELECT * FROM alert_events WHERE id = $1", event_id)

    # outbox

    async def due_notifications(self, now: datetime, exclude: Sequence[int],
                                limit: int = 100) -> list[OutboxItem]:
        """Pending notifications whose next attempt is due."""
        rows = await self.pool.fetch(
            """SELECT * FROM alert_outbox WHERE status = 'pending' AND next_attempt_at <= $1
                 AND NOT (id = ANY($2::bigint[])) ORDER BY id LIMIT $3""", now, list(exclude), limit)
        return [OutboxItem(r["id"], r["rule_name"], r["grp"],
                           json_format.Parse(r["channel"], alerts_pb2.NotificationChannel()),
                           json.loads(r["payload"]), r["attempts"]) for r in rows]

    async def record_attempt(self, item: OutboxItem, now: datetime, ok: bool, error: str,
                             next_at: datetime | None, channel: str, answer: str = "") -> None:
        """A delivery attempt: its history row (with the answer's status, e.g. `HTTP 204`, never its
        body), and the outbox row delivered, retried later, or failed."""
        attempt = item.attempts + 1
        status = "delivered" if ok else ("pending" if next_at is not None else "failed")
        async with self.pool.acquire() as conn, conn.transaction():
            rule_id = await conn.fetchval(
                """UPDATE alert_outbox
                   SET attempts = $2, status = $3, next_attempt_at = coalesce($4, next_attempt_at)
                   WHERE id = $1 RETURNING rule_id""", item.id, attempt, status, next_at)
            if ok:
                msg = f"delivered ({answer})" if answer else "delivered"
            else:
                msg = f"{error}; " + ("retrying" if next_at is not None else "giving up")
            await self._event(conn, now, rule_id, item.rule_name, item.group,
                              Event("delivery", severity=item.payload.get("severity") or None,
                                    value=item.payload.get("value"), channel=channel, attempt=attempt,
                                    success=ok, message=msg))

    # silences

    async def create_silence(self, matchers: list[dict[str, Any]], start: datetime, end: datetime,
                             comment: str, now: datetime) -> asyncpg.Record:
        """Insert a silence."""
        row: asyncpg.Record | None = await self.pool.fetchrow(
            """INSERT INTO alert_silences (matchers, starts_at, ends_at, comment, created_at)
               VALUES ($1, $2, $3, $4, $5) RETURNING *""", json.dumps(matchers), start, end, comment, now)
        assert row is not None
        return row

    async def list_silences(self, now: datetime, expired: bool, size: int,
                            token: str) -> tuple[list[asyncpg.Record], str]:
        """One page of silences, newest first."""
        before = decode_token(token) or 2**62
        rows = await self.pool.fetch(
            """SELECT * FROM alert_silences WHERE id < $1 AND ($2 OR ends_at > $3)
               ORDER BY id DESC LIMIT $4""", before, expired, now, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return rows, encode_token(rows[-1]["id"]) if more else ""

    async def active_silences(self, now: datetime) -> list[list[dict[str, Any]]]:
        """The matchers of every silence in effect at `now`."""
        rows = await self.pool.fetch(
            "SELECT matchers FROM alert_silences WHERE starts_at <= $1 AND ends_at > $1", now)
        return [json.loads(r["matchers"]) for r in rows]

    async def delete_silence(self, silence_id: int) -> None:
        """Delete a silence; NotFound when absent."""
        gone = await self.pool.fetchval("DELETE FROM alert_silences WHERE id = $1 RETURNING id", silence_id)
        if gone is None:
            raise NotFound(f"no silence with id {silence_id}")
