"""The alerts service end to end: real PostgreSQL, real ingest and query services, a real webhook receiver.

Rule scenarios are table-driven in the manner of `promtool test rules`: a
series of records over time, evaluation instants, and the expected alert
states and notifications at each instant. The alerts service runs with a
clock the test moves by hand (`evaluate=False`; each instant is one
`server.tick()`), so nothing sleeps. The clock lies in the past of the real
one, so every record it describes is acceptable to the ingest service.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from llmmeter.v1 import alerts_pb2, alerts_pb2_grpc, ingest_pb2_grpc, query_pb2
from llmmeter_alerts.server import AlertsServer
from llmmeter_alerts.settings import AlertsSettings
from llmmeter_query.server import QueryServer

from records import bad_request_fields, ingest, record, ts

A = alerts_pb2


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t

    def set(self, when: datetime) -> None:
        self.t = when


class Receiver:
    """A webhook receiver on loopback: records each request, answers with scripted status codes.

    A scripted `None` hangs (never answers) until the receiver stops.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[int | None] = []
        self.default: int | None = 200
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            pairs = (ln.partition(":") for ln in lines[1:] if ln)
            headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((headers, body))
            code = self.script.pop(0) if self.script else self.default
            if code is None:
                await self._release.wait()
                return
            writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.requests]

    def kinds(self) -> list[tuple[str, str, str]]:
        """(kind, group, severity) of every request received."""
        return [(b["kind"], b["group"], b["severity"]) for b in self.bodies()]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


Factory = Callable[..., Awaitable[AlertsServer]]


@pytest.fixture
async def make_alerts(db_url: str, query_server: QueryServer) -> AsyncIterator[Factory]:
    """Starts alerts service replicas on this test's database, driven by a given clock."""
    started: list[AlertsServer] = []

    async def make(clock: FakeClock, **overrides: Any) -> AlertsServer:
        values: dict[str, Any] = {
            "database_url": db_url, "host": "127.0.0.1", "port": 0,
            "query_addr": f"127.0.0.1:{query_server.port}", "evaluate": False,
            "webhook_timeout_seconds": 10.0, "webhook_initial_backoff_seconds": 30.0,
            "shutdown_grace_seconds": 1.0, "metrics_port": 0,
        }
        values.update(overrides)
        server = AlertsServer(AlertsSettings(**values), clock)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        if not getattr(server, "stopped", False):
            await server.stop()


async def stop(server: AlertsServer) -> None:
    await server.stop()
    server.stopped = True  # type: ignore[attr-defined]


