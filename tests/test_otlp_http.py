"""The OTLP/HTTP trace receiver (`POST /v1/traces`): the real OTLP/HTTP exporter, OTLP/JSON and
protobuf bodies sent by hand, and the answers the OTLP/HTTP specification asks for."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from llmmeter_common.auth.keys import Role
from llmmeter_common.pgcluster import free_port
from llmmeter_ingest.server import IngestServer

from conftest import ingest_settings, running
from keyring import ADMIN, make_key

S = 1_000_000_000
PROTOBUF, JSON = "application/x-protobuf", "application/json"
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"


@pytest.fixture
async def http_server(db_url: str) -> AsyncIterator[IngestServer]:
    async with running(IngestServer(ingest_settings(db_url, otlp_http_port=free_port()))) as server:
        yield server


@pytest.fixture
def url(http_server: IngestServer) -> str:
    return f"http://127.0.0.1:{http_server.otlp_http_port}/v1/traces"


async def _post(url: str, body: bytes, content_type: str, key: str | None = ADMIN.token,
                **headers: str) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as session, session.post(
            url, data=body, headers={"Content-Type": content_type, **headers}) as resp:
        return resp.status, await resp.read(), resp.headers


def _json_body(start_ns: int, team: str | None = None, trace: str = TRACE, span: str = SPAN,
               **extra: object) -> bytes:
    """An OTLP/JSON export as an SDK writes it: camelCase, hex ids, 64-bit integers as strings."""
    attrs = [
        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
        {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "120"}},
        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 45}},
        {"key": "gen_ai.cost.total_cost", "value": {"doubleValue": 0.0125}},
        {"key": "gen_ai.response.finish_reasons",
         "value": {"arrayValue": {"values": [{"stringValue": "stop"}]}}},
    ]
    if team:
        attrs.append({"key": "traceloop.association.properties.team", "value": {"stringValue": team}})
    attrs += [{"key": k, "value": {"stringValue": str(v)}} for k, v in extra.items()]
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
        "scopeSpans": [{"scope": {"name": "manual"}, "spans": [{
            "traceId": trace, "spanId": span, "name": "chat gpt-4o", "kind": 3,
            "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(start_ns + 2 * S),
            "attributes": attrs, "status": {"code": 0}, "futureField": {"ignored": True},
        }]}],
    }]}).encode()


async def test_real_otlp_http_exporter_stores_genai_spans(url: str, db_pool: asyncpg.Pool) -> None:
    exporter = OTLPSpanExporter(endpoint=url, headers={"authorization": f"Bearer {ADMIN.token}"},
                                timeout=10, compression=Compression.Gzip)
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "chatbot"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    start = time.time_ns() - 60 * S
    for i in range(3):
        span = tracer.start_span("chat", kind=SpanKind.CLIENT, start_time=start + i * S, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 10 + i, "gen_ai.usage.output_tokens": 5})
        span.end(end_time=start + i * S + S // 2)
    tracer.start_span("GET /").end()
    result = await asyncio.to_thread(exporter.export, list(memory.get_finished_spans()))
    assert result.name == "SUCCESS"
    rows = await db_pool.fetch("SELECT * FROM usage_records ORDER BY input_tokens")
    assert [r["input_tokens"] for r in rows] == [10, 11, 12]
    assert json.loads(rows[0]["metadata"])["service.name"] == "chatbot"
    await asyncio.to_thread(provider.shutdown)


async def test_otlp_json_body_hex_ids_and_json_answer(url: str, db_pool: asyncpg.Pool) -> None:
    status, body, headers = await _post(url, _json_body(time.time_ns() - 60 * S), JSON)
    assert status == 200 and headers["Content-Type"].startswith(JSON)
    assert json.loads(body) == {}
    row = await db_pool.fetchrow("SELECT * FROM usage_records")
    assert row["request_id"] == f"otel-{TRACE}-{SPAN}"
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt-4o", 120, 45)
    assert float(row["cost"]) == pytest.approx(0.0125) and row["latency_us"] == 2_000_000
    metadata = json.loads(row["metadata"])
    assert metadata["otel.trace_id"] == TRACE and metadata["gen_ai.response.finish_reasons"] == "stop"


async def test_protobuf_body_and_partial_success(url: str, db_pool: asyncpg.Pool) -> None:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    now = time.time_ns()
    for start in (now - 60 * S, now - 40 * 86_400 * S):  # the second is older than the raw retention
        tracer.start_span("chat", start_time=start, attributes={
            "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}).end(end_time=start + S)
    status, body, headers = await _post(url, encode_spans(memory.get_finished_spans()).SerializeToString(),
                                        PROTOBUF)
    assert status == 200 and headers["Content-Type"] == PROTOBUF
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert response.partial_success.rejected_spans == 1
    assert "start_time" in response.partial_success.error_message
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 1
    # the same refusal in an OTLP/JSON answer
    status, body, _ = await _post(url, _json_body(now - 40 * 86_400 * S), JSON)
    assert status == 200 and json.loads(body)["partialSuccess"]["rejectedSpans"] == "1"


async def test_refusals(url: str, db_url: str) -> None:
    body = _json_body(time.time_ns() - 60 * S)
    status, answer, headers = await _post(url, body, JSON, key=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key is required" in json.loads(answer)["message"]
    status, answer, _ = await _post(url, body, PROTOBUF, key="llmm_000000000000_" + "x" * 43)
    assert status == 401 and "not valid" in status_pb2.Status.FromString(answer).message
    status, _, _ = await _post(url, body, JSON, key=await make_key(db_url, Role.READ))
    assert status == 403
    status, answer, _ = await _post(url, b"hello", "text/plain")
    assert status == 415 and "unsupported content type" in status_pb2.Status.FromString(answer).message
    for bad, content_type in ((b"\xff\x00garbage", PROTOBUF), (b"{not json", JSON), (b"[1, 2]", JSON),
                              (_json_body(0, trace="not-hex"), JSON),
                              (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
                                  {"startTimeUnixNano": "soon"}]}]}]}).encode(), JSON)):
        status, answer, _ = await _post(url, bad, content_type)
        assert status == 400, (bad, answer)
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 405


async def test_team_bound_key_pins_its_team(url: str, db_url: str, db_pool: asyncpg.Pool) -> None:
    key = await make_key(db_url, Role.INGEST, team="payments")
    start = time.time_ns() - 60 * S
    status, _, _ = await _post(url, _json_body(start), JSON, key=key)
    assert status == 200
    status, answer, _ = await _post(url, _json_body(start, team="search", span="aaaaaaaaaaaaaaaa"), JSON,
                                    key=key)
    assert status == 200 and json.loads(answer)["partialSuccess"]["rejectedSpans"] == "1"
    assert [r["team"] for r in await db_pool.fetch("SELECT team FROM usage_records")] == ["payments"]


async def test_full_queue_is_429_with_retry_after(db_url: str, db_pool: asyncpg.Pool) -> None:
    server = IngestServer(ingest_settings(db_url, otlp_http_port=free_port(), queue_max_records=1,
                                          writers=1))
    await server.start()
    url = f"http://127.0.0.1:{server.otlp_http_port}/v1/traces"
    blocker = await asyncpg.connect(db_url)  # every write waits while a rollup table is locked
    await blocker.execute("BEGIN; LOCK TABLE usage_1m IN ACCESS EXCLUSIVE MODE")
    try:
        start = time.time_ns() - 60 * S
        first = asyncio.create_task(_post(url, _json_body(start), JSON))
        while server.writer.queued_records < 1:
            await asyncio.sleep(0.01)
        status, answer, headers = await _post(url, _json_body(start, span="bbbbbbbbbbbbbbbb"), JSON)
        assert status == 429 and headers["Retry-After"] == "2"
        assert "queue is full" in json.loads(answer)["message"]
        await blocker.execute("ROLLBACK")
        assert (await first)[0] == 200
    finally:
        await blocker.close()
        await server.stop()
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 1


async def test_port_zero_serves_no_http(db_url: str) -> None:
    server = IngestServer(ingest_settings(db_url, otlp_http_port=0))
    await server.start()
    try:
        assert server.otlp_http_port == 0
    finally:
        await server.stop()
