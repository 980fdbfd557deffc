"""Thin async clients of the llmmeter ingest, query and alerts services.

They add to the generated `grpc.aio` stubs only what every caller would
otherwise rewrite: channel lifetime, deadlines, bounded retries of "try again
later" statuses, one-line exceptions (see :mod:`llmmeter.errors`), and for
ingest streams a split into re-sendable windows so a retry never needs the
whole input in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from llmmeter.config import ClientConfig
from llmmeter.errors import (
    AlreadyExistsError,
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    LlmmeterError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RpcError,
    UnauthenticatedError,
    UnavailableError,
)
from llmmeter.retry import Retrier, is_retryable
from llmmeter.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    usage_pb2,
)

__all__ = [
    "AlertsClient",
    "AlreadyExistsError",
    "ConfigError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "IngestClient",
    "InvalidArgumentError",
    "LlmmeterError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueryClient",
    "ResourceExhaustedError",
    "RpcError",
    "UnauthenticatedError",
    "UnavailableError",
]

_T = TypeVar("_T")

_RECORD_FIELD = re.compile(r"^records\[(\d+)\](?:\.(.*))?$")

OnSent = Callable[[int], None]
"""Progress callback: called with the number of records just handed to gRPC (never twice for a retry)."""


class _ServiceClient:
    """What every llmmeter client shares: its channel, retry policy and `async with` use."""

    SERVICE = ""
    """The service's name in error messages."""

    def __init__(self, address: str, config: ClientConfig, channel: grpc.aio.Channel | None) -> None:
        """Dials `address` (plaintext) unless a `channel` is given, which is then not closed."""
        self._config = config
        self._owns_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(address)
        self._retrier = Retrier(config.retry, service=self.SERVICE, target=address)

    async def __aenter__(self) -> Self:
        """Returns the client itself; the channel is already usable."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Closes the channel when the client created it."""
        await self.close()

    async def close(self) -> None:
        """Closes the channel when the client created it, cancelling calls still in flight."""
        if self._owns_channel:
            await self._channel.close()


class IngestClient(_ServiceClient):
    """Async client of `llmmeter.v1.IngestService`; use it as an `async with` context manager."""

    SERVICE = "ingest service"

    def __init__(
        self, config: ClientConfig | None = None, *, channel: grpc.aio.Channel | None = None
    ) -> None:
        """Dials `config.ingest_addr` (plaintext) unless a `channel` is given, which is then not closed."""
        config = config or ClientConfig.from_env()
        super().__init__(config.ingest_addr, config, channel)
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)

    async def write_records(
        self, records: Iterable[usage_pb2.UsageRecord]
    ) -> ingest_pb2.WriteRecordsResponse:
        """Writes one batch and returns what became of each record.

        Invalid records come back in `rejections` while the valid ones are
        stored. Raises :class:`InvalidArgumentError` (with `violations`) when
        every record is invalid, and another :class:`RpcError` when the call
        fails for good after retries.
        """
        request = ingest_pb2.WriteRecordsRequest(records=records)
        response: ingest_pb2.WriteRecordsResponse = await self._retrier.call(
            "WriteRecords", lambda: self._stub.WriteRecords(request, timeout=self._config.timeout)
        )
        return response

    async def stream_records(
        self, batches: AsyncIterable[Sequence[usage_pb2.UsageRecord]], *, on_sent: OnSent | None = None
    ) -> ingest_pb2.StreamRecordsResponse:
        """Streams batches of records and returns one summary of the whole input.

        The input is cut into StreamRecords calls of about
        `config.stream_window_records` records; a window that fails with a
        retryable status is sent again whole (the server drops what it already
        stored, so such records may be counted as duplicates). The next window
        is read while the current one is sent. Rejection indexes count records
        across the whole input, as with a single stream.

        Unlike a bare StreamRecords call, a window whose records are all
        invalid does not raise: its field violations become rejections, so the
        result does not depend on how the input was split. Empty batches are
        skipped and an empty input sends nothing.
        """
        total = ingest_pb2.StreamRecordsResponse()
        offset = 0
        windows = _windows(batches, self._config.stream_window_records)
        async for window in _read_ahead(windows):
            response = await self._send_window(window, on_sent)
            total.accepted_count += response.accepted_count
            total.duplicate_count += response.duplicate_count
            for rejection in response.rejections:
                merged = total.rejections.add()
                merged.CopyFrom(rejection)
                merged.index += offset
            offset += sum(len(request.records) for request in window)
        return total

    async def _send_window(
        self, window: list[ingest_pb2.StreamRecordsRequest], on_sent: OnSent | None
    ) -> ingest_pb2.StreamRecordsResponse:
        """Sends one window as one StreamRecords call, with retries; folds an all-invalid failure."""
        reported = 0

        def requests() -> Iterator[ingest_pb2.StreamRecordsRequest]:
            nonlocal reported
            for position, request in enumerate(window):
                yield request
                if on_sent is not None and position >= reported:
                    reported = position + 1
                    on_sent(len(request.records))

        try:
            response: ingest_pb2.StreamRecordsResponse = await self._retrier.call(
                "StreamRecords", lambda: self._stub.StreamRecords(requests(), timeout=self._config.timeout)
            )
        except InvalidArgumentError as error:
            folded = _fold_violations(window, error.violations)
            if folded is None:
                raise
            return folded
        return response


