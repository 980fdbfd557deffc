"""Ships usage records to the ingest service from a background thread, never blocking the caller.

Integrations running inside an application (a LiteLLM callback, a gateway
hook) must not slow or fail the call they record. :class:`RecordShipper`
takes records into a bounded in-memory queue in O(1) and a daemon thread with
a private event loop sends them in batches through :class:`llmmeter.IngestClient`.
When the ingest service is unreachable a batch is retried with exponential
backoff for a bounded time (re-sending is safe: the service deduplicates on
`request_id` and `start_time`), then dropped; records that do not fit the queue
are dropped at once. Every drop is counted (:attr:`RecordShipper.dropped`) and
logged, so memory stays bounded whatever the service does.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

from llmmeter.channels import open_channel
from llmmeter.config import ClientConfig, RetryPolicy
from llmmeter.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RpcError,
    UnavailableError,
)
from llmmeter.ingest_client import IngestClient
from llmmeter.v1 import usage_pb2

log = logging.getLogger("llmmeter.shipper")

_RETRYABLE = (UnavailableError, ResourceExhaustedError, DeadlineExceededError)
#: Reconnect quickly once the service is back, instead of gRPC's default of up to two minutes.
_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000))


@dataclass(frozen=True)
class ShipperSettings:
    """How much a :class:`RecordShipper` holds, how it batches and how long it retries."""

    max_queue: int = 10_000
    """Records held in memory at most (queued, not yet sent); more are dropped and counted."""

    batch_size: int = 500
    """Records sent per WriteRecords call at most."""

    flush_interval: float = 1.0
    """Seconds a record waits at most for its batch to fill before it is sent."""

    retry_for: float = 60.0
    """Seconds a batch is retried while the service is unreachable or busy before it is dropped."""

    initial_backoff: float = 0.2
    """Seconds before the first retry of a batch; doubles per attempt up to `max_backoff`."""

    max_backoff: float = 5.0
    """Longest wait between two attempts of a batch."""

    def __post_init__(self) -> None:
        """Rejects settings that cannot work."""
        if self.max_queue < 1 or self.batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        if self.flush_interval <= 0 or self.retry_for < 0 or not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("flush_interval > 0, retry_for >= 0 and 0 < initial_backoff <= max_backoff")


class RecordShipper:
    """A bounded queue of usage records and the daemon thread that sends them to the ingest service.

    :meth:`submit` never blocks on the network and never raises; :meth:`flush`
    waits until what was submitted before it is stored or dropped; :meth:`close`
    flushes and stops the thread (also run at interpreter exit). The counters
    (`accepted`, `duplicates`, `rejected`, `dropped`) are plain ints, read
    without locking.
    """

    def __init__(self, config: ClientConfig | None = None, settings: ShipperSettings | None = None,
                 *, name: str = "llmmeter-shipper") -> None:
        """`config` says where the ingest service is and which key to send (default: the environment).
        Nothing is dialled and no thread starts until the first record is submitted."""
        base = config or ClientConfig.from_env()
        # The shipper owns retries (with a longer, time-bounded budget); one attempt per IngestClient call.
        self._config = replace(base, retry=RetryPolicy(max_attempts=1))
        self._settings = settings or ShipperSettings()
        self._name = name
        self._cond = threading.Condition()
        self._queue: collections.deque[usage_pb2.UsageRecord] = collections.deque()
        self._submitted = 0
        self._settled = 0
        self._flush_wanted = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.accepted = 0
        """Records newly stored by the service."""
        self.duplicates = 0
        """Records the service had already stored (re-sent after a lost answer)."""
        self.rejected = 0
        """Records the service refused as invalid (logged with the reason)."""
        self.dropped = 0
        """Records given up: the queue was full, or retries ran out, or the service refused the key."""
        self.on_dropped: Callable[[int, str], None] | None = None
        """Called (count, reason) from the shipper's thread when records are dropped."""
        _open_shippers.add(self)

    @property
    def settings(self) -> ShipperSettings:
        """The shipper's queue, batch and retry settings."""
        return self._settings

    @property
    def pending(self) -> int:
        """Records submitted and neither stored nor dropped yet."""
        return self._submitted - self._settled

    def submit(self, record: usage_pb2.UsageRecord) -> bool:
        """Queues one record for sending; False (and counted as dropped) when the queue is full or closed."""
        with self._cond:
            if os.getpid() != self._pid:  # forked (e.g. a pre-fork web server): the thread did not come along
                self._after_fork()
            if self._closing or len(self._queue) >= self._settings.max_queue:
                self._submitted += 1
                self._settled += 1
                reason = "the shipper is closed" if self._closing else "the queue is full"
                self._drop(1, reason)
                return False
            self._queue.append(record)
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if len(self._queue) >= self._settings.batch_size:
                self._cond.notify_all()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Sends what is queued now and waits until it is stored or dropped; False on timeout.

        Blocks the calling thread: from async code use ``await asyncio.to_thread(shipper.flush)``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            if self._thread is None or not self._thread.is_alive():
                return self._settled >= target
            self._flush_wanted = True
            self._cond.notify_all()
            while self._settled < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flushes (waiting `timeout` seconds at most), then stops the thread; later records are dropped."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        _open_shippers.discard(self)
        return flushed

    # --- the shipper's thread -------------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's thread and queue (they are the parent's to send)."""
        self._pid = os.getpid()
        self._thread = None
        self._settled += len(self._queue)
        self._queue.clear()
        self._flush_wanted = False

    def _drop(self, count: int, reason: str) -> None:
        """Counts and logs dropped records (called with the lock held or from the thread)."""
        self.dropped += count
        log.warning("llmmeter: dropped %d usage record(s): %s (%d dropped so far)", count, reason,
                    self.dropped)
        if self.on_dropped is not None:
            try:
                self.on_dropped(count, reason)
            except Exception:  # a user hook must not stop the shipper
                log.exception("llmmeter: on_dropped hook failed")

    def _take(self) -> list[usage_pb2.UsageRecord] | None:
        """The next batch: waits until a batch is full, the flush interval passed, a flush or close."""
        settings = self._settings
        with self._cond:
            deadline = time.monotonic() + settings.flush_interval
            while True:
                if len(self._queue) >= settings.batch_size or (self._queue and (
                        self._flush_wanted or self._closing or time.monotonic() >= deadline)):
                    count = min(len(self._queue), settings.batch_size)
                    return [self._queue.popleft() for _ in range(count)]
                if not self._queue:
                    self._flush_wanted = False
                    if self._closing:
                        return None
                    deadline = time.monotonic() + settings.flush_interval
                    self._cond.wait(settings.flush_interval)
                else:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))

    def _settle(self, count: int) -> None:
        with self._cond:
            self._settled += count
            self._cond.notify_all()

    def _run(self) -> None:
        """The thread: a private event loop, one IngestClient, batches until closed."""
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except Exception:
            log.exception("llmmeter: the shipper thread failed")
        finally:
            loop.close()

    async def _main(self) -> None:
        channel = open_channel(self._config.ingest_addr, self._config.api_key, self._config.tls,
                               options=_CHANNEL_OPTIONS)
        client = IngestClient(self._config, channel=channel)  # the transport; the channel is ours to close
        try:
            while (batch := await asyncio.to_thread(self._take)) is not None:
                try:
                    await self._send(client, batch)
                except Exception:
                    log.exception("llmmeter: sending %d usage record(s) failed", len(batch))
                    self._drop(len(batch), "unexpected error")
                finally:
                    self._settle(len(batch))
        finally:
            await channel.close()

    async def _send(self, client: IngestClient, batch: list[usage_pb2.UsageRecord]) -> None:
        """Sends one batch, retrying "try again later" failures with backoff for `retry_for` seconds."""
        settings = self._settings
        give_up_at = time.monotonic() + settings.retry_for
        attempt = 0
        while True:
            try:
                response = await client.write_records(batch)
            except InvalidArgumentError as error:
                self.rejected += len(batch)
                log.warning("llmmeter: the ingest service refused %d usage record(s): %s", len(batch), error)
                return
            except _RETRYABLE as error:
                if isinstance(error, ResourceExhaustedError) and "larger than max" in error.details:
                    if len(batch) > 1:  # too big for one message: send it in halves
                        half = len(batch) // 2
                        await self._send(client, batch[:half])
                        await self._send(client, batch[half:])
                    else:
                        self._drop(1, f"record larger than the service accepts: {error}")
                    return
                attempt += 1
                wait = min(settings.max_backoff, settings.initial_backoff * 2 ** (attempt - 1))
                wait *= 1 - 0.5 * random.random()
                if self._closing_now() or time.monotonic() + wait > give_up_at:
                    self._drop(len(batch), f"gave up after {attempt} attempt(s): {error}")
                    return
                await asyncio.sleep(wait)
                continue
            except RpcError as error:  # UNAUTHENTICATED, PERMISSION_DENIED, ...: retrying cannot help
                self._drop(len(batch), str(error))
                return
            self.accepted += response.accepted_count
            self.duplicates += response.duplicate_count
            if response.rejections:
                self.rejected += len(response.rejections)
                first = response.rejections[0]
                log.warning("llmmeter: the ingest service refused %d usage record(s), e.g. %s: %s: %s",
                            len(response.rejections), first.request_id, first.field, first.reason)
            return

    def _closing_now(self) -> bool:
        """True once close() gave up waiting (the interpreter is shutting down): stop retrying."""
        return self._closing


_open_shippers: weakref.WeakSet[RecordShipper] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit, give every open shipper a few seconds to send what it holds."""
    for shipper in list(_open_shippers):
        shipper.close(timeout=5.0)
