"""Moves queued rows into the minute, hour and day rollups (PostgreSQL flavour).

Ingest only queues new rows in `usage_rollup_pending` (cheap, in the write
transaction); this worker takes large chunks of them, adds them to every
rollup and deletes them, all in one transaction, so a row is always counted
exactly once: in the rollups or in the queue, which queries read beside the
rollups. Large chunks are what makes it fast: live traffic shares minutes and
dimension combinations, so a chunk collapses into far fewer rollup rows than
it has records. An advisory lock lets one replica at a time do the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from llmmeter_common.rollups import rollup_ctes

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6C6C6D72  # "llmr"

MATERIALIZE_SQL = f"""
WITH batch AS (
    DELETE FROM usage_rollup_pending
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM usage_rollup_pending LIMIT $1))
    RETURNING *
),
{rollup_ctes("batch")}
SELECT count(*) FROM batch
"""


class RollupWorker:
    """Background task draining the pending queue into the rollups."""

    def __init__(self, pool: asyncpg.Pool, chunk_records: int, idle_seconds: float) -> None:
        self._pool = pool
        self._chunk = chunk_records
        self._idle = idle_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background until `stop`."""
        self._task = asyncio.create_task(self._loop(), name="rollup-worker")

    async def run_once(self) -> int:
        """Materialise one chunk; returns rows moved (0 if idle or another replica holds the lock)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
                return 0
            return int(await conn.fetchval(MATERIALIZE_SQL, self._chunk))

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
                await asyncio.sleep(self._idle)

    async def stop(self) -> None:
        """Stop; queued rows stay queued for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
