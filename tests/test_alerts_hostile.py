"""Notification targets and rule fields as an attacker would send them: no requests to loopback,
metadata or private addresses unless the operator allows them, no response bodies in the history,
secrets only from the operator's prefix or list, URLs masked on read, enums and sizes range-checked;
internal addresses in other spellings (NAT64, 6to4, numeric shorthands, metadata names), DNS rebinding
between check and send, and the answer text older versions kept in the history."""

from __future__ import annotations

import logging
from datetime import timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmeter.v1 import alerts_pb2 as A
from llmmeter.v1 import ingest_pb2_grpc
from llmmeter_alerts.targets import TargetPolicy, mask_url

from alerts_harness import BASE, Factory, FakeClock, Receiver, Recs, rule, stub
from records import bad_request_fields, ingest


def _hook(url: str, **kw: str) -> A.Rule:
    r = rule("hook")
    r.channels.add().webhook.CopyFrom(A.WebhookChannel(url=url, **kw))
    return r


async def _refused(alerts, r: A.Rule) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await alerts.CreateRule(A.CreateRuleRequest(rule=r))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return bad_request_fields(err.value)


async def test_internal_targets_are_refused_unless_allowed(make_alerts: Factory, receiver: Receiver) -> None:
    server = await make_alerts(FakeClock(BASE), webhook_allow_hosts="")
    channel, alerts = stub(server)
    async with channel:
        for url in ("http://127.0.0.1:8080/x", "http://169.254.169.254/latest/meta-data/",
                    "http://localhost:9/x", "http://10.1.2.3/x", "http://[::1]/x", "http://[fd00:ec2::254]/",
                    "http://100.64.0.1/", "http://[::ffff:127.0.0.1]/"):
            fields = await _refused(alerts, _hook(url))
            assert fields[0][0] == "rule.channels[0].webhook.url" and "allow" in fields[0][1], url
        slack = rule("slack")
        slack.channels.add().slack.url = "http://127.0.0.1:1/services/T/B/X"
        assert (await _refused(alerts, slack))[0][0] == "rule.channels[0].slack.url"
        for bad in ("ftp://example.com/x", "http:///nohost", "javascript:alert(1)"):
            assert (await _refused(alerts, _hook(bad)))[0][0] == "rule.channels[0].webhook.url"
    allowed = await make_alerts(FakeClock(BASE), webhook_allow_hosts="127.0.0.0/8")
    channel, alerts = stub(allowed)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=_hook(receiver.url)))


async def test_a_stored_internal_target_is_refused_at_send_time_and_history_keeps_no_bodies(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver) -> None:
    """A rule saved while the operator allowed loopback, then the allowance withdrawn: the send is
    refused by the send-time check (as a name resolving to a new address would be)."""
    await ingest(ingest_stub, Recs(0, 30, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    first = await make_alerts(clock)  # allows 127.0.0.1 (the harness receiver)
    channel, alerts = stub(first)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule(receiver=receiver)))
    await first.stop()
    first.stopped = True  # type: ignore[attr-defined]
    strict = await make_alerts(clock, webhook_allow_hosts="")
    await strict.tick()
    assert receiver.requests == []  # nothing was sent to loopback
    channel, alerts = stub(strict)
    async with channel:
        events = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = delivery"))).events
    assert events and not events[0].success and "egress policy" in events[0].message