def stub(server: AlertsServer) -> tuple[grpc.aio.Channel, alerts_pb2_grpc.AlertsServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, alerts_pb2_grpc.AlertsServiceStub(channel)


def dur(text: str) -> Any:
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    d.FromSeconds(int(float(text[:-1]) * units[text[-1]]))
    return d


def rule(name: str = "errors", receiver: Receiver | None = None, **kw: Any) -> alerts_pb2.Rule:
    """An error-rate rule over 5 minutes, warning > 0.1, to the receiver (signed)."""
    r = A.Rule(name=name, metric=kw.pop("metric", query_pb2.METRIC_FAILURE_RATE),
               window=dur(kw.pop("window", "5m")), every=dur(kw.pop("every", "30s")),
               warning=kw.pop("warning", A.Threshold(comparison=A.COMPARISON_GREATER, value=0.1)))
    for key in ("for_duration", "keep_firing_for", "renotify_interval"):
        if key in kw:
            getattr(r, key).CopyFrom(dur(kw.pop(key)))
    if receiver is not None:
        r.channels.add().webhook.CopyFrom(A.WebhookChannel(url=receiver.url, secret="s3cret"))
    for key, value in kw.items():
        if isinstance(value, dict):
            getattr(r, key).update(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(r, key).CopyFrom(value)
        else:
            setattr(r, key, value)
    return r


BASE = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)


@dataclass(frozen=True)
class Recs:
    """`count` records per minute over minutes [start, end), `errors` of them failing."""

    start: int
    end: int
    count: int
    errors: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def build(self, base: datetime) -> list[Any]:
        out = []
        for m in range(self.start, self.end):
            for i in range(self.count):
                when = base + timedelta(minutes=m, seconds=i * 50 / self.count)
                out.append(record(when, status_code=500 if i < self.errors else 200, **self.fields))
        return out


@dataclass(frozen=True)
class Eval:
    """At `minute`: the expected (state, severity) per group, and the notifications received since."""

    minute: float
    states: dict[str, tuple[str, str | None]]
    sent: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    rule: dict[str, Any]
    series: list[Recs]
    evals: list[Eval]


SEV = {0: None, 1: "warning", 2: "critical"}
STATE = {1: "ok", 2: "pending", 3: "firing", 4: "resolved"}

SCENARIOS: dict[str, Scenario] = {
    "for, then resolve": Scenario(
        {"for_duration": "2m"},
        [Recs(0, 5, 20), Recs(5, 13, 20, 10), Recs(13, 30, 20)],
        [Eval(5, {"": ("ok", None)}),
         Eval(7, {"": ("pending", "warning")}),
         Eval(8, {"": ("pending", "warning")}),
         Eval(9, {"": ("firing", "warning")}, [("firing", "", "warning")]),
         Eval(14, {"": ("firing", "warning")}),
         Eval(19, {"": ("resolved", None)}, [("resolved", "", "warning")])]),
    "keep_firing_for": Scenario(
        {"keep_firing_for": "5m", "window": "1m"},
        [Recs(0, 2, 20, 10), Recs(2, 4, 20), Recs(4, 5, 20, 10), Recs(5, 20, 20)],
        [Eval(1, {"": ("firing", "warning")}, [("firing", "", "warning")]),
         Eval(3, {"": ("firing", "warning")}),
         Eval(5, {"": ("firing", "warning")}),
         Eval(9, {"": ("firing", "warning")}),
         Eval(10, {"": ("resolved", None)}, [("resolved", "", "warning")])]),
    "group fan-out with min_requests": Scenario(
        {"group_by": "model", "min_requests": 20},
        [Recs(0, 5, 10, 5, {"model": "bad"}), Recs(0, 5, 10, 0, {"model": "good"}),
         Recs(0, 1, 3, 3, {"model": "rare"})],
        [Eval(5, {"bad": ("firing", "warning"), "good": ("ok", None), "rare": ("ok", None)},
              [("firing", "bad", "warning")])]),
    "escalation warning -> critical": Scenario(
        {"critical": A.Threshold(comparison=A.COMPARISON_GREATER, value=0.4), "window": "1m"},
        [Recs(0, 1, 20, 4), Recs(1, 2, 20, 12), Recs(2, 3, 20, 0)],
        [Eval(1, {"": ("firing", "warning")}, [("firing", "", "warning")]),
         Eval(2, {"": ("firing", "critical")}, [("escalation", "", "critical")]),
         Eval(3, {"": ("resolved", None)}, [("resolved", "", "critical")])]),
    "no data alerts": Scenario(
        {"no_data": A.NO_DATA_POLICY_ALERT, "window": "1m"},
        [Recs(0, 1, 10)],
        [Eval(1, {"": ("ok", None)}),
         Eval(3, {"": ("firing", "warning")}, [("firing", "", "warning")])]),
}


async def run_evals(server: AlertsServer, clock: FakeClock, receiver: Receiver, db_url: str,
                    evals: list[Eval], name: str = "errors") -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for ev in evals:
            clock.set(BASE + timedelta(minutes=ev.minute))
            before = len(receiver.requests)
            await server.tick()
            rows = await conn.fetch(
                """SELECT grp, state, severity FROM alert_states s JOIN alert_rules r ON r.id = s.rule_id
                   WHERE r.name = $1""", name)
            got = {r["grp"]: (r["state"], r["severity"]) for r in rows}
            assert got == ev.states, f"at minute {ev.minute}"
            assert receiver.kinds()[before:] == ev.sent, f"at minute {ev.minute}"
    finally:
        await conn.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_rule_scenarios(name: str, make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub,
                              receiver: Receiver, db_url: str) -> None:
    sc = SCENARIOS[name]
    await ingest(ingest_stub, [r for recs in sc.series for r in recs.build(BASE)])
    clock = FakeClock(BASE)
    server = await make_alerts(clock)
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule(receiver=receiver, **sc.rule)))
    await run_evals(server, clock, receiver, db_url, sc.evals)


