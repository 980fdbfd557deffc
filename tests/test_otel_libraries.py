"""Real GenAI instrumentations of the real `openai` client, against a local fake OpenAI server,
exporting through the real OTLP exporters (gRPC and HTTP) to the real ingest service: what each
library sent is what is stored.

The libraries: OpenLLMetry's `opentelemetry-instrumentation-openai` and the OpenTelemetry
project's `opentelemetry-instrumentation-openai-v2`. Each makes four calls: a plain one, a
streamed one (usage in the last chunk), one answered 429 and one answered 500. The openai client
is synchronous, so it runs on a worker thread; the fake server and the ingest service answer on
the test's event loop.

Not every library sends everything: openai-v2 2.4b0 sends neither cached nor reasoning tokens,
nor the user, nor whether the call was streamed (its time to first chunk is a metric only), and
OpenLLMetry sends reasoning tokens on plain calls only. The expectations below say so.
LiteLLM's `otel` callback dialect is covered by spans shaped as its callback writes them (at the end):
LiteLLM itself is a large dependency for one callback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetry
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OpenAIv2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from llmmeter_common.pgcluster import free_port
from llmmeter_ingest import otlp_in, otlp_mapping
from llmmeter_ingest.server import IngestServer

from conftest import ingest_settings, running
from fake_openai import (
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    FIRST_CHUNK_DELAY,
    PROMPT_TOKENS,
    REASONING_TOKENS,
    FakeOpenAI,
)
from keyring import ADMIN

# OpenLLMetry's own pydantic models still use class-based config
pytestmark = pytest.mark.filterwarnings("ignore:Support for class-based `config`")

S = 1_000_000_000
README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True)
class Library:
    """An instrumentation and what it sends of the fake server's answers."""

    name: str
    instrumentor: Any
    cached_tokens: bool
    reasoning_tokens_plain: bool
    user: bool
    streaming: bool
    """Whether it says a call was streamed and when its first chunk came."""


LIBRARIES = {
    "openllmetry": Library("openllmetry", OpenLLMetry, cached_tokens=True, reasoning_tokens_plain=True,
                           user=True, streaming=True),
    "openai-v2": Library("openai-v2", OpenAIv2, cached_tokens=False, reasoning_tokens_plain=False,
                         user=False, streaming=False),
}


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def ingest(db_url: str) -> AsyncIterator[IngestServer]:
    async with running(IngestServer(ingest_settings(db_url, otlp_http_port=free_port()))) as server:
        yield server


def _exporter(transport: str, ingest: IngestServer) -> Any:
    headers = {"authorization": f"Bearer {ADMIN.token}"}
    if transport == "grpc":
        return GrpcExporter(endpoint=f"127.0.0.1:{ingest.port}", insecure=True, headers=headers, timeout=10)
    return HttpExporter(endpoint=f"http://127.0.0.1:{ingest.otlp_http_port}/v1/traces", headers=headers,
                        timeout=10)


@pytest.fixture
async def instrumented(request: pytest.FixtureRequest,
                       ingest: IngestServer) -> AsyncIterator[tuple[Library, TracerProvider]]:
    library_name, transport = request.param
    library = LIBRARIES[library_name]
    provider = TracerProvider(resource=Resource.create({"service.name": f"app-{library.name}"}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(transport, ingest)))
    instrumentor = library.instrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield library, provider
    finally:
        instrumentor.uninstrument()
        await asyncio.to_thread(provider.shutdown)  # off the loop that serves the receiver


def _calls(base_url: str) -> list[str]:
    """A plain call, a streamed one, a 429 and a 500; the names of the errors raised."""
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    messages = [{"role": "user", "content": "Say hello"}]
    client.chat.completions.create(model="gpt-4o", messages=messages, user="alice")  # type: ignore[arg-type]
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake model."
    raised = []
    for model in ("rate-limited", "broken"):
        try:
            client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            raised.append(type(exc).__name__)
    return raised


@pytest.mark.parametrize("instrumented", [(lib, via) for lib in LIBRARIES for via in ("grpc", "http")],
                         indirect=True, ids=lambda p: f"{p[0]}-{p[1]}")