async def test_history_records_the_status_code_not_the_answer(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub) -> None:
    import asyncio

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"SSH-2.0-OpenSSH_9.2 internal-secret-banner\r\n")  # not HTTP: a port scanner's prize
        await writer.drain()
        writer.close()

    server_sock = await asyncio.start_server(chatty, "127.0.0.1", 0)
    port = server_sock.sockets[0].getsockname()[1]
    await ingest(ingest_stub, Recs(0, 30, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock, webhook_max_attempts=1)
    channel, alerts = stub(server)
    try:
        async with channel:
            await alerts.CreateRule(A.CreateRuleRequest(rule=_hook(f"http://127.0.0.1:{port}/x")))
            await server.tick()
            events = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = delivery"))).events
        assert events and events[0].message.startswith("not an HTTP answer")
        assert all("SSH" not in e.message and "secret" not in e.message for e in events)
    finally:
        server_sock.close()


async def test_secret_env_only_under_the_operators_prefix(make_alerts: Factory, receiver: Receiver) -> None:
    server = await make_alerts(FakeClock(BASE))
    channel, alerts = stub(server)
    async with channel:
        for name in ("DATABASE_URL", "LLMMETER_BOOTSTRAP_ADMIN_KEY", "LLMMETER_WEBHOOK_SECRET_"):
            fields = await _refused(alerts, _hook(receiver.url, secret_env=name))
            assert fields == [("rule.channels[0].webhook.secret_env",
                               "must start with LLMMETER_WEBHOOK_SECRET_ (the operator's)")]
        await alerts.CreateRule(A.CreateRuleRequest(rule=_hook(receiver.url,
                                                               secret_env="LLMMETER_WEBHOOK_SECRET_PAGER")))


async def test_notification_urls_are_masked_on_read_and_kept_on_update(
        make_alerts: Factory, receiver: Receiver) -> None:
    server = await make_alerts(FakeClock(BASE), webhook_allow_hosts="127.0.0.1")
    slack_url = receiver.url.replace("/hook", "/services/T000/B000/XXXXSECRET")
    r = _hook(receiver.url + "?token=abc")
    r.channels.add().slack.url = slack_url
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=r))
        listed = (await alerts.ListRules(A.ListRulesRequest())).rules[0]
        urls = [listed.channels[0].webhook.url, listed.channels[1].slack.url]
        assert all(u.endswith("/****") and "SECRET" not in u and "token" not in u for u in urls)
        listed.window.FromTimedelta(timedelta(minutes=10))  # a read rule edited and sent back whole
        await alerts.UpdateRule(A.UpdateRuleRequest(rule=listed))
    stored = await server.store.get_rule("hook")
    assert [stored.rule.channels[0].webhook.url, stored.rule.channels[1].slack.url] == [
        receiver.url + "?token=abc", slack_url]
    assert mask_url("https://user:pw@hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/****"


async def test_rule_fields_are_range_checked(make_alerts: Factory) -> None:
    server = await make_alerts(FakeClock(BASE))
    channel, alerts = stub(server)
    async with channel:
        cases = {
            "rule.no_data": rule("a", no_data=99),
            "rule.warning.comparison": rule("b", warning=A.Threshold(comparison=42, value=1)),
            "rule.annotation": rule("c", annotation="x" * 2001),
            "rule.budget.period": rule("d", budget=A.Budget(period=7, limit=10)),
            "rule.labels": rule("e", labels={"k": "v" * 300}),
        }
        for field, r in cases.items():
            assert field in [f for f, _ in await _refused(alerts, r)], field
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_failing_rule_is_logged_once_not_every_round(
        make_alerts: Factory, caplog: pytest.LogCaptureFixture, db_pool) -> None:
    """A rule stored before these checks existed (here: written to the table directly) with an enum
    the state machine does not know fails its evaluation once per change, not every round."""
    clock = FakeClock(BASE)
    server = await make_alerts(clock)
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule("legacy")))
    await db_pool.execute(
        "UPDATE alert_rules SET spec = jsonb_set(spec, '{no_data}', '99')")
    with caplog.at_level(logging.WARNING, logger="llmmeter_alerts.evaluator"):
        for _ in range(5):
            clock.set(clock.t + timedelta(minutes=1))
            await server.tick()
    failures = [r for r in caplog.records if "legacy not evaluated" in r.getMessage()]
    assert len(failures) == 1


