"""Moves queued rows into the minute, hour and day rollups (PostgreSQL flavour).

Ingest only queues new rows in `usage_rollup_pending` (cheap, in the write
transaction); this worker takes large chunks of them, adds them to every
rollup and deletes them, all in one transaction, so a row is always counted
exactly once: in the rollups or in the queue, which queries read beside the
rollups. Large chunks are what makes it fast: live traffic shares minutes and
dimension combinations, so a chunk collapses into far fewer rollup rows than
it has records. An advisory lock lets one replica at a time do the work. The
aggregation itself is `rollup_agg`'s (one grouping pass in SQL, the rollup levels
and grouping sets in numpy) and so is the compaction (`rollup_compact`); the
same work as SQL (`MATERIALIZE_SQL`, `COMPACT_SQL`) stays as their definition,
which the tests compare them with. Between chunks the worker rests while ingest
goes on (a chunk's cost is mostly per rollup row, so bigger chunks cost less per
record) and takes what ingest stored as soon as ingest goes quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from llmmeter_common.rollups import PENDING_COLUMNS, ROLLUPS, compact_sql, rollup_ctes
from llmmeter_common.timeutil import floor_to
from llmmeter_ingest.rollup_agg import add_groups, group_sql
from llmmeter_ingest.rollup_compact import compact_level

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6C6C6D72  # "llmr"
#: How often a resting worker looks whether ingest went quiet.
_POLL_SECONDS = 0.05

_TAKE_CHUNK = """batch AS (
    DELETE FROM usage_rollup_pending
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM usage_rollup_pending LIMIT $1))
    RETURNING *
)"""
#: Takes up to $1 queued rows off the queue, grouped by minute and dimensions for `rollup_agg`.
TAKE_SQL = f"WITH {_TAKE_CHUNK}\n{group_sql('batch')}"
#: The same for an explicit list of queued rows (isolating a chunk that failed).
TAKE_ROWS_SQL = f"""WITH batch AS (
    DELETE FROM usage_rollup_pending WHERE ctid = ANY($1::tid[]) RETURNING *
)
{group_sql('batch')}"""

#: The same move as one SQL statement (the rollups' SQL definition, `rollups.rollup_ctes`): what
#: the worker did before `rollup_agg`, kept as the reference the tests compare the numpy path
#: with, and for the query benchmark's loader.
MATERIALIZE_SQL = f"""
WITH {_TAKE_CHUNK},
{rollup_ctes("batch")}
SELECT count(*), min(start_time), max(start_time) FROM batch
"""

_QUEUED = ", ".join((*PENDING_COLUMNS, "queued_at"))
QUARANTINE_SQL = f"""
WITH q AS (DELETE FROM usage_rollup_pending WHERE ctid = $1 RETURNING *)
INSERT INTO usage_rollup_quarantine ({_QUEUED}, quarantined_at, reason)
SELECT {_QUEUED}, now(), $2 FROM q
"""

Moved = tuple[int, datetime | None, datetime | None]
#: What the rollups refuse because of a row's values (not the database being away).
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)

#: Compaction as SQL (`rollups.compact_sql`): the reference `rollup_compact` is tested against.
COMPACT_SQL: tuple[str, ...] = tuple(compact_sql(r) for r in ROLLUPS)

#: Hour and day buckets get a final compaction this long after they end (stragglers are in).
CLOSE_GRACE = timedelta(minutes=5)
#: At that final compaction, arrays this short are left alone (rewriting them gains nothing).
CLOSE_COMPACT_OVER = 64
_CLOSING = {r.table: (r, timedelta(hours=1) if r.width == "1 hour" else timedelta(days=1))
            for r in ROLLUPS if r.width in ("1 hour", "1 day")}


async def compact(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, lo: datetime, hi: datetime,
                  longer_than: int) -> int:
    """Fold repeated histogram keys in the rollup rows of start times [lo, hi] whose arrays grew
    past `longer_than` (`rollup_compact`); the caller holds the worker's lock. Returns rows
    rewritten."""
    return sum([await compact_level(conn, r, lo, hi, longer_than) for r in ROLLUPS])


class RollupWorker:
    """Background task draining the pending queue into the rollups."""

    def __init__(self, pool: asyncpg.Pool, chunk_records: int, idle_seconds: float,
                 compact_over: int = 4096, on_quarantine: Callable[[int], None] | None = None,
                 activity: Callable[[], tuple[int, bool]] | None = None) -> None:
        """`on_quarantine(n)` hears of rows set aside because the rollups refused them;
        `activity()` (the writer's) says how many rows ingest stored so far and whether it is quiet."""
        self._pool = pool
        self._activity = activity
        self._taken_after = 0
        self._on_quarantine = on_quarantine
        self._chunk = chunk_records
        self._idle = idle_seconds
        self._compact_over = compact_over
        self._closed: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background until `stop`."""
        self._task = asyncio.create_task(self._loop(), name="rollup-worker")

    async def run_once(self) -> int:
        """Materialise one chunk; returns rows moved (0 if idle or another replica holds the lock)."""
        if self._activity is not None:
            self._taken_after = self._activity()[0]
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
                return 0
            try:
                async with conn.transaction():  # a savepoint: a refused chunk is taken apart below
                    moved, lo, hi = await add_groups(conn, await conn.fetch(TAKE_SQL, self._chunk))
            except _REFUSED as exc:
                log.warning("rollup worker: a chunk was refused (%s); isolating its rows", exc)
                ctids = [r[0] for r in await conn.fetch(
                    "SELECT ctid FROM usage_rollup_pending LIMIT $1", self._chunk)]
                moved, lo, hi = await self._isolate(conn, ctids)
            if moved and lo is not None and hi is not None:
                await compact(conn, lo, hi, self._compact_over)
            await self._close_buckets(conn, datetime.now(UTC))
            return int(moved)

    async def _isolate(self, conn: asyncpg.pool.PoolConnectionProxy, ctids: list[Any]) -> Moved:
        """Add these queued rows to the rollups, halving what is refused until the rows that cannot
        be added are found; those go to `usage_rollup_quarantine` (logged and counted)."""
        try:
            async with conn.transaction():
                return await add_groups(conn, await conn.fetch(TAKE_ROWS_SQL, ctids))
        except _REFUSED as exc:
            if len(ctids) == 1:
                await conn.execute(QUARANTINE_SQL, ctids[0], f"{exc.sqlstate}: {exc}")
                log.error("rollup worker: quarantined a queued row the rollups refuse: %s", exc)
                if self._on_quarantine is not None:
                    self._on_quarantine(1)
                return 0, None, None
        half = len(ctids) // 2
        parts = [await self._isolate(conn, ctids[:half]), await self._isolate(conn, ctids[half:])]
        times = [t for _, lo, hi in parts for t in (lo, hi) if t is not None]
        return sum(p[0] for p in parts), min(times, default=None), max(times, default=None)

    async def _close_buckets(self, conn: asyncpg.pool.PoolConnectionProxy, now: datetime) -> None:
        """Compact the hour and day buckets that closed since the last call, once each.

        A live bucket's rows are appended to by every chunk and compacted only when their
        histograms pass `compact_over` elements, so they hold repeated keys; once the bucket is
        over, one pass leaves the rows that month-long queries read as small as they can be, in
        key order (read without merging). After a restart the last closed bucket is passed over
        again, which rewrites its rows once more and changes nothing.
        """
        for table, (r, width) in _CLOSING.items():
            closed = floor_to(now - CLOSE_GRACE, width)
            since = self._closed.get(table, closed - width)
            if closed > since:
                await compact_level(conn, r, since, closed - timedelta(microseconds=1), CLOSE_COMPACT_OVER)
                self._closed[table] = closed

    async def drain(self) -> None:
        """Materialise until the queue is empty (tests, benchmarks, shutdown)."""
        while await self.pending() > 0:
            if await self.run_once() == 0:
                await asyncio.sleep(0.05)

    async def pending(self) -> int:
        """Rows waiting for the rollups."""
        return int(await self._pool.fetchval("SELECT count(*) FROM usage_rollup_pending"))

    async def _loop(self) -> None:
        while True:
            try:
                moved = await self.run_once()
            except Exception as exc:  # the database may be away; try again later
                log.warning("rollup worker: %s", exc)
                moved = 0
            if moved < self._chunk:  # caught up: let rows gather into a bigger chunk
                await self._rest()

    async def _rest(self) -> None:
        """Wait `idle` seconds for queued rows to gather into a bigger chunk (a chunk's cost is
        mostly per rollup row, and rollup rows grow much slower than the records behind them),
        but only while ingest goes on: once it is quiet with rows stored since this chunk was
        taken, they are taken at once, so a burst is in the rollups right after it ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._idle
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(_POLL_SECONDS, left))
            if self._activity is not None:
                stored, quiet = self._activity()
                if quiet and stored > self._taken_after:
                    return

    async def stop(self) -> None:
        """Stop; queued rows stay queued for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