class QueryClient(_ServiceClient):
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

    async def _unary(self, method: str, request: Any) -> Any:
        rpc = getattr(self._stub, method)
        return await self._retrier.call(method, lambda: rpc(request, timeout=self._config.timeout))

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


class AlertsClient:
    """Async client of `llmmeter.v1.AlertsService`; use it as an `async with` context manager.

    Unary calls get the configured deadline; reads, deletes and updates (which
    replace fields) are retried like the query client's. `watch_alerts` streams
    until the caller stops iterating.
    """

    SERVICE = "alerts service"

    def __init__(
        self, config: ClientConfig | None = None, *, channel: grpc.aio.Channel | None = None
    ) -> None:
        """Dials `config.alerts_addr` (plaintext) unless a `channel` is given, which is then not closed."""
        self._config = config or ClientConfig.from_env()
        self._owns_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(self._config.alerts_addr)
        self._stub = alerts_pb2_grpc.AlertsServiceStub(self._channel)
        self._retrier = Retrier(self._config.retry, service=self.SERVICE, target=self._config.alerts_addr)

    async def __aenter__(self) -> AlertsClient:
        """Returns the client itself; the channel is already usable."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Closes the channel when the client created it."""
        await self.close()

    async def close(self) -> None:
        """Closes the channel when the client created it, cancelling calls still in flight."""
        if self._owns_channel:
            await self._channel.close()

    async def call(self, method: str, request: Any) -> Any:
        """Calls one unary method of AlertsService by name (`CreateRule`, `ListAlerts`, ...)."""
        rpc = getattr(self._stub, method)
        return await self._retrier.call(method, lambda: rpc(request, timeout=self._config.timeout))

    async def create_rule(self, rule: alerts_pb2.Rule) -> alerts_pb2.Rule:
        """Stores a new rule; :class:`InvalidArgumentError` names the bad fields (`rule.window`, ...)."""
        response: alerts_pb2.CreateRuleResponse = await self.call(
            "CreateRule", alerts_pb2.CreateRuleRequest(rule=rule)
        )
        return response.rule

    async def get_rule(self, name: str) -> alerts_pb2.Rule:
        """One rule by name; :class:`NotFoundError` when absent."""
        response: alerts_pb2.GetRuleResponse = await self.call(
            "GetRule", alerts_pb2.GetRuleRequest(name=name)
        )
        return response.rule

    async def list_rules(self) -> list[alerts_pb2.Rule]:
        """Every rule, by name (all pages)."""
        out: list[alerts_pb2.Rule] = []
        token = ""
        while True:
            page: alerts_pb2.ListRulesResponse = await self.call(
                "ListRules", alerts_pb2.ListRulesRequest(page_size=1000, page_token=token)
            )
            out.extend(page.rules)
            token = page.next_page_token
            if not token:
                return out

    async def update_rule(self, rule: alerts_pb2.Rule, paths: Sequence[str] = ()) -> alerts_pb2.Rule:
        """Replaces the fields `paths` (all when empty) of the rule named `rule.name`."""
        request = alerts_pb2.UpdateRuleRequest(rule=rule)
        request.update_mask.paths.extend(paths)
        response: alerts_pb2.UpdateRuleResponse = await self.call("UpdateRule", request)
        return response.rule

    async def delete_rule(self, name: str) -> None:
        """Deletes a rule with its alerts and history."""
        await self.call("DeleteRule", alerts_pb2.DeleteRuleRequest(name=name))

    async def test_rule(
        self, name: str = "", rule: alerts_pb2.Rule | None = None
    ) -> alerts_pb2.TestRuleResponse:
        """Evaluates a stored rule (by name) or a given one once, without notifying."""
        request = alerts_pb2.TestRuleRequest(name=name)
        if rule is not None:
            request.rule.CopyFrom(rule)
        response: alerts_pb2.TestRuleResponse = await self.call("TestRule", request)
        return response

    def watch_alerts(
        self, request: alerts_pb2.WatchAlertsRequest, *, on_live: Callable[[], None] | None = None
    ) -> AsyncGenerator[alerts_pb2.WatchAlertsResponse, None]:
        """State changes as they happen, until the caller stops iterating."""
        return self._watch(request, on_live)

    async def _watch(
        self, request: alerts_pb2.WatchAlertsRequest, on_live: Callable[[], None] | None
    ) -> AsyncGenerator[alerts_pb2.WatchAlertsResponse, None]:
        call = self._stub.WatchAlerts(request)
        try:
            await call.initial_metadata()
            if on_live is not None and not call.done():
                on_live()
            async for response in call:
                yield response
        except grpc.RpcError as error:
            raise self._retrier.to_error(error, "WatchAlerts") from None
        finally:
            call.cancel()


