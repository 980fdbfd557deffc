"""The LiteLLM callback end to end: the real LiteLLM package calling a fake OpenAI-compatible server
on loopback, the callback sending to the real ingest service, the stored rows read back from the
database and compared field by field with the StandardLoggingPayload LiteLLM handed its callbacks.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

# LiteLLM fetches its price list from the internet at import unless told to use the copy it ships.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.integrations.custom_logger import CustomLogger

from llmmeter.config import ClientConfig
from llmmeter.integrations.litellm import LlmmeterLogger, ShipperSettings
from llmmeter_common.pgcluster import free_port
from llmmeter_ingest.server import IngestServer

from conftest import ingest_settings
from keyring import ADMIN

# LiteLLM's pydantic models warn about themselves at import and first use; not this project's concern.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

MODEL = "openai/gpt-4o-mini"
USAGE = {"prompt_tokens": 120, "completion_tokens": 45, "total_tokens": 165,
         "prompt_tokens_details": {"cached_tokens": 64},
         "completion_tokens_details": {"reasoning_tokens": 20}}
PROXY_METADATA = {  # what the LiteLLM proxy puts in a call's metadata for a virtual key of a team
    "user_api_key_team_id": "team-7f3a", "user_api_key_team_alias": "payments",
    "user_api_key_alias": "gateway-prod", "user_api_key_org_id": "org-1",
    "requester_ip_address": "10.1.2.3", "tenant": "acme",
}


class FakeOpenAI:
    """`POST /v1/chat/completions` on 127.0.0.1:0 in a thread: JSON or SSE answers with usage
    (cached and reasoning tokens), or the error statuses queued in `fail_next`."""

    def __init__(self) -> None:
        self.fail_next: list[int] = []
        self.calls = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with fake._lock:
                    fake.calls += 1
                    number = fake.calls
                    status = fake.fail_next.pop(0) if fake.fail_next else 200
                if status != 200:
                    kind = "rate_limit_error" if status == 429 else "server_error"
                    self._send(status, {"error": {"message": f"fake error {status}", "type": kind}})
                elif body.get("stream"):
                    self._stream(f"chatcmpl-fake-{number}", body)
                else:
                    time.sleep(0.05)
                    self._send(200, {
                        "id": f"chatcmpl-fake-{number}", "object": "chat.completion",
                        "created": int(time.time()), "model": "gpt-4o-mini-2024-07-18", "usage": USAGE,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "Hello there, world!"}}]})

            def _send(self, status: int, obj: object) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, rid: str, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()

                def event(choices: list[Any], **extra: Any) -> None:
                    obj = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": "gpt-4o-mini-2024-07-18", "choices": choices, **extra}
                    self._chunk(f"data: {json.dumps(obj)}\n\n".encode())

                time.sleep(0.15)  # the time to first token
                for i, word in enumerate(["Hello", " there", ",", " world", "!"]):
                    delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                    event([{"index": 0, "delta": delta, "finish_reason": None}])
                    time.sleep(0.03)
                event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
                if (body.get("stream_options") or {}).get("include_usage"):
                    event([], usage=USAGE)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Capture(CustomLogger):
    """Keeps the StandardLoggingPayload LiteLLM hands its callbacks, to compare the stored rows with."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[dict[str, Any]] = []

    def _keep(self, kwargs: dict[str, Any]) -> None:
        self.payloads.append(kwargs["standard_logging_object"])

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._keep(kwargs)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._keep(kwargs)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self._keep(kwargs)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self._keep(kwargs)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.close()


def _meter(addr: str, **settings: Any) -> LlmmeterLogger:
    values: dict[str, Any] = {"flush_interval": 0.1, "retry_for": 60.0, "max_backoff": 0.5}
    values.update(settings)
    config = ClientConfig(ingest_addr=addr, api_key=ADMIN.token)
    return LlmmeterLogger(config, settings=ShipperSettings(**values))


@pytest.fixture
def capture() -> Iterator[Capture]:
    """A fresh Capture; LiteLLM's callback lists are emptied before and after the test (LiteLLM copies
    `litellm.callbacks` into lists of its own at the first call, which a new assignment does not reset)."""
    litellm.logging_callback_manager._reset_all_callbacks()
    yield Capture()
    litellm.logging_callback_manager._reset_all_callbacks()


@pytest.fixture
async def meter(ingest_addr: str, capture: Capture) -> AsyncIterator[LlmmeterLogger]:
    logger = _meter(ingest_addr)
    litellm.callbacks = [logger, capture]
    yield logger
    await logger.aclose(10.0)


def _kwargs(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "api_base": fake.api_base, "api_key": "sk-fake", "num_retries": 0,
            "messages": [{"role": "user", "content": "Say hello"}], "user": "alice",
            "metadata": dict(PROXY_METADATA), **extra}


