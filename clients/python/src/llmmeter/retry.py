"""Bounded retries with exponential backoff for llmmeter RPCs.

The ingest service answers RESOURCE_EXHAUSTED when its queue is full and
UNAVAILABLE when it or its database is down; both mean "try again later", and
re-sending records is safe because the server deduplicates them. Every client
shares this one loop so that retry behaviour and the resulting error messages
are the same for all services.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from llmmeter.config import RetryPolicy
from llmmeter.errors import RpcError, error_from_rpc, is_message_too_large

T = TypeVar("T")

RETRYABLE_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


def is_retryable(error: grpc.RpcError) -> bool:
    """Tells whether sending the same request again later can succeed."""
    code: grpc.StatusCode = error.code()
    return code in RETRYABLE_CODES and not is_message_too_large(error)


class Retrier:
    """Runs calls to one service under a :class:`RetryPolicy`; failures become :class:`RpcError`."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        service: str,
        target: str,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`rng` (for jitter) and `sleep` can be injected so tests run fast and deterministically."""
        self._policy = policy
        self._service = service
        self._target = target
        self._rng = rng or random.Random()
        self._sleep = sleep

    def delay(self, attempt: int) -> float:
        """Returns the jittered wait in seconds after failed attempt number `attempt` (from 1)."""
        base = self._policy.backoff(attempt)
        return base * (1.0 - self._policy.jitter * self._rng.random())

    def to_error(self, error: grpc.RpcError, method: str, attempts: int = 1) -> RpcError:
        """Converts a failed call of this service into the client's one-line exception."""
        return error_from_rpc(
            error, service=self._service, target=self._target, method=method, attempts=attempts
        )

    async def call(self, method: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Awaits `attempt_once()` until it succeeds, fails for good, or the attempts run out.

        `attempt_once` must start a fresh RPC each time it is called. Raises an
        :class:`RpcError` subclass naming `method` on failure.
        """
        attempt = 1
        while True:
            try:
                return await attempt_once()
            except grpc.RpcError as error:
                if attempt >= self._policy.max_attempts or not is_retryable(error):
                    raise self.to_error(error, method, attempt) from error
            await self._sleep(self.delay(attempt))
            attempt += 1
