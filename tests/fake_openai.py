"""A local OpenAI-compatible HTTP server for the instrumentation tests: `/v1/chat/completions`,
plain JSON or SSE streaming (with usage incl. cached and reasoning tokens), and error answers.

What it answers is chosen by the requested model, so a test asks for the behaviour it wants:
`rate-limited` answers 429 (`rate_limit_exceeded`), `broken` 500, anything else succeeds.
It runs in the test's event loop on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 42
COMPLETION_TOKENS = 17
CACHED_TOKENS = 30
REASONING_TOKENS = 5
WORDS = ["Hello", " from", " the", " fake", " model", "."]
FIRST_CHUNK_DELAY = 0.08
"""Seconds before the first streamed chunk (so a time to first token is measurable)."""
CHUNK_DELAY = 0.02


def _usage() -> dict[str, Any]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _error(status: int, message: str, kind: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers={"retry-after-ms": "10", "retry-after": "0"})


@dataclass
class FakeOpenAI:
    """The server; `requests` keeps every request body it got."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        model = body.get("model", "")
        if model == "rate-limited":
            return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        if model == "broken":
            return _error(500, "The server had an error while processing your request.", "server_error",
                          "internal_error")
        cid, created = f"chatcmpl-{len(self.requests)}", int(time.time())
        answer_model = f"{model}-2024-08-06"
        if not body.get("stream"):
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": answer_model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": "".join(WORDS), "refusal": None}}],
                "usage": _usage()})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await asyncio.sleep(FIRST_CHUNK_DELAY)

        def chunk(delta: dict[str, Any], finish: str | None, usage: Any = None) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": answer_model,
                    "system_fingerprint": "fp_fake", "usage": usage,
                    "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                  "logprobs": None}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        await resp.write(chunk({"role": "assistant", "content": ""}, None))
        for word in WORDS:
            await resp.write(chunk({"content": word}, None))
            await asyncio.sleep(CHUNK_DELAY)
        await resp.write(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(chunk({}, None, _usage()))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