def _sync_calls(fake: FakeOpenAI) -> None:
    litellm.completion(**_kwargs(fake))
    for _ in litellm.completion(**_kwargs(fake, stream=True, stream_options={"include_usage": True})):
        pass


async def _until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _rows(pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    """The stored rows by request id, JSON columns (metadata, cost breakdown) decoded."""
    rows = [dict(row) for row in await pool.fetch("SELECT * FROM usage_records")]
    for row in rows:
        for name in ("metadata", "cost_breakdown"):
            if isinstance(row[name], str):
                row[name] = json.loads(row[name])
    return {row["request_id"]: row for row in rows}


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


def _assert_matches(row: dict[str, Any], sent: dict[str, Any]) -> None:
    """A stored row says what LiteLLM sent, field by field."""
    assert row["start_time"].timestamp() == pytest.approx(sent["startTime"], abs=2e-6)
    assert row["latency_us"] == pytest.approx(_us(sent["endTime"]) - _us(sent["startTime"]), abs=2)
    assert row["model"] == sent["model"] == "gpt-4o-mini"
    assert row["provider"] == sent["custom_llm_provider"] == "openai"
    assert row["call_type"] == "chat" and row["metadata"]["litellm.call_type"] == sent["call_type"]
    assert row["api_base"] == fake_base(sent)
    assert row["user_name"] == "alice"
    assert row["team"] == "payments" and row["metadata"]["litellm.team_id"] == "team-7f3a"
    assert row["account"] == "gateway-prod"
    assert row["metadata"]["litellm.org_id"] == "org-1" and row["metadata"]["tenant"] == "acme"
    assert row["metadata"]["litellm.call_id"] == sent["litellm_call_id"]
    assert str(row["client_ip"]).startswith("10.1.2.")
    assert row["streaming"] is bool(sent["stream"])
    assert float(row["cost"]) == pytest.approx(sent["response_cost"], abs=1e-12)
    if sent["status"] == "success":
        assert row["status_code"] == 200 and not row["error_type"]
        assert row["response_model"] == sent["response"]["model"]
        assert row["input_tokens"] == sent["prompt_tokens"] == 120
        assert row["output_tokens"] == sent["completion_tokens"] == 45
        assert (row["cache_read_tokens"], row["reasoning_tokens"]) == (64, 20)
        assert sent["response_cost"] > 0
        breakdown = row["cost_breakdown"]
        assert sum(breakdown.values()) == pytest.approx(sent["response_cost"], abs=1e-9)
        assert breakdown["output"] == pytest.approx(sent["cost_breakdown"]["output_cost"])
        overhead = sent["hidden_params"]["litellm_overhead_time_ms"]
        if overhead is not None:
            assert row["gateway_overhead_us"] == pytest.approx(overhead * 1000, abs=1)


def fake_base(sent: dict[str, Any]) -> str:
    return str(sent["api_base"] or sent["hidden_params"]["api_base"])


async def test_sync_calls_streamed_and_not_are_stored_as_litellm_saw_them(
        fake: FakeOpenAI, meter: LlmmeterLogger, capture: Capture, db_pool: asyncpg.Pool) -> None:
    await asyncio.to_thread(_sync_calls, fake)
    await _until(lambda: len(capture.payloads) == 2, "LiteLLM's two success callbacks")
    assert await meter.aflush(30.0)
    rows = await _rows(db_pool)
    assert len(rows) == 2 and meter.accepted == 2 and meter.dropped == 0
    plain, streamed = sorted(capture.payloads, key=lambda p: bool(p["stream"]))
    _assert_matches(rows[plain["id"]], plain)
    _assert_matches(rows[streamed["id"]], streamed)
    assert rows[plain["id"]]["ttft_us"] is None and rows[plain["id"]]["streaming"] is False
    ttft = _us(streamed["completionStartTime"]) - _us(streamed["startTime"])
    assert rows[streamed["id"]]["ttft_us"] == pytest.approx(ttft, abs=2)
    assert 150_000 <= rows[streamed["id"]]["ttft_us"] < rows[streamed["id"]]["latency_us"]


async def test_async_calls_streamed_and_not(
        fake: FakeOpenAI, meter: LlmmeterLogger, capture: Capture, db_pool: asyncpg.Pool) -> None:
    await litellm.acompletion(**_kwargs(fake))
    stream = await litellm.acompletion(**_kwargs(fake, stream=True, stream_options={"include_usage": True}))
    async for _ in stream:
        pass
    await _until(lambda: len(capture.payloads) == 2, "LiteLLM's two async success callbacks")
    assert await meter.aflush(30.0)
    rows = await _rows(db_pool)
    assert len(rows) == 2 and meter.dropped == 0
    for sent in capture.payloads:
        _assert_matches(rows[sent["id"]], sent)
    streamed = next(p for p in capture.payloads if p["stream"])
    ttft = _us(streamed["completionStartTime"]) - _us(streamed["startTime"])
    assert rows[streamed["id"]]["ttft_us"] == pytest.approx(ttft, abs=2) and ttft >= 150_000


async def test_429_and_500_are_stored_as_failures_with_their_error_type(
        fake: FakeOpenAI, meter: LlmmeterLogger, capture: Capture, db_pool: asyncpg.Pool) -> None:
    fake.fail_next = [429]
    with pytest.raises(litellm.RateLimitError):
        await asyncio.to_thread(litellm.completion, **_kwargs(fake))
    fake.fail_next = [500]
    with pytest.raises(litellm.InternalServerError):
        await litellm.acompletion(**_kwargs(fake))
    await _until(lambda: len(capture.payloads) == 2, "LiteLLM's two failure callbacks")
    assert await meter.aflush(30.0)
    rows = await _rows(db_pool)
    assert len(rows) == 2
    by_code = {}
    for sent in capture.payloads:
        row = rows[sent["id"]]
        _assert_matches(row, sent)
        assert sent["status"] == "failure"
        assert row["status_code"] == int(sent["error_information"]["error_code"])
        assert row["error_type"] == sent["error_information"]["error_class"]
        assert row["error_message"] == sent["error_information"]["error_message"]
        assert (row["input_tokens"], row["output_tokens"], float(row["cost"])) == (0, 0, 0.0)
        by_code[row["status_code"]] = row
    assert set(by_code) == {429, 500}
    assert by_code[429]["error_type"] == "RateLimitError"
    assert "fake error 429" in by_code[429]["error_message"]
    assert by_code[500]["error_type"] == "InternalServerError"
    assert by_code[429]["metadata"]["litellm.normalized_error"] == "429_RATE_LIMIT_EXCEEDED"


async def test_nothing_is_lost_across_a_restart_of_ingest(
        fake: FakeOpenAI, capture: Capture, db_url: str, db_pool: asyncpg.Pool) -> None:
    port = free_port()
    server = IngestServer(ingest_settings(db_url, port=port))
    await server.start()
    logger = _meter(f"127.0.0.1:{port}", batch_size=3)
    litellm.callbacks = [logger, capture]
    try:
        await litellm.acompletion(**_kwargs(fake))
        await _until(lambda: logger.accepted == 1, "the first record stored")
        await server.stop()
        for _ in range(4):
            await litellm.acompletion(**_kwargs(fake))
        await asyncio.to_thread(_sync_calls, fake)
        await _until(lambda: len(capture.payloads) == 7, "LiteLLM's callbacks")
        await asyncio.sleep(1.0)  # the shipper meets the stopped service and backs off
        assert logger.shipper.pending == 6 and logger.dropped == 0
        server = IngestServer(ingest_settings(db_url, port=port))
        await server.start()
        assert await logger.aflush(30.0)
    finally:
        await logger.aclose(10.0)
        await server.stop()
    counts = await db_pool.fetch("SELECT request_id, count(*) AS n FROM usage_records GROUP BY request_id")
    assert {row["request_id"]: row["n"] for row in counts} == {p["id"]: 1 for p in capture.payloads}
    assert logger.accepted == 7 and logger.dropped == 0 and logger.shipper.pending == 0


async def test_the_proxy_loads_the_logger_from_config_and_payloads_are_opt_in(
        fake: FakeOpenAI, capture: Capture, ingest_addr: str, db_pool: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`callbacks: ["llmmeter.integrations.litellm.proxy_handler_instance"]` as the proxy resolves it,
    configured from the environment, with LLMMETER_LITELLM_LOG_PAYLOADS storing the bodies."""
    from litellm.proxy.types_utils.utils import get_instance_fn

    import llmmeter.integrations.litellm as integration

    monkeypatch.setenv("LLMMETER_INGEST_ADDR", ingest_addr)
    monkeypatch.setenv("LLMMETER_LITELLM_LOG_PAYLOADS", "true")
    monkeypatch.setattr(integration, "_proxy_instance", None)
    logger = get_instance_fn("llmmeter.integrations.litellm.proxy_handler_instance")
    assert isinstance(logger, LlmmeterLogger) and logger is integration.proxy_handler_instance
    assert logger.log_payloads and logger.shipper.settings.max_queue == 10_000
    litellm.callbacks = [logger, capture]
    try:
        await litellm.acompletion(**_kwargs(fake))
        await _until(lambda: len(capture.payloads) == 1, "LiteLLM's callback")
        assert await logger.aflush(30.0)
    finally:
        await logger.aclose(10.0)
    sent = capture.payloads[0]
    stored = await db_pool.fetchrow("SELECT request, response FROM usage_payloads WHERE request_id = $1",
                                    sent["id"])
    assert json.loads(stored["request"]) == {"messages": [{"role": "user", "content": "Say hello"}]}
    assert json.loads(stored["response"])["choices"][0]["message"]["content"] == "Hello there, world!"


async def test_llmmeter_down_for_good_drops_counted_and_logged_without_slowing_calls(
        fake: FakeOpenAI, capture: Capture, caplog: pytest.LogCaptureFixture) -> None:
    logger = _meter(f"127.0.0.1:{free_port()}", max_queue=3, retry_for=1.0, batch_size=2)
    litellm.callbacks = [logger, capture]
    try:
        started = time.monotonic()
        for _ in range(5):
            await litellm.acompletion(**_kwargs(fake))
        calls = time.monotonic() - started
        await _until(lambda: len(capture.payloads) == 5, "LiteLLM's callbacks")
        assert await logger.aflush(30.0)  # every record settled: stored or dropped
    finally:
        await logger.aclose(5.0)
    assert logger.accepted == 0 and logger.dropped == 5 and logger.shipper.pending == 0
    assert calls < 5 * 1.0  # no call waited for the unreachable service's retries
    drops = [r.getMessage() for r in caplog.records if r.name == "llmmeter.shipper"]
    assert any("gave up after" in m for m in drops)
    direct = LlmmeterLogger(ClientConfig(ingest_addr=f"127.0.0.1:{free_port()}", api_key=ADMIN.token),
                            settings=ShipperSettings(max_queue=2, retry_for=0.0, flush_interval=30.0))
    try:
        started = time.monotonic()
        for payload in capture.payloads:  # the hooks themselves: queue and return
            direct.log_success_event({"standard_logging_object": payload}, None, None, None)
        assert time.monotonic() - started < 0.5
        assert direct.dropped == 3 and any("the queue is full" in r.getMessage() for r in caplog.records)
    finally:
        direct.close(5.0)
    assert direct.dropped == 5


async def test_odd_payloads_still_make_records_the_service_accepts(ingest_stub: Any) -> None:
    """Whatever LiteLLM hands over (missing fields, parts larger than totals, a breakdown that does not
    add up, long texts, odd metadata keys), the record passes the ingest service's validation."""
    from llmmeter.integrations.litellm_records import usage_record
    from llmmeter.v1 import ingest_pb2

    now = time.time() - 60
    base: dict[str, Any] = {"id": "odd-0", "model": "m", "startTime": now, "endTime": now + 1.0,
                            "status": "success"}
    odd = [
        usage_record(None, {"model": "claude-3", "exception": ValueError("boom")}, start_time=None,
                     end_time=None, failed=True),
        usage_record(base | {"id": "odd-1", "stream": True, "completionStartTime": now + 5.0,
                             "prompt_tokens": 10, "completion_tokens": 5, "response_cost": 0.01,
                             "cost_breakdown": {"input_cost": 0.5, "output_cost": 0.7},
                             "hidden_params": {"usage_object": {
                                 "prompt_tokens_details": {"cached_tokens": 50},
                                 "cache_creation_input_tokens": 40,
                                 "completion_tokens_details": {"reasoning_tokens": 9}}}}),
        usage_record(base | {"id": "odd-2", "endTime": now - 3, "response_cost": float("nan"),
                             "error_str": "x" * 10_000, "status": "failure",
                             "error_information": {"error_code": "200", "error_class": "Weird"},
                             "metadata": {"requester_metadata": {f"k {i}!": i for i in range(100)}}}),
        usage_record(base | {"id": "odd-3", "response_cost": 3e-5, "cost_breakdown": {
            "input_cost": 1e-5, "cache_read_cost": 5e-6, "output_cost": 1e-5,
            "additional_costs": {"x y": 5e-6}}}),
    ]
    response = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=odd))
    assert (response.accepted_count, list(response.rejections)) == (4, [])
    assert odd[0].status_code == 500 and odd[0].error_type == "ValueError" and odd[0].model == "claude-3"
    assert odd[1].time_to_first_token.ToMicroseconds() == 1_000_000 and not odd[1].cost_breakdown
    assert (odd[1].cache_read_tokens, odd[1].cache_write_tokens, odd[1].reasoning_tokens) == (10, 0, 5)
    assert odd[2].status_code == 500 and len(odd[2].error_message) == 4096 and len(odd[2].metadata) == 64
    assert dict(odd[3].cost_breakdown) == pytest.approx(
        {"input": 1e-5, "cache_read": 5e-6, "output": 1e-5, "additional.x_y": 5e-6})