async def test_crud_pagination_update_mask_and_validation(make_alerts: Factory, receiver: Receiver) -> None:
    server = await make_alerts(FakeClock(BASE))
    channel, alerts = stub(server)
    async with channel:
        for n in ("c", "a", "b"):
            await alerts.CreateRule(A.CreateRuleRequest(rule=rule(n, receiver, filter='team = "payments"')))
        page = await alerts.ListRules(A.ListRulesRequest(page_size=2))
        assert [r.name for r in page.rules] == ["a", "b"] and page.next_page_token
        page2 = await alerts.ListRules(A.ListRulesRequest(page_size=2, page_token=page.next_page_token))
        assert [r.name for r in page2.rules] == ["c"] and not page2.next_page_token
        got = (await alerts.GetRule(A.GetRuleRequest(name="a"))).rule
        assert got.channels[0].webhook.secret == "" and got.channels[0].webhook.url == receiver.url
        assert got.filter == 'team = "payments"' and got.no_data == A.NO_DATA_POLICY_OK
        patch = A.Rule(name="a", window=dur("10m"), min_requests=7)
        upd = await alerts.UpdateRule(A.UpdateRuleRequest(
            rule=patch, update_mask=field_mask_pb2.FieldMask(paths=["window", "min_requests"])))
        assert upd.rule.window.seconds == 600 and upd.rule.min_requests == 7
        assert upd.rule.filter == 'team = "payments"'
        assert server.store is not None
        stored = await server.store.get_rule("a")
        assert stored.rule.channels[0].webhook.secret == "s3cret"  # kept although reads redact it
        await alerts.DeleteRule(A.DeleteRuleRequest(name="a"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await alerts.GetRule(A.GetRuleRequest(name="a"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        bad_cases = [
            (rule("b"), "rule.name"),
            (rule("x", window="0s"), "rule.window"),
            (rule("x", metric=query_pb2.METRIC_UNSPECIFIED), "rule.metric"),
            (rule("x", warning=A.Threshold()), "rule.warning"),
            (rule("x", filter="model = "), "rule.filter"),
            (rule("x", group_by="colour"), "rule.group_by"),
            (rule("x", min_requests=-1), "rule.min_requests"),
            (rule("x", annotation="{{ nope }}"), "rule.annotation"),
            (rule("bad name!"), "rule.name"),
        ]
        for bad, field_ in bad_cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await alerts.CreateRule(A.CreateRuleRequest(rule=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field_
            assert field_ in [f for f, _ in bad_request_fields(err.value)], (field_, err.value.details())
        bad_hook = rule("x")
        bad_hook.channels.add().webhook.url = "ftp://nope"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await alerts.CreateRule(A.CreateRuleRequest(rule=bad_hook))
        assert [f for f, _ in bad_request_fields(err.value)] == ["rule.channels[0].webhook.url"]


async def test_restart_mid_pending_keeps_for_and_does_not_renotify(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        db_url: str) -> None:
    await ingest(ingest_stub, Recs(0, 30, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    first = await make_alerts(clock)
    channel, alerts = stub(first)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule(receiver=receiver, for_duration="4m")))
    await run_evals(first, clock, receiver, db_url, [Eval(5, {"": ("pending", "warning")}),
                                                     Eval(7, {"": ("pending", "warning")})])
    await stop(first)
    second = await make_alerts(clock)
    await run_evals(second, clock, receiver, db_url, [
        Eval(8, {"": ("pending", "warning")}),  # `for` still counts from minute 5, not from the restart
        Eval(9, {"": ("firing", "warning")}, [("firing", "", "warning")]),
    ])
    await stop(second)
    third = await make_alerts(clock)
    await run_evals(third, clock, receiver, db_url, [Eval(10, {"": ("firing", "warning")})])  # no duplicate


async def test_webhook_signature_failure_retry_and_history(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver) -> None:
    await ingest(ingest_stub, Recs(0, 30, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock, webhook_max_attempts=4)
    receiver.script = [500, 503]
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule(
            receiver=receiver, labels={"owner": "payments"},
            annotation="{{ group }} error rate is {{ value }}")))
        await server.tick()
        assert len(receiver.requests) == 1  # failed; the next attempt waits 30 s
        clock.set(clock.t + timedelta(seconds=10))
        await server.tick()
        assert len(receiver.requests) == 1
        clock.set(clock.t + timedelta(seconds=25))
        await server.tick()
        assert len(receiver.requests) == 2  # failed again; backoff doubles to 60 s
        clock.set(clock.t + timedelta(seconds=61))
        await server.tick()
        assert len(receiver.requests) == 3
        clock.set(clock.t + timedelta(minutes=10))
        await server.tick()
        assert len(receiver.requests) == 3  # delivered: nothing more
        headers, body = receiver.requests[-1]
        stamp = headers["x-llmmeter-timestamp"]
        expected = hmac.new(b"s3cret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["x-llmmeter-signature"] == f"sha256={expected}"
        doc = json.loads(body)
        assert doc["kind"] == "firing" and doc["rule"] == "errors" and doc["labels"] == {"owner": "payments"}
        assert doc["annotation"] == " error rate is 0.5" and doc["value"] == 0.5
        events = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = delivery"))).events
        assert [(e.attempt, e.success) for e in reversed(events)] == [(1, False), (2, False), (3, True)]
        assert "HTTP 500" in events[-1].message
        history = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter='rule = "errors"'))).events
        assert {e.kind for e in history} == {A.ALERT_EVENT_KIND_STATE_CHANGE, A.ALERT_EVENT_KIND_NOTIFICATION,
                                             A.ALERT_EVENT_KIND_DELIVERY}


async def test_hanging_target_does_not_stall_others(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver) -> None:
    await ingest(ingest_stub, Recs(0, 5, 20, 10).build(BASE))
    hanging = await Receiver().start()
    hanging.default = None
    try:
        clock = FakeClock(BASE + timedelta(minutes=5))
        server = await make_alerts(clock, webhook_timeout_seconds=4.0)
        channel, alerts = stub(server)
        async with channel:
            await alerts.CreateRule(A.CreateRuleRequest(rule=rule("hangs", hanging)))
            await alerts.CreateRule(A.CreateRuleRequest(rule=rule("works", receiver)))
        assert await server.evaluator.tick() == 2
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.dispatcher.run_due()
        while not receiver.requests:  # delivered well before the hanging target's 4 s timeout
            assert loop.time() - started < 3.0
            await asyncio.sleep(0.01)
        assert receiver.kinds() == [("firing", "", "warning")]
        assert len(hanging.requests) == 1  # still unanswered
        await server.dispatcher.drain()  # the hanging delivery times out and is scheduled again
        rows = await server.store.pool.fetch(
            "SELECT rule_name, status, attempts FROM alert_outbox ORDER BY rule_name")
        assert [tuple(r) for r in rows] == [("hangs", "pending", 1), ("works", "delivered", 1)]
    finally:
        await hanging.stop()


async def test_two_replicas_notify_once_and_fail_over(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        db_url: str) -> None:
    await ingest(ingest_stub, Recs(0, 20, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    a = await make_alerts(clock)
    b = await make_alerts(clock)
    channel, alerts = stub(b)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule(receiver=receiver, renotify_interval="1h")))
    assert await a.tick() == 1
    assert await b.tick() == 0  # a leads
    assert receiver.kinds() == [("firing", "", "warning")]
    clock.set(clock.t + timedelta(minutes=1))
    assert await asyncio.gather(a.tick(), b.tick()) == [1, 0]
    await stop(a)
    clock.set(clock.t + timedelta(minutes=1))
    assert await b.tick() == 1  # b took over: same state, no second notification
    assert receiver.kinds() == [("firing", "", "warning")]


async def test_budget_fires_at_80_and_100_percent_once_per_day(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        db_url: str) -> None:
    day1 = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    day2 = day1 + timedelta(days=1)
    team = {"team": "payments"}
    spend = [(day1 + timedelta(hours=1), 0.5), (day1 + timedelta(hours=2), 0.35),
             (day1 + timedelta(hours=3), 0.05),
             (day1 + timedelta(hours=4), 0.3), (day2 + timedelta(hours=1), 1.5),
             (day1 + timedelta(hours=1), 0.2, {"team": "search"})]
    await ingest(ingest_stub, [record(when, cost=cost, **(extra[0] if extra else team))
                               for when, cost, *extra in spend])
    clock = FakeClock(day1)
    server = await make_alerts(clock)
    channel, alerts = stub(server)
    budget = A.Rule(name="payments-budget", filter='team = "payments"', every=dur("1m"),
                    budget=A.Budget(period=A.BUDGET_PERIOD_DAY, limit=1.0, percents=[80, 100]))
    budget.channels.add().webhook.url = receiver.url
    async with channel:
        created = (await alerts.CreateRule(A.CreateRuleRequest(rule=budget))).rule
        assert created.metric == query_pb2.METRIC_COST
    expected = [(1.5, []), (2.5, [80.0]), (3.5, []), (4.5, [100.0]), (5.5, []),
                (24 + 0.5, []), (24 + 1.5, [100.0]), (24 + 2, [])]
    for hours, percents in expected:
        clock.set(day1 + timedelta(hours=hours))
        before = len(receiver.requests)
        await server.tick()
        got = [b["budget"]["percent"] for b in receiver.bodies()[before:]]
        assert got == percents, hours
    last = receiver.bodies()[-1]
    assert last["kind"] == "budget" and last["severity"] == "critical"
    assert last["budget"]["period"] == day2.strftime("%Y-%m-%d") and last["value"] == pytest.approx(1.5)


async def test_silence_mutes_then_lets_through(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        db_url: str) -> None:
    await ingest(ingest_stub, Recs(0, 20, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock)
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(
            rule=rule(receiver=receiver, labels={"owner": "payments"})))
        sil = (await alerts.CreateSilence(A.CreateSilenceRequest(silence=A.Silence(
            matchers=[A.Matcher(name="owner", value="payments")], end_time=ts(clock.t + timedelta(hours=1)),
            comment="deploy"))))
        listed = await alerts.ListSilences(A.ListSilencesRequest())
        assert [s.id for s in listed.silences] == [sil.silence.id]
        await server.tick()
        assert receiver.requests == []
        current = (await alerts.ListAlerts(A.ListAlertsRequest(filter="state = firing"))).alerts
        assert [(x.rule, x.silenced, x.value) for x in current] == [("errors", True, 0.5)]
        silenced = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = silenced"))).events
        assert len(silenced) == 1
        await alerts.DeleteSilence(A.DeleteSilenceRequest(id=sil.silence.id))
        clock.set(clock.t + timedelta(minutes=1))
        await server.tick()
        assert receiver.kinds() == [("firing", "", "warning")]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await alerts.CreateSilence(A.CreateSilenceRequest(silence=A.Silence(
                matchers=[A.Matcher(name="rule", value="errors")],
                end_time=ts(clock.t - timedelta(hours=1)))))
        assert [f for f, _ in bad_request_fields(err.value)] == ["silence.end_time"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await alerts.CreateSilence(A.CreateSilenceRequest(silence=A.Silence(
                matchers=[A.Matcher(name="group", value="gpt-(", regex=True)],
                end_time=ts(clock.t + timedelta(hours=1)))))
        assert [f for f, _ in bad_request_fields(err.value)] == ["silence.matchers[0].value"]


async def test_watch_streams_state_changes_and_test_rule_changes_nothing(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        db_url: str) -> None:
    await ingest(ingest_stub, Recs(0, 10, 20, 10, {"model": "a"}).build(BASE)
                 + Recs(0, 10, 20, 0, {"model": "b"}).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock)
    channel, alerts = stub(server)
    async with channel:
        r = rule(receiver=receiver, group_by="model", min_requests=10)
        tested = await alerts.TestRule(A.TestRuleRequest(rule=r))
        assert [(t.group, t.value, t.severity) for t in tested.results] == [
            ("a", 0.5, A.SEVERITY_WARNING), ("b", 0.0, A.SEVERITY_UNSPECIFIED)]
        await alerts.CreateRule(A.CreateRuleRequest(rule=r))
        by_name = await alerts.TestRule(A.TestRuleRequest(name="errors"))
        assert len(by_name.results) == 2
        assert (await alerts.ListAlerts(A.ListAlertsRequest())).alerts == []
        assert receiver.requests == []

        call = alerts.WatchAlerts(A.WatchAlertsRequest(filter='group = "a"'))
        await call.initial_metadata()
        await server.tick()
        first = await asyncio.wait_for(call.read(), 10)
        assert (first.event.group, first.event.to_state) == ("a", A.ALERT_STATE_FIRING)
        call.cancel()
        listed = (await alerts.ListAlerts(A.ListAlertsRequest(page_size=1))).alerts
        assert [(x.group, x.state) for x in listed] == [("a", A.ALERT_STATE_FIRING)]


async def test_slack_and_log_channels(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    await ingest(ingest_stub, Recs(0, 5, 20, 10, {"model": "gpt-4o"}).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock)
    r = rule(group_by="model", annotation="{{ group }} fails {{ value }}")
    r.channels.add().slack.url = receiver.url
    r.channels.add().log.SetInParent()
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=r))
        with caplog.at_level("WARNING", logger="llmmeter_alerts.notify"):
            await server.tick()
        assert receiver.bodies() == [{"text": ":warning: *FIRING* warning errors [gpt-4o]: value 0.5\n"
                                              "gpt-4o fails 0.5"}]
        assert any('"kind": "firing"' in rec.getMessage() for rec in caplog.records)
        deliveries = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = delivery"))).events
        assert sorted((e.channel, e.success) for e in deliveries) == [("log", True), ("slack", True)]
