"""The bounded queue between the RPC handlers and the database, with group commit.

Handlers hand over validated rows and wait for the commit; writer tasks take
whatever is queued (up to `group_commit_records`) and store it in one
transaction, so many small calls cost one COPY. The queue is bounded in
records: when it is full a call is refused (RESOURCE_EXHAUSTED) instead of
piling up memory, and nothing refused was ever half-written. A caller learns
per key whether its record was newly stored or already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from llmmeter_common.errors import FieldViolation, InvalidArgument, ResourceExhausted, Unavailable
from llmmeter_ingest.rows import Row
from llmmeter_ingest.store import Store, Written

log = logging.getLogger(__name__)

Key = tuple[str, datetime]

#: Failures that mean "the database is not reachable right now".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
)
#: Ingest counts as paused once no call has queued records for this long.
QUIET_SECONDS = 0.25
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


class AllKeys(Collection[Key]):
    """The keys of all of a job's rows, every one newly stored (the usual outcome): the set is
    built only if someone looks a key up."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self._rows = rows
        self._keys: set[Key] | None = None

    def _set(self) -> set[Key]:
        if self._keys is None:
            self._keys = {(r[1], r[0]) for r in self._rows}
        return self._keys

    def __len__(self) -> int:
        return len(self._rows)  # keys are unique within a job

    def __contains__(self, key: object) -> bool:
        return key in self._set()

    def __iter__(self) -> Iterator[Key]:
        return iter(self._set())


@dataclass
class Job:
    """Rows of one call waiting for their commit (keys unique within the job).

    `done` resolves to the keys of this job's rows that were newly stored.
    """

    rows: Sequence[Row]
    payloads: Sequence[Row]
    done: asyncio.Future[Collection[Key]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchWriter:
    """Owns the queue and the writer tasks."""

    def __init__(self, store: Store, queue_max_records: int, group_commit_records: int,
                 writers: int) -> None:
        self._store = store
        self._max = queue_max_records
        self._group = group_commit_records
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._queued = 0
        self._stored = 0
        self._last_submit = 0.0
        self._space = asyncio.Condition()
        self._tasks = [asyncio.create_task(self._run(), name=f"writer-{i}") for i in range(writers)]

    @property
    def queued_records(self) -> int:
        """Records accepted by handlers and not yet committed or failed."""
        return self._queued

    def activity(self) -> tuple[int, bool]:
        """(rows stored so far, whether ingest is quiet: nothing queued and no call for
        QUIET_SECONDS), for the rollup worker to take what a burst stored as soon as it ends."""
        quiet = not self._queued and time.monotonic() - self._last_submit >= QUIET_SECONDS
        return self._stored, quiet

    def submit_nowait(self, rows: Sequence[Row], payloads: Sequence[Row]) -> Job:
        """Queue rows or refuse at once when the queue is full."""
        if self._queued and self._queued + len(rows) > self._max:
            raise ResourceExhausted(
                f"ingest queue is full ({self._queued} records waiting); retry with backoff"
            )
        job = Job(rows, payloads)
        self._last_submit = time.monotonic()
        self._queued += len(rows)
        self._queue.put_nowait(job)
        return job

    async def submit(self, rows: Sequence[Row], payloads: Sequence[Row], wait: float) -> Job:
        """Queue rows, waiting up to `wait` seconds for space (backpressure for streams)."""
        async with self._space:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._space.wait_for(lambda: not self._queued or self._queued + len(rows) <= self._max),
                    wait,
                )
            return self.submit_nowait(rows, payloads)

    async def _release(self, n: int) -> None:
        self._queued -= n
        async with self._space:
            self._space.notify_all()

    def _take_group(self, first: Job) -> list[Job]:
        jobs, total = [first], len(first.rows)
        while total < self._group and not self._queue.empty():
            nxt = self._queue.get_nowait()
            if nxt is None:  # shutdown marker: put it back for the other writers
                self._queue.put_nowait(None)
                break
            jobs.append(nxt)
            total += len(nxt.rows)
        return jobs

    async def _write_group(self, jobs: list[Job]) -> Written:
        rows = [r for j in jobs for r in j.rows]
        payloads = [p for j in jobs for p in j.payloads]
        for attempt in range(3):
            try:
                return await self._store.write(rows, payloads)
            except _RETRYABLE:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
            except asyncpg.exceptions.CheckViolationError:
                # "no partition of relation found for row": partitions vanished under us.
                self._store.forget_partitions()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            jobs = self._take_group(first)
            try:
                await self._write_jobs(jobs)
            finally:
                await self._release(sum(len(j.rows) for j in jobs))

    async def _write_jobs(self, jobs: list[Job]) -> None:
        """Write calls together and settle each one; when the group fails on its data, each call is
        written alone, so one caller's bad row fails that caller only."""
        try:
            inserted = await self._write_group(jobs)
            self._stored += inserted.count
        except CONNECTION_ERRORS as exc:
            log.warning("database unavailable, %d calls failed: %s", len(jobs), exc)
            for j in jobs:
                j.done.set_exception(Unavailable(f"database unavailable: {exc}"))
        except Exception as exc:
            if len(jobs) > 1:
                log.warning("a group of %d calls failed (%s); writing each call alone", len(jobs),
                            type(exc).__name__)
                for j in jobs:
                    await self._write_jobs([j])
                return
            if isinstance(exc, asyncpg.exceptions.DataError):  # validation missed a value PostgreSQL refuses
                log.warning("a call's records were refused by the database: %s", exc)
                jobs[0].done.set_exception(InvalidArgument(
                    f"records: a value could not be stored ({exc.sqlstate}: {exc})",
                    [FieldViolation("records", "a value the database refuses")]))
            else:
                jobs[0].done.set_exception(exc)  # INTERNAL, with an error id, for its caller only
        else:
            if inserted.count == sum(len(j.rows) for j in jobs):  # every row was new
                for j in jobs:
                    j.done.set_result(AllKeys(j.rows))
                return
            claimed: set[Key] = set(inserted.skipped)
            for j in jobs:  # a key sent by two calls of one group is accepted for the first
                mine = {(r[1], r[0]) for r in j.rows} - claimed
                claimed |= mine
                j.done.set_result(mine)

    async def close(self) -> None:
        """Write out everything queued, then stop the writer tasks."""
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
