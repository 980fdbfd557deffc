"""The alerts service end to end, its rules: evaluated over time, managed, budgets, tested and watched.

Real PostgreSQL, real ingest and query services, a real webhook receiver (see
alerts_harness.py). Rule scenarios are table-driven in the manner of
`promtool test rules`: a series of records over time, evaluation instants,
and the expected alert states and notifications at each instant. Then the
rule API: create, list in pages, update by field mask, delete, validation;
daily budgets; TestRule and WatchAlerts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from llmmeter.v1 import alerts_pb2 as A
from llmmeter.v1 import ingest_pb2_grpc, query_pb2

from alerts_harness import BASE, Eval, Factory, FakeClock, Receiver, Recs, dur, rule, run_evals, stub
from records import bad_request_fields, ingest, record


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
        assert got.channels[0].webhook.secret == ""  # reads mask the URL's path too (it may hold a token)
        assert got.channels[0].webhook.url == receiver.url.rsplit("/", 1)[0] + "/****"
        assert got.filter == 'team = "payments"' and got.no_data == A.NO_DATA_POLICY_OK
        patch = A.Rule(name="a", window=dur("10m"), min_requests=7)
        upd = await alerts.UpdateRule(A.UpdateRuleRequest(
            rule=patch, update_mask=field_mask_pb2.FieldMask(paths=["window", "min_requests"])))
        assert upd.rule.window.seconds == 600 and upd.rule.min_requests == 7
        assert upd.rule.filter == 'team = "payments"'
        assert server.store is not None
        stored = await server.store.get_rule("a")
        assert stored.rule.channels[0].webhook.secret == "s3cret"  # kept although reads redact it
        assert stored.rule.channels[0].webhook.url == receiver.url
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
