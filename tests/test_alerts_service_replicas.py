"""The alerts service end to end, across replicas: restarts and fail-over keep state and notify once.

Real PostgreSQL, real ingest and query services, a real webhook receiver (see
alerts_harness.py). A replica started after another stopped carries on from
the stored state (a `for` keeps counting, nothing is sent twice), and of two
replicas on one database one leads and the other takes over when it stops.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from llmmeter.v1 import alerts_pb2 as A
from llmmeter.v1 import ingest_pb2_grpc

from alerts_harness import BASE, Eval, Factory, FakeClock, Receiver, Recs, rule, run_evals, stop, stub
from records import ingest


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
