"""Async client of the llmmeter query service.

Reads are idempotent, so unary calls are retried like ingest writes. Server
streams (exports, the live tail) need their own rule: a stream is retried
only while it has delivered nothing, so a retry can never repeat or skip data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc

from llmmeter.config import ClientConfig
from llmmeter.errors import DeadlineExceededError
from llmmeter.retry import is_retryable
from llmmeter.service_client import ServiceClient
from llmmeter.v1 import query_pb2, query_pb2_grpc


class QueryClient(ServiceClient):
    """Async client of `llmmeter.v1.QueryService`; use it as an `async with` context manager.

    Unary calls get the configured deadline and are retried like the ingest
    client's (reads are idempotent). A server stream is retried only while it
    has delivered nothing, so a retry can never repeat or skip data; exports
    fail when no chunk arrives for `config.timeout` seconds, while a live tail
    waits for as long as it takes.
    """

    SERVICE = "query service"

    def __init__(
        self, config: ClientConfig | None = None, *, channel: grpc.aio.Channel | None = None
    ) -> None:
        """Dials `config.query_addr` (plaintext) unless a `channel` is given, which is then not closed."""
        config = config or ClientConfig.from_env()
        super().__init__(config.query_addr, config, channel)
        self._stub = query_pb2_grpc.QueryServiceStub(self._channel)

    async def get_summary(self, request: query_pb2.GetSummaryRequest) -> query_pb2.GetSummaryResponse:
        """The summary cards of a window."""
        response: query_pb2.GetSummaryResponse = await self._unary("GetSummary", request)
        return response

    async def list_requests(self, request: query_pb2.ListRequestsRequest) -> query_pb2.ListRequestsResponse:
        """One page of the request log, newest first."""
        response: query_pb2.ListRequestsResponse = await self._unary("ListRequests", request)
        return response

    async def get_request(self, request: query_pb2.GetRequestRequest) -> query_pb2.GetRequestResponse:
        """One request in full; raises :class:`NotFoundError` when absent."""
        response: query_pb2.GetRequestResponse = await self._unary("GetRequest", request)
        return response

    async def get_time_series(
        self, request: query_pb2.GetTimeSeriesRequest
    ) -> query_pb2.GetTimeSeriesResponse:
        """Metrics over time, optionally grouped."""
        response: query_pb2.GetTimeSeriesResponse = await self._unary("GetTimeSeries", request)
        return response

    async def get_breakdown(self, request: query_pb2.GetBreakdownRequest) -> query_pb2.GetBreakdownResponse:
        """A table of metrics per group."""
        response: query_pb2.GetBreakdownResponse = await self._unary("GetBreakdown", request)
        return response

    def export_requests(
        self, request: query_pb2.ExportRequestsRequest
    ) -> AsyncGenerator[query_pb2.ExportRequestsResponse, None]:
        """The chunks of a request-log export, in order."""
        return self._stream("ExportRequests", request, idle_timeout=self._config.timeout)

    def export_aggregates(
        self, request: query_pb2.ExportAggregatesRequest
    ) -> AsyncGenerator[query_pb2.ExportAggregatesResponse, None]:
        """The chunks of a grouped-metrics CSV export, in order."""
        return self._stream("ExportAggregates", request, idle_timeout=self._config.timeout)

    def tail_requests(
        self, request: query_pb2.TailRequestsRequest, *, on_live: Callable[[], None] | None = None
    ) -> AsyncGenerator[query_pb2.TailRequestsResponse, None]:
        """New matching requests as they are stored, until the caller stops iterating.

        `on_live` is called once, when the server has confirmed that the watch
        is in place: every request stored after that is delivered.
        """
        return self._stream("TailRequests", request, idle_timeout=None, on_live=on_live)

    async def _stream(
        self,
        method: str,
        request: Any,
        *,
        idle_timeout: float | None,
        on_live: Callable[[], None] | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Iterates a server stream; retries a failed start, converts failures, cancels when abandoned."""
        attempt = 1
        while True:
            call = getattr(self._stub, method)(request)
            received = False
            try:
                if on_live is not None:
                    await call.initial_metadata()
                    if not call.done():  # headers of a failed call arrive with its end
                        on_live()
                        on_live = None
                        received = True  # a silent re-subscription would miss what was stored meanwhile
                iterator = call.__aiter__()
                while True:
                    try:
                        response = await asyncio.wait_for(anext(iterator), idle_timeout)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        raise self._idle_error(method, idle_timeout) from None
                    received = True
                    yield response
            except grpc.RpcError as error:
                if received or attempt >= self._config.retry.max_attempts or not is_retryable(error):
                    raise self._retrier.to_error(error, method, attempt) from error
            finally:
                call.cancel()
            await asyncio.sleep(self._retrier.delay(attempt))
            attempt += 1

    def _idle_error(self, method: str, seconds: float | None) -> DeadlineExceededError:
        details = f"no data for {seconds:g} seconds"
        target = self._config.query_addr
        return DeadlineExceededError(
            f"{method} on the {self.SERVICE} at {target} failed: DEADLINE_EXCEEDED: {details}",
            code=grpc.StatusCode.DEADLINE_EXCEEDED,
            details=details,
            service=self.SERVICE,
            target=target,
            method=method,
        )
