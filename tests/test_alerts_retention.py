"""Alert history past its retention is deleted by the leader; recent history and pending deliveries stay."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from llmmeter_alerts.leader import Leader
from llmmeter_alerts.retention import HistoryPruner, prune


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t


async def _history(pool, now: datetime) -> None:
    ages = [timedelta(days=d) for d in (200, 120, 91, 89, 1)]
    for i, age in enumerate(ages):
        await pool.execute(
            "INSERT INTO alert_events (at, kind, rule_name, grp, message) "
            "VALUES ($1, 'state_change', 'r', '', $2)",
            now - age, f"e{i}")
        for status in ("delivered", "failed", "pending"):
            await pool.execute(
                "INSERT INTO alert_outbox (created_at, rule_name, grp, channel, payload, status, "
                "next_attempt_at) VALUES ($1, 'r', '', $2, '{}', $3, $1)", now - age, json.dumps({"log": {}}),
                status)


async def test_prune_deletes_only_old_events_and_finished_deliveries(db_pool) -> None:
    now = datetime.now(UTC)
    await _history(db_pool, now)
    done = await prune(db_pool, now - timedelta(days=90), batch=2)  # several batches
    assert (done.events, done.deliveries) == (3, 6)
    assert [r["message"] for r in await db_pool.fetch("SELECT message FROM alert_events ORDER BY id")] == [
        "e3", "e4"]
    left = await db_pool.fetch("SELECT status, created_at FROM alert_outbox")
    assert sorted(r["status"] for r in left if r["created_at"] < now - timedelta(days=90)) == ["pending"] * 3
    assert len(left) == 3 + 2 * 3


async def test_pruner_runs_on_the_leader_once_per_interval(db_pool, db_url) -> None:
    now = datetime.now(UTC)
    await _history(db_pool, now)
    leader, clock = Leader(db_url), _Clock(now)
    pruner = HistoryPruner(db_pool, leader, clock, keep=timedelta(days=90), every=timedelta(hours=1))
    try:
        assert await pruner.tick() is None  # not (yet) the leader: nothing deleted
        assert await db_pool.fetchval("SELECT count(*) FROM alert_events") == 5
        assert await leader.check()
        first = await pruner.tick()
        assert first is not None and (first.events, first.deliveries) == (3, 6)
        clock.t = now + timedelta(minutes=30)
        assert await pruner.tick() is None  # within the hour: not again
        clock.t = now + timedelta(days=2)  # e3 (89 days old) is now past the 90 days
        assert await pruner.tick() is not None
        assert await db_pool.fetchval("SELECT count(*) FROM alert_events") == 1
        assert await pruner.tick() is None  # and not again within the hour after that
    finally:
        await leader.release()