async def test_library_calls_are_stored_as_sent(instrumented: tuple[Library, TracerProvider],
                                                fake_openai: FakeOpenAI, db_pool: asyncpg.Pool) -> None:
    library, provider = instrumented
    assert await asyncio.to_thread(_calls, fake_openai.base_url) == ["RateLimitError", "InternalServerError"]
    assert await asyncio.to_thread(provider.force_flush, 20_000)
    rows = {r["model"]: r for r in await db_pool.fetch("SELECT * FROM usage_records")}
    assert set(rows) == {"gpt-4o", "gpt-4o-mini", "rate-limited", "broken"}, library.name

    plain, streamed = rows["gpt-4o"], rows["gpt-4o-mini"]
    for row, model in ((plain, "gpt-4o"), (streamed, "gpt-4o-mini")):
        assert (row["status_code"], row["error_type"], row["provider"], row["call_type"]) == (
            200, "", "openai", "chat")
        assert row["response_model"] == f"{model}-2024-08-06"
        assert (row["input_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
        assert row["cache_read_tokens"] == (CACHED_TOKENS if library.cached_tokens else 0)
        assert json.loads(row["metadata"])["service.name"] == f"app-{library.name}"
        assert "llmmeter.dropped" not in json.loads(row["metadata"])
    assert plain["reasoning_tokens"] == (REASONING_TOKENS if library.reasoning_tokens_plain else 0)
    assert plain["user_name"] == ("alice" if library.user else "")
    assert not plain["streaming"] and plain["ttft_us"] is None
    if library.streaming:
        assert streamed["streaming"]
        assert FIRST_CHUNK_DELAY * 1e6 * 0.9 <= streamed["ttft_us"] < streamed["latency_us"]
    else:
        assert not streamed["streaming"] and streamed["ttft_us"] is None

    limited, broken = rows["rate-limited"], rows["broken"]
    assert (limited["status_code"], limited["error_type"]) == (429, "RateLimitError")
    assert "Rate limit reached" in limited["error_message"]
    assert (broken["status_code"], broken["error_type"]) == (500, "InternalServerError")


# ----------------------------------------------------------------------------------------------
# Dialects without their library installed: spans shaped as the library writes them.


@pytest.fixture
async def sdk(ingest: IngestServer) -> AsyncIterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "litellm"}))
    provider.add_span_processor(BatchSpanProcessor(_exporter("http", ingest)))
    yield provider
    await asyncio.to_thread(provider.shutdown)


async def test_litellm_otel_callback_dialect(sdk: TracerProvider, db_pool: asyncpg.Pool) -> None:
    """As LiteLLM's `otel` callback writes a proxy call (`litellm_request`): cost, key/team/org
    from `metadata.user_api_key_*`, `llm.user`, `llm.is_streaming` as a string, `hidden_params` JSON."""
    tracer = sdk.get_tracer("litellm")
    start = time.time_ns() - 60 * S
    common = {
        "metadata.user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
        "metadata.user_api_key_alias": "checkout-prod", "metadata.user_api_key_team_id": "team-7f3a",
        "metadata.user_api_key_team_alias": "payments", "metadata.user_api_key_org_id": "org-1",
        "metadata.user_api_key_user_id": "", "metadata.user_api_key_end_user_id": "",
        "metadata.requester_metadata": "{}", "llm.request.type": "acompletion", "gen_ai.system": "openai",
        "hidden_params": json.dumps({"model_id": "f674", "api_base": "https://api.openai.com/v1",
                                     "response_cost": 0.00123}),
    }
    span = tracer.start_span("litellm_request", kind=SpanKind.INTERNAL, start_time=start, attributes={
        **common, "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.operation.name": "acompletion", "llm.is_streaming": "True", "llm.user": "bob",
        "gen_ai.usage.prompt_tokens": 36, "gen_ai.usage.completion_tokens": 48, "llm.usage.total_tokens": 84,
        "gen_ai.cost.input_cost": 0.00009, "gen_ai.cost.output_cost": 0.00048,
        "gen_ai.cost.total_cost": 0.00057, "gen_ai.response.id": "chatcmpl-8b25",
        "gen_ai.response.time_to_first_chunk": 0.31,
    })
    span.end(end_time=start + 2 * S)
    failed = tracer.start_span("litellm_request", start_time=start + S, attributes={
        **common, "gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat",
        "llm.is_streaming": "False",
        "error.type": "RateLimitError", "error.message": "litellm.RateLimitError: OpenAIException - "
        "Rate limit reached for gpt-4o", "error.code": "429"})
    failed.set_status(Status(StatusCode.ERROR))
    failed.end(end_time=start + S + S // 10)
    timeout = tracer.start_span("litellm_request", start_time=start + 2 * S, attributes={
        **common, "gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat"})
    timeout.record_exception(TimeoutError("Request timed out"))
    timeout.set_status(Status(StatusCode.ERROR, "litellm.Timeout"))
    timeout.end(end_time=start + 3 * S)
    assert await asyncio.to_thread(sdk.force_flush, 20_000)

    rows = await db_pool.fetch("SELECT * FROM usage_records ORDER BY start_time")
    assert len(rows) == 3
    ok, limited, timed_out = rows
    assert (ok["user_name"], ok["team"], ok["account"]) == ("bob", "payments", "checkout-prod")
    assert float(ok["cost"]) == pytest.approx(0.00057)
    assert (ok["input_tokens"], ok["output_tokens"], ok["call_type"]) == (36, 48, "chat")
    assert ok["streaming"] and ok["ttft_us"] == 310_000
    assert ok["api_base"] == "https://api.openai.com/v1"
    metadata = json.loads(ok["metadata"])
    assert (metadata["team_id"], metadata["org_id"], metadata["gen_ai.response.id"]) == (
        "team-7f3a", "org-1", "chatcmpl-8b25")
    assert (limited["status_code"], limited["error_type"]) == (429, "RateLimitError")
    assert not limited["streaming"]
    assert "Rate limit reached" in limited["error_message"]
    assert (timed_out["status_code"], timed_out["error_type"]) == (504, "TimeoutError")


async def test_openllmetry_association_properties_and_deprecated_names(sdk: TracerProvider,
                                                                         db_pool: asyncpg.Pool) -> None:
    """traceloop-sdk's association properties (user, team, anything else to metadata), the older
    `llm.*` names and a chunk event giving the time to first token."""
    tracer = sdk.get_tracer("openllmetry")
    start = time.time_ns() - 60 * S
    span = tracer.start_span("openai.chat", kind=SpanKind.CLIENT, start_time=start, attributes={
        "gen_ai.system": "openai", "llm.request.type": "chat", "gen_ai.request.model": "gpt-4o",
        "llm.usage.prompt_tokens": 100, "llm.usage.completion_tokens": 20, "llm.is_streaming": True,
        "gen_ai.usage.cache_read_input_tokens": 64, "gen_ai.usage.reasoning_tokens": 8,
        "traceloop.association.properties.user_id": "carol",
        "traceloop.association.properties.team": "search",
        "traceloop.association.properties.session_id": "s-42",
    })
    for at in (0.25, 0.3, 0.35):
        span.add_event("llm.content.completion.chunk", timestamp=start + int(at * S))
    span.end(end_time=start + S)
    assert await asyncio.to_thread(sdk.force_flush, 20_000)
    row = await db_pool.fetchrow("SELECT * FROM usage_records")
    assert (row["user_name"], row["team"], row["call_type"]) == ("carol", "search", "chat")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["reasoning_tokens"]) == (
        100, 20, 64, 8)
    assert row["streaming"] and row["ttft_us"] == 250_000
    assert json.loads(row["metadata"])["session_id"] == "s-42"