def test_the_policy_pins_resolved_addresses() -> None:
    import asyncio

    policy = TargetPolicy.from_setting("", "LLMMETER_WEBHOOK_SECRET_")
    assert asyncio.run(policy.resolve("93.184.215.14", 443)) == ["93.184.215.14"]
    allowed = TargetPolicy.from_setting("localhost", "P_")
    assert "127.0.0.1" in asyncio.run(allowed.resolve("localhost", 80))


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """The event loop's resolver answers these names with these addresses, one list per lookup (the
    last one repeated); other names resolve as usual. Returns the names looked up, in order."""
    import asyncio
    import socket

    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    asked: list[str] = []

    async def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in answers:
            return await real(host, port, *args, **kwargs)
        asked.append(host)
        seq = answers[host]
        addresses = seq.pop(0) if len(seq) > 1 else seq[0]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return asked


async def test_odd_spellings_of_internal_addresses_and_bad_urls_are_refused(
        make_alerts: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """IPv4 inside IPv6 (NAT64, 6to4), numeric shorthands the resolver expands, metadata names, a
    name with one internal address among public ones; malformed ports and brackets are
    INVALID_ARGUMENT naming the URL, not an internal error."""
    _fake_dns(monkeypatch, {"mixed.example": [["93.184.215.14", "10.0.0.5"]]})
    server = await make_alerts(FakeClock(BASE), webhook_allow_hosts="")
    channel, alerts = stub(server)
    async with channel:
        for url in ("http://[64:ff9b::a9fe:a9fe]/latest/", "http://[2002:a9fe:a9fe::1]/", "http://[64:ff9b:1::a00:1]/",
                    "http://2130706433:8080/x", "http://127.1/x", "http://0.0.0.0:9/", "http://[fe80::1%25eth0]/",
                    "http://metadata.google.internal/computeMetadata/v1/", "http://mixed.example/hook"):
            fields = await _refused(alerts, _hook(url))
            assert fields[0][0] == "rule.channels[0].webhook.url" and "allow" in fields[0][1], url
        for url in ("http://example.com:abc/", "http://example.com:0/", "http://example.com:70000/",
                    "http://[::1/x", "https://example.com/" + "x" * 2100):
            assert (await _refused(alerts, _hook(url)))[0][0] == "rule.channels[0].webhook.url", url
        # NAT64 of a public address (what DNS64 answers on an IPv6-only cluster) is public
        await alerts.CreateRule(A.CreateRuleRequest(rule=_hook("http://[64:ff9b::5db8:d70e]/hook")))
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_dns_rebinding_after_the_check_reaches_nothing(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A name public when the rule is saved and loopback when it is sent: nothing is sent."""
    port = receiver.url.split(":")[2].split("/")[0]
    asked = _fake_dns(monkeypatch, {"rebind.example": [["93.184.215.14"], ["127.0.0.1"]]})
    await ingest(ingest_stub, Recs(0, 30, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock, webhook_allow_hosts="", webhook_max_attempts=1)
    channel, alerts = stub(server)
    async with channel:
        r = rule()
        r.channels.add().webhook.url = f"http://rebind.example:{port}/hook"
        await alerts.CreateRule(A.CreateRuleRequest(rule=r))
        await server.tick()
        events = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = delivery"))).events
    assert asked == ["rebind.example", "rebind.example"]
    assert receiver.requests == []
    assert [e.message for e in events] == [
        "refused by the egress policy: rebind.example resolves to 127.0.0.1, a private, loopback, "
        "link-local or metadata address; giving up"]


async def test_the_connection_goes_to_the_checked_address_under_the_urls_name(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The send resolves the name once and connects to that checked address: a resolver that would
    answer an unroutable address to any later lookup is never asked again. The request names the
    URL's host; the history has the status code."""
    port = receiver.url.split(":")[2].split("/")[0]
    asked = _fake_dns(monkeypatch, {"hooks.example": [["127.0.0.1"], ["127.0.0.1"], ["192.0.2.1"]]})
    await ingest(ingest_stub, Recs(0, 30, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock, webhook_allow_hosts="127.0.0.1")
    channel, alerts = stub(server)
    async with channel:
        r = rule()
        r.channels.add().webhook.url = f"http://hooks.example:{port}/hook"
        await alerts.CreateRule(A.CreateRuleRequest(rule=r))
        await server.tick()
        events = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = delivery"))).events
    assert asked == ["hooks.example", "hooks.example"]
    assert [h["host"] for h, _ in receiver.requests] == [f"hooks.example:{port}"]
    assert [(e.success, e.message) for e in events] == [(True, "delivered (HTTP 200)")]


async def test_older_history_rows_show_no_answer_text(make_alerts: Factory, db_pool) -> None:  # type: ignore[no-untyped-def]
    """Rows an earlier version wrote (the first bytes of a target's answer, socket errors naming
    address and port) are read without that text; what this version writes reads as written."""
    from llmmeter_alerts.notify import history_message

    server = await make_alerts(FakeClock(BASE))
    legacy = ["not an HTTP answer: b'SSH-2.0-OpenSSH_9.2 internal-banner\\r\\n'; giving up",
              "[Errno 111] Connect call failed ('127.0.0.1', 5432); retrying",
              "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006); giving up"]
    for i, message in enumerate(legacy):
        await db_pool.execute(
            """INSERT INTO alert_events (at, kind, rule_name, grp, channel, attempt, success, message)
               VALUES ($1, 'delivery', 'old', '', 'webhook', $2, false, $3)""", BASE, i + 1, message)
    channel, alerts = stub(server)
    async with channel:
        events = (await alerts.ListAlertEvents(A.ListAlertEventsRequest(filter="kind = delivery"))).events
    assert sorted(e.message for e in events) == [
        "failed (detail withheld); giving up", "failed (detail withheld); retrying",
        "not an HTTP answer; giving up"]
    for current in ("delivered", "delivered (HTTP 204)", "HTTP 503; retrying",
                    "not an HTTP answer; giving up", "no answer within 10s; retrying",
                    "connection failed (ConnectionRefusedError); giving up", "TimeoutError; retrying",
                    "refused by the egress policy: 10.0.0.1 is a private, loopback, link-local or metadata "
                    "address; giving up"):
        assert history_message(current) == current


async def test_allowlist_entries_and_declared_secret_variables(
        make_alerts: Factory, receiver: Receiver) -> None:
    from pydantic import ValidationError

    from llmmeter_alerts.settings import AlertsSettings

    for bad in ("10.0.0.0/33", "http://hooks.internal", "hooks internal", "10.0.0.0/8,,fe80::zz"):
        with pytest.raises(ValidationError, match="not a host name, an IP address or a CIDR range"):
            AlertsSettings(webhook_allow_hosts=bad)
    policy = TargetPolicy.from_setting(" Hooks.Internal., 10.0.0.0/8, [fd12::1] ", "LLMMETER_WEBHOOK_SECRET_")
    assert policy.allow == ("hooks.internal", "10.0.0.0/8", "fd12::1/128")
    import ipaddress

    for addr in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203", "fd12::1", "93.184.215.14"):
        assert policy.address_allowed(ipaddress.ip_address(addr)), addr
    for addr in ("127.0.0.1", "::ffff:169.254.169.254", "fd12::2", "100.64.0.1"):
        assert not policy.address_allowed(ipaddress.ip_address(addr)), addr

    server = await make_alerts(FakeClock(BASE), webhook_secret_envs="PAGER_SIGNING_KEY")
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=_hook(receiver.url, secret_env="PAGER_SIGNING_KEY")))
        assert await _refused(alerts, _hook(receiver.url, secret_env="DATABASE_URL")) == [
            ("rule.channels[0].webhook.secret_env",
             "must start with LLMMETER_WEBHOOK_SECRET_ or be one of PAGER_SIGNING_KEY (the operator's)")]


async def test_a_failing_rule_holds_up_no_other(
        make_alerts: Factory, ingest_stub: ingest_pb2_grpc.IngestServiceStub, receiver: Receiver,
        db_pool) -> None:  # type: ignore[no-untyped-def]
    await ingest(ingest_stub, Recs(0, 30, 20, 10).build(BASE))
    clock = FakeClock(BASE + timedelta(minutes=5))
    server = await make_alerts(clock)
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule("broken", receiver=receiver)))
        await alerts.CreateRule(A.CreateRuleRequest(rule=rule("fine", receiver=receiver)))
    await db_pool.execute(
        "UPDATE alert_rules SET spec = jsonb_set(spec, '{no_data}', '99') WHERE name = 'broken'")
    await server.tick()
    assert [b["rule"] for b in receiver.bodies()] == ["fine"]
    states = await db_pool.fetch("SELECT r.name FROM alert_states s JOIN alert_rules r ON r.id = s.rule_id")
    assert [s["name"] for s in states] == ["fine"]


