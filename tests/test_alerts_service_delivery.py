"""The alerts service end to end, its notifications: signed webhooks, retries, timeouts, silences, channels.

Real PostgreSQL, real ingest and query services, real webhook receivers (see
alerts_harness.py): a failed webhook is retried with backoff and every attempt
recorded, a target that never answers does not hold up the others, a silence
mutes matching alerts until it is deleted, and Slack and log channels deliver
alongside.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import timedelta

import grpc
import pytest

from llmmeter.v1 import alerts_pb2 as A
from llmmeter.v1 import ingest_pb2_grpc

from alerts_harness import BASE, Factory, FakeClock, Receiver, Recs, rule, stub
from records import bad_request_fields, ingest, ts


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
