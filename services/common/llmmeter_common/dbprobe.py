"""A periodic, cheap database probe that tells the health service whether we can serve.

Every service answers from PostgreSQL, so "the process is up" is not "the
service works": while the database is unreachable, load balancers and
Kubernetes should route elsewhere. The probe runs `SELECT 1` with a short
timeout every couple of seconds on a connection of its own (not the pool, so
a pool saturated by heavy ingest never reads as an outage) and reports each
change of state to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)


class DatabaseProbe:
    """Runs `SELECT 1` every `interval` seconds; calls `on_change(ok)` when the answer changes."""

    def __init__(self, dsn: str, on_change: Callable[[bool], Awaitable[None]],
                 interval: float = 2.0, timeout: float = 1.0) -> None:
        self._dsn = dsn
        self._on_change = on_change
        self._interval = interval
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.ok = True
        """The last answer (the database was reachable when the service started)."""

    async def check(self) -> bool:
        """One probe: True when the database answered in time."""
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
                await self._conn.fetchval("SELECT 1")
            return True
        except Exception as exc:  # any failure (refused, timed out, broken protocol state) = unreachable
            log.debug("database probe failed: %r", exc)
            await self._drop_connection()
            return False

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # never wait on a connection that just failed

    async def _run(self) -> None:
        while True:
            ok = await self.check()
            if ok != self.ok:
                self.ok = ok
                log.warning("database %s; health is now %s",
                            "reachable again" if ok else "unreachable", "SERVING" if ok else "NOT_SERVING")
                await self._on_change(ok)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Start probing in the background."""
        self._task = asyncio.create_task(self._run(), name="database-probe")

    async def stop(self) -> None:
        """Stop probing and close the probe's connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop_connection()
