"""Leadership among replicas: the holder of a PostgreSQL advisory lock evaluates and notifies.

The lock lives on a dedicated connection, so it is released when the holder
stops or dies (its session ends) and another replica takes over at its next
check. Advisory locks are per database, like everything else of a deployment.
"""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger(__name__)

LOCK_KEY = 0x6C6C6D61  # "llma": the alerts evaluator


class Leader:
    """Tries to become, and checks it still is, the one evaluating replica."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self.is_leader = False

    async def check(self) -> bool:
        """Whether this replica leads now (acquiring the lock when free)."""
        try:
            if self._conn is None or self._conn.is_closed():
                self.is_leader = False
                self._conn = await asyncpg.connect(self._dsn, timeout=5)
            if self.is_leader:
                await self._conn.fetchval("SELECT 1", timeout=5)
            else:
                self.is_leader = bool(await self._conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", LOCK_KEY, timeout=5))
                if self.is_leader:
                    log.info("this replica now evaluates alert rules (leader)")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if self.is_leader:
                log.warning("lost leadership: %s", exc)
            self.is_leader = False
            await self.release()
        return self.is_leader

    async def release(self) -> None:
        """Give up leadership (closing the session releases the lock)."""
        self.is_leader = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()
