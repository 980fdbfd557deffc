"""Async client of the llmmeter ingest service.

Besides the plumbing of :mod:`llmmeter.service_client`, it splits an ingest
stream into re-sendable windows, so a retry never needs the whole input in
memory and a window of only invalid records reports rejections instead of
failing the whole upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import grpc

from llmmeter.columns import to_columns
from llmmeter.config import ClientConfig
from llmmeter.errors import FieldViolation, InvalidArgumentError
from llmmeter.service_client import ServiceClient
from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc, usage_pb2

_T = TypeVar("_T")

_RECORD_FIELD = re.compile(r"^records\[(\d+)\](?:\.(.*))?$")

OnSent = Callable[[int], None]
"""Progress callback: called with the number of records just handed to gRPC (never twice for a retry)."""


class IngestClient(ServiceClient):
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
        response: ingest_pb2.WriteRecordsResponse = await self._unary("WriteRecords", request)
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
        skipped and an empty input sends nothing. Each batch travels as
        `UsageColumns` unless `config.stream_as_columns` is off.
        """
        total = ingest_pb2.StreamRecordsResponse()
        offset = 0
        windows = _windows(batches, self._config.stream_window_records, self._config.stream_as_columns)
        async for window in _read_ahead(windows):
            response = await self._send_window(window, on_sent)
            total.accepted_count += response.accepted_count
            total.duplicate_count += response.duplicate_count
            for rejection in response.rejections:
                merged = total.rejections.add()
                merged.CopyFrom(rejection)
                merged.index += offset
            offset += sum(map(_count, window))
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
                    on_sent(_count(request))

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


def _request(batch: Sequence[usage_pb2.UsageRecord], as_columns: bool) -> ingest_pb2.StreamRecordsRequest:
    """One stream message of `batch`: as columns when asked and the columns can carry it."""
    if as_columns:
        try:
            return ingest_pb2.StreamRecordsRequest(columns=to_columns(batch))
        except ValueError:  # a NaN cost or odd nanos: the records say it, and the service names it
            pass
    return ingest_pb2.StreamRecordsRequest(records=batch)


def _count(request: ingest_pb2.StreamRecordsRequest) -> int:
    """Records in one stream message, in either form."""
    return len(request.records) or len(request.columns.request_id)


def _request_ids(request: ingest_pb2.StreamRecordsRequest) -> list[str]:
    return [r.request_id for r in request.records] or list(request.columns.request_id)


async def _windows(
    batches: AsyncIterable[Sequence[usage_pb2.UsageRecord]], limit: int, as_columns: bool
) -> AsyncIterator[list[ingest_pb2.StreamRecordsRequest]]:
    """Groups non-empty batches into windows of at least `limit` records (the last one may be smaller)."""
    window: list[ingest_pb2.StreamRecordsRequest] = []
    size = 0
    async for batch in batches:
        if not batch:
            continue
        window.append(_request(batch, as_columns))
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
    ids = [request_id for request in window for request_id in _request_ids(request)]
    response = ingest_pb2.StreamRecordsResponse()
    if not violations:
        return None
    for violation in violations:
        match = _RECORD_FIELD.match(violation.field)
        if match is None or int(match.group(1)) >= len(ids):
            return None
        index = int(match.group(1))
        response.rejections.add(
            index=index,
            request_id=ids[index],
            field=match.group(2) or "",
            reason=violation.description,
        )
    return response