async def test_masked_urls_follow_reordered_channels_and_a_stray_mask_is_refused(
        make_alerts: Factory, receiver: Receiver) -> None:
    server = await make_alerts(FakeClock(BASE))
    slack_url = receiver.url.replace("/hook", "/services/T000/B000/XXXXSECRET")
    r = rule("hook", receiver=receiver)  # a webhook with a secret
    r.channels.add().slack.url = slack_url
    channel, alerts = stub(server)
    async with channel:
        await alerts.CreateRule(A.CreateRuleRequest(rule=r))
        read = (await alerts.GetRule(A.GetRuleRequest(name="hook"))).rule
        assert read.channels[0].webhook.secret == "" and read.channels[1].slack.url.endswith("/****")
        reordered = A.Rule()
        reordered.CopyFrom(read)
        del reordered.channels[:]
        reordered.channels.extend([read.channels[1], read.channels[0]])
        await alerts.UpdateRule(A.UpdateRuleRequest(rule=reordered))
        stored = (await server.store.get_rule("hook")).rule
        assert [stored.channels[0].slack.url, stored.channels[1].webhook.url] == [slack_url, receiver.url]
        assert stored.channels[1].webhook.secret == "s3cret"
        stray = A.Rule()
        stray.CopyFrom(reordered)
        stray.channels.add().slack.url = "https://hooks.slack.com/****"  # masked, but no channel had it
        fields = await _update_refused(alerts, stray)
        assert fields[0][0] == "rule.channels[2].slack.url" and "masked" in fields[0][1]
        fresh = rule("other")
        fresh.channels.add().slack.url = read.channels[1].slack.url
        assert (await _refused(alerts, fresh))[0][0] == "rule.channels[0].slack.url"


