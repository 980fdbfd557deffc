"""API keys and roles over the real services: anonymous, wrong-role and revoked keys are refused,
read keys read, admin keys manage keys, health stays open for probes."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from llmmeter.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from llmmeter_alerts.server import AlertsServer
from llmmeter_alerts.settings import AlertsSettings
from llmmeter_common.auth.keys import Role
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.settings import IngestSettings
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

from conftest import ingest_settings
from keyring import ADMIN, keyed_channel, make_key
from records import record

UNAUTHENTICATED, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


async def _code(call: Any) -> grpc.StatusCode:
    """The status a call ends with (OK when it succeeds)."""
    try:
        result = call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                break
        else:
            await result
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _calls(channels: dict[str, grpc.aio.Channel]) -> dict[str, Any]:
    """One call of every kind of service and role."""
    ingest, query, alerts = channels["ingest"], channels["query"], channels["alerts"]
    return {
        "write": ingest_pb2_grpc.IngestServiceStub(ingest).WriteRecords(
            ingest_pb2.WriteRecordsRequest(records=[record()])),
        "otlp": trace_service_pb2_grpc.TraceServiceStub(ingest).Export(
            trace_service_pb2.ExportTraceServiceRequest()),
        "summary": query_pb2_grpc.QueryServiceStub(query).GetSummary(query_pb2.GetSummaryRequest()),
        "tail": query_pb2_grpc.QueryServiceStub(query).TailRequests(query_pb2.TailRequestsRequest()),
        "list_rules": alerts_pb2_grpc.AlertsServiceStub(alerts).ListRules(alerts_pb2.ListRulesRequest()),
        "create_silence": alerts_pb2_grpc.AlertsServiceStub(alerts).CreateSilence(
            alerts_pb2.CreateSilenceRequest(silence=alerts_pb2.Silence(
                matchers=[alerts_pb2.Matcher(name="rule", value="x")], end_time={"seconds": 4102444800}))),
        "list_keys": keys_pb2_grpc.KeysServiceStub(alerts).ListKeys(keys_pb2.ListKeysRequest()),
    }


async def _outcomes(addr: dict[str, str], key: str | None) -> dict[str, grpc.StatusCode]:
    """How each call ends on channels sending `key` (None: no key)."""
    channels = {name: keyed_channel(a, key) if key else grpc.aio.insecure_channel(a)
                for name, a in addr.items()}
    try:
        calls = _calls(channels)
        codes = await asyncio.gather(*(asyncio.wait_for(_code(c), 5) if name != "tail" else _tail_code(c)
                                       for name, c in calls.items()))
        return dict(zip(calls, codes, strict=True))
    finally:
        for channel in channels.values():
            await channel.close()


async def _tail_code(call: Any) -> grpc.StatusCode:
    """A tail that is let in sends its `llmmeter-tail: live` headers and then waits for rows."""
    metadata = await asyncio.wait_for(call.initial_metadata(), 5)
    try:
        return await asyncio.wait_for(call.code(), 0.5)  # type: ignore[no-any-return]
    except TimeoutError:
        assert ("llmmeter-tail", "live") in list(metadata or ())
        call.cancel()
        return grpc.StatusCode.OK


@pytest.fixture
def addrs(ingest_addr: str, query_server: QueryServer, alerts_server: AlertsServer) -> dict[str, str]:
    return {"ingest": ingest_addr, "query": f"127.0.0.1:{query_server.port}",
            "alerts": f"127.0.0.1:{alerts_server.port}"}


async def test_each_role_may_make_exactly_its_calls(addrs: dict[str, str], db_url: str) -> None:
    ingest_key = await make_key(db_url, Role.INGEST)
    read_key = await make_key(db_url, Role.READ)
    team_read = await make_key(db_url, Role.READ, team="payments")
    ok = grpc.StatusCode.OK
    every = ("write", "otlp", "summary", "tail", "list_rules", "create_silence", "list_keys")
    expected = {
        None: dict.fromkeys(every, UNAUTHENTICATED),
        "llmm_000000000000_" + "x" * 43: dict.fromkeys(every, UNAUTHENTICATED),
        "not a key": dict.fromkeys(every, UNAUTHENTICATED),
        ingest_key: {"write": ok, "otlp": ok, "summary": DENIED, "tail": DENIED, "list_rules": DENIED,
                     "create_silence": DENIED, "list_keys": DENIED},
        read_key: {"write": DENIED, "otlp": DENIED, "summary": ok, "tail": ok, "list_rules": ok,
                   "create_silence": DENIED, "list_keys": DENIED},
        team_read: {"write": DENIED, "otlp": DENIED, "summary": ok, "tail": ok, "list_rules": DENIED,
                    "create_silence": DENIED, "list_keys": DENIED},
        ADMIN.token: dict.fromkeys(every, ok),
    }
    for key, codes in expected.items():
        assert await _outcomes(addrs, key) == codes, f"key {key and key[:18]}"


async def test_health_and_reflection_stay_open_without_a_key(addrs: dict[str, str]) -> None:
    for addr in addrs.values():
        async with grpc.aio.insecure_channel(addr) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_refusals_say_what_to_do_and_never_echo_the_key(query_server: QueryServer, db_url: str) -> None:
    addr = f"127.0.0.1:{query_server.port}"
    ingest_key = await make_key(db_url, Role.INGEST)
    async with grpc.aio.insecure_channel(addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest())
    assert "authorization: Bearer" in (err.value.details() or "")
    async with keyed_channel(addr, ingest_key) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest())
    details = err.value.details() or ""
    assert err.value.code() == DENIED and "needs read" in details
    secret = ingest_key.removeprefix("llmm_")[13:]
    assert len(secret) == 43 and secret not in details  # the key's id may be named, its secret never


async def test_keys_are_created_listed_without_secrets_and_revoked_everywhere(db_url: str) -> None:
    """Two query replicas with a 0.2 s key cache: a revoked key is refused by both within that time."""
    replicas = [QueryServer(QuerySettings(database_url=db_url, host="127.0.0.1", port=0, metrics_port=0,
                                          shutdown_grace_seconds=1.0, auth_cache_seconds=0.2))
                for _ in range(2)]
    alerts = AlertsServer(AlertsSettings(database_url=db_url, host="127.0.0.1", port=0, evaluate=False,
                                         shutdown_grace_seconds=1.0, metrics_port=0))
    for server in (*replicas, alerts):
        await server.start()
    try:
        async with keyed_channel(f"127.0.0.1:{alerts.port}") as admin_ch:
            keys = keys_pb2_grpc.KeysServiceStub(admin_ch)
            created = await keys.CreateKey(keys_pb2.CreateKeyRequest(name="dash", role=keys_pb2.ROLE_READ))
            listed = await keys.ListKeys(keys_pb2.ListKeysRequest())
            assert created.secret.startswith(f"llmm_{created.api_key.key_id}_")
            assert created.api_key.key_id in [k.key_id for k in listed.keys]
            assert created.secret.removeprefix("llmm_")[13:] not in str(listed)  # no secret in listings
            new = keys_pb2.CreateKeyRequest
            for bad, field in ((new(name="", role=keys_pb2.ROLE_READ), "name"), (new(name="x"), "role"),
                               (new(name="x", role=keys_pb2.ROLE_ADMIN, team="t"), "team")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await keys.CreateKey(bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
            for server in replicas:  # both replicas accept (and cache) the key
                async with keyed_channel(f"127.0.0.1:{server.port}", created.secret) as ch:
                    await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest())
            revoked = await keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=created.api_key.key_id))
            assert revoked.api_key.HasField("revoke_time")
            assert created.api_key.key_id not in [k.key_id for k in (await keys.ListKeys(
                keys_pb2.ListKeysRequest())).keys]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id="000000000000"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await asyncio.sleep(0.5)
        for server in replicas:
            async with keyed_channel(f"127.0.0.1:{server.port}", created.secret) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await query_pb2_grpc.QueryServiceStub(ch).GetSummary(query_pb2.GetSummaryRequest())
                assert err.value.code() == UNAUTHENTICATED
    finally:
        for server in (*replicas, alerts):
            await server.stop()


async def test_a_service_started_with_auth_disabled_serves_anonymous_calls(db_url: str) -> None:
    server = IngestServer(ingest_settings(db_url, auth_disabled=True))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            resp = await ingest_pb2_grpc.IngestServiceStub(ch).WriteRecords(
                ingest_pb2.WriteRecordsRequest(records=[record()]))
        assert resp.accepted_count == 1
    finally:
        await server.stop()


def test_services_bind_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LLMMETER_INGEST_HOST", "LLMMETER_QUERY_HOST", "LLMMETER_ALERTS_HOST",
                "LLMMETER_AUTH_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    for settings in (AlertsSettings(), IngestSettings(), QuerySettings()):
        assert settings.host == "127.0.0.1" and settings.auth_disabled is False
    monkeypatch.setenv("LLMMETER_AUTH_DISABLED", "true")
    assert QuerySettings().auth_disabled is True
