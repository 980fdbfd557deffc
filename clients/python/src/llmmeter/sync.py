"""Blocking facades of the async clients, for scripts, notebooks and threaded code.

Each facade runs the async client (:mod:`llmmeter.client`) on a private event
loop in a daemon thread of its own and waits for the results, so it works the
same from plain code, from any thread, and from inside someone else's running
event loop (where `asyncio.run` would refuse). Every method is the async
client's method of the same name and arguments: unary calls return the
response, server streams (exports, the live tail, watching alerts) become
ordinary iterators. Nothing is re-implemented here: retries, deadlines, errors
(:mod:`llmmeter.errors`) and stream windows are the async client's.

    from llmmeter.sync import IngestClient, QueryClient

    with IngestClient() as ingest:
        print(ingest.write_records(records).accepted_count)
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from llmmeter import alerts_client, ingest_client, keys_client, query_client
from llmmeter.config import ClientConfig
from llmmeter.service_client import ServiceClient
from llmmeter.v1 import ingest_pb2, usage_pb2

__all__ = ["AlertsClient", "IngestClient", "KeysClient", "QueryClient"]

C = TypeVar("C", bound=ServiceClient)
T = TypeVar("T")


class _Facade(Generic[C]):
    """A private event loop thread and the async client living on it."""

    _client_type: Callable[[ClientConfig | None], C]

    def __init__(self, config: ClientConfig | None = None) -> None:
        """Starts the loop thread and builds the async client there (its channel belongs to that loop)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"llmmeter-{type(self).__name__}")
        self._thread.start()
        self._closed = False

        async def make() -> C:
            return self._client_type(config)

        self.aio: C = self._run(make())
        """The async client itself, for what the facade does not cover; await it only on `loop`."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private loop the async client runs on."""
        return self._loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the private loop and waits for its result (or its exception)."""
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator of the private loop as a blocking iterator; closed when abandoned."""

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(stream)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None and not self._closed:
                self._run(closer())

    def __getattr__(self, name: str) -> Any:
        """The async client's method `name`, blocking: results returned, streams iterated."""
        attribute = getattr(self.aio, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def blocking(*args: Any, **kwargs: Any) -> Any:
            async def call() -> Any:
                return attribute(*args, **kwargs)

            result = self._run(call())  # made on the loop: a stream's generator belongs to it
            if inspect.isasyncgen(result) or isinstance(result, AsyncIterator):
                return self._iterate(result)
            if inspect.isawaitable(result):
                return self._run(_awaited(result))
            return result

        blocking.__name__ = name
        blocking.__doc__ = attribute.__doc__
        return blocking

    def close(self) -> None:
        """Closes the async client's channel and stops the loop thread."""
        if self._closed:
            return
        try:
            self._run(self.aio.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            if not self._loop.is_running():
                self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class IngestClient(_Facade[ingest_client.IngestClient]):
    """Blocking :class:`llmmeter.IngestClient`: `write_records(records)`, `stream_records(batches)`."""

    _client_type = ingest_client.IngestClient

    def write_records(self, records: Iterable[usage_pb2.UsageRecord]) -> ingest_pb2.WriteRecordsResponse:
        """:meth:`llmmeter.IngestClient.write_records`, blocking."""
        return self._run(self.aio.write_records(list(records)))

    def stream_records(self, batches: Iterable[Sequence[usage_pb2.UsageRecord]], *,
                       on_sent: ingest_client.OnSent | None = None) -> ingest_pb2.StreamRecordsResponse:
        """:meth:`llmmeter.IngestClient.stream_records` over an ordinary iterable of batches, blocking.

        The batches are read on the client's loop thread as they are sent, so a
        generator producing them need not hold the whole input in memory.
        """

        async def source() -> AsyncIterator[Sequence[usage_pb2.UsageRecord]]:
            for batch in batches:
                yield batch

        return self._run(self.aio.stream_records(source(), on_sent=on_sent))


class QueryClient(_Facade[query_client.QueryClient]):
    """Blocking :class:`llmmeter.QueryClient`: `get_summary`, `list_requests`, ..., and iterators for
    `export_requests`, `export_aggregates` and `tail_requests`."""

    _client_type = query_client.QueryClient


class AlertsClient(_Facade[alerts_client.AlertsClient]):
    """Blocking :class:`llmmeter.AlertsClient`."""

    _client_type = alerts_client.AlertsClient


class KeysClient(_Facade[keys_client.KeysClient]):
    """Blocking :class:`llmmeter.client.KeysClient`."""

    _client_type = keys_client.KeysClient
