"""Deletes alert history past its retention, so the events and delivery tables stop growing.

Every state change, notification and delivery attempt is an `alert_events`
row, and every notification an `alert_outbox` row; a busy deployment writes
thousands a day. The leader (one replica at a time) deletes events and
finished deliveries older than the retention, in bounded batches so a large
backlog never holds long locks; pending deliveries are never deleted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from llmmeter_alerts.clock import Clock
from llmmeter_alerts.leader import Leader

log = logging.getLogger(__name__)

_BATCH = 10_000
_DELETE_EVENTS = ("DELETE FROM alert_events WHERE id IN "
                  "(SELECT id FROM alert_events WHERE at < $1 LIMIT $2)")
_DELETE_OUTBOX = ("DELETE FROM alert_outbox WHERE id IN (SELECT id FROM alert_outbox "
                  "WHERE status <> 'pending' AND created_at < $1 LIMIT $2)")


@dataclass(frozen=True)
class Pruned:
    """Rows deleted by one pass."""

    events: int
    deliveries: int


async def prune(pool: asyncpg.Pool, before: datetime, batch: int = _BATCH) -> Pruned:
    """Delete events and finished deliveries older than `before`, `batch` rows per statement."""
    counts = []
    for sql in (_DELETE_EVENTS, _DELETE_OUTBOX):
        total = 0
        while True:
            status = await pool.execute(sql, before, batch)
            n = int(status.split()[-1])  # "DELETE n"
            total += n
            if n < batch:
                break
        counts.append(total)
    return Pruned(*counts)


class HistoryPruner:
    """Runs `prune` on the leader at most once per `every`."""

    def __init__(self, pool: asyncpg.Pool, leader: Leader, clock: Clock, keep: timedelta,
                 every: timedelta = timedelta(hours=1)) -> None:
        self._pool = pool
        self._leader = leader
        self._clock = clock
        self._keep = keep
        self._every = every
        self._last: datetime | None = None

    async def tick(self) -> Pruned | None:
        """Prune if this replica leads and the last pass is `every` ago; None when it did not run."""
        now = self._clock.now()
        if self._last is not None and now - self._last < self._every:
            return None
        if not self._leader.is_leader:  # kept by the evaluator's checks, as the dispatcher reads it
            return None
        self._last = now
        done = await prune(self._pool, now - self._keep)
        if done.events or done.deliveries:
            log.info("alert history: deleted %d events and %d finished deliveries older than %s",
                     done.events, done.deliveries, now - self._keep)
        return done

    async def run(self, poll: float) -> None:
        """Tick until cancelled; a database error waits for the next poll."""
        while True:
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("alert history pruning: %s", exc)
            await asyncio.sleep(poll)