async def _update_refused(alerts, r: A.Rule) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await alerts.UpdateRule(A.UpdateRuleRequest(rule=r))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return bad_request_fields(err.value)


async def test_out_of_range_numbers_are_invalid_not_internal(make_alerts: Factory) -> None:
    """Values a hand-made message can carry (a Duration beyond any timedelta, nanos out of range,
    thousands of budget steps) are INVALID_ARGUMENT naming the field, and the service stays up."""
    server = await make_alerts(FakeClock(BASE))
    huge = rule("a")
    huge.window.seconds = 2**62
    bad_nanos = rule("b")
    bad_nanos.every.nanos = -5
    bad_nanos.every.seconds = 30
    steps = rule("c", metric=0, warning=A.Threshold(), budget=A.Budget(period=A.BUDGET_PERIOD_DAY, limit=10))
    steps.budget.percents.extend(float(p) for p in range(1, 1001))
    channel, alerts = stub(server)
    async with channel:
        cases = {"rule.window": huge, "rule.every": bad_nanos, "rule.budget.percents": steps,
                 "rule.min_requests": rule("d", min_requests=10**13),
                 "rule.critical.value": rule("e", critical=A.Threshold(comparison=1, value=float("nan")))}
        for field, r in cases.items():
            assert field in [f for f, _ in await _refused(alerts, r)], field
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