async def _windows(
    batches: AsyncIterable[Sequence[usage_pb2.UsageRecord]], limit: int
) -> AsyncIterator[list[ingest_pb2.StreamRecordsRequest]]:
    """Groups non-empty batches into windows of at least `limit` records (the last one may be smaller)."""
    window: list[ingest_pb2.StreamRecordsRequest] = []
    size = 0
    async for batch in batches:
        if not batch:
            continue
        window.append(ingest_pb2.StreamRecordsRequest(records=batch))
        size += len(batch)
        if size >= limit:
            yield window
            window, size = [], 0
    if window:
        yield window


async def _read_ahead(source: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """Yields the items of `source` while already fetching the next one, so reading overlaps sending."""

    async def fetch() -> list[_T]:
        try:
            return [await anext(source)]
        except StopAsyncIteration:
            return []

    pending = asyncio.ensure_future(fetch())
    try:
        while items := await pending:
            pending = asyncio.ensure_future(fetch())
            yield items[0]
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending


def _fold_violations(
    window: list[ingest_pb2.StreamRecordsRequest], violations: Sequence[FieldViolation]
) -> ingest_pb2.StreamRecordsResponse | None:
    """Turns `records[i].field` violations of an all-invalid window into rejections.

    Returns None when a violation does not name a record of the window, in
    which case the failure is not about individual records and must surface.
    """
    records = [record for request in window for record in request.records]
    response = ingest_pb2.StreamRecordsResponse()
    if not violations:
        return None
    for violation in violations:
        match = _RECORD_FIELD.match(violation.field)
        if match is None or int(match.group(1)) >= len(records):
            return None
        index = int(match.group(1))
        response.rejections.add(
            index=index,
            request_id=records[index].request_id,
            field=match.group(2) or "",
            reason=violation.description,
        )
    return response