async def test_one_inconsistent_optional_value_is_dropped_not_the_span(sdk: TracerProvider,
                                                                       db_pool: asyncpg.Pool) -> None:
    tracer = sdk.get_tracer("app")
    start = time.time_ns() - 60 * S
    tracer.start_span("chat", start_time=start, attributes={
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "m-ttft",
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.time_to_first_chunk": 3.0}).end(end_time=start + S)  # TTFT longer than the call
    tracer.start_span("chat", start_time=start, attributes={
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "m-cache",
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5, "gen_ai.usage.reasoning_tokens": 9,
        "gen_ai.usage.cache_read.input_tokens": 50, "gen_ai.cost.total_cost": -1.0}).end(end_time=start + S)
    tracer.start_span("chat", start_time=start, attributes={  # required values wrong: refused whole
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m" * 300}).end(end_time=start + S)
    assert await asyncio.to_thread(sdk.force_flush, 20_000)
    rows = {r["model"]: r for r in await db_pool.fetch("SELECT * FROM usage_records")}
    assert set(rows) == {"m-ttft", "m-cache"}
    ttft = rows["m-ttft"]
    assert ttft["ttft_us"] is None and ttft["input_tokens"] == 10
    assert json.loads(ttft["metadata"])["llmmeter.dropped"] == "ttft>latency"
    cache = rows["m-cache"]
    assert (cache["cache_read_tokens"], cache["reasoning_tokens"], float(cache["cost"])) == (0, 0, 0.0)
    assert (cache["input_tokens"], cache["output_tokens"]) == (10, 5)
    assert json.loads(cache["metadata"])["llmmeter.dropped"] == "cached>input,reasoning>output,cost<0"


async def test_rejected_spans_are_logged_at_a_limited_rate(sdk: TracerProvider, caplog) -> None:
    tracer = sdk.get_tracer("app")
    for _ in range(3):
        tracer.start_span("chat", attributes={"gen_ai.system": "openai",
                                              "gen_ai.request.model": "m" * 300}).end()
        assert await asyncio.to_thread(sdk.force_flush, 20_000)
    lines = [r for r in caplog.records if "GenAI spans refused" in r.getMessage()]
    assert len(lines) == 1 and "model" in lines[0].getMessage()


def test_readme_mirrors_the_mapping_table() -> None:
    assert otlp_mapping.markdown_table() in README.read_text(), (
        "README's OTLP mapping table differs from otlp_mapping.MAPPING; paste otlp_mapping.markdown_table()")


@pytest.mark.parametrize(("error_type", "status"), [
    ("<class 'openai.RateLimitError'>", 429), ("openai.AuthenticationError", 401), ("BadRequestError", 400),
    ("litellm.exceptions.NotFoundError", 404), ("APITimeoutError", 504), ("timeout", 504),
    ("RequestTimeout", 408), ("APIConnectionError", 502), ("503", 503), ("overloaded_error", 529),
    ("SomethingElse", None)])
def test_error_classes(error_type: str, status: int | None) -> None:
    assert otlp_in.status_of_error(error_type) == status
