"""Health of the storage's background work, for operators: metrics, log lines, a health status.

What keeps the rollups and retention going differs per flavour:

- TimescaleDB: background jobs (continuous aggregate refreshes, compression).
  A job is unhealthy when its last run failed, or when it is scheduled and its
  next start is more than `stale_seconds` in the past (the scheduler is not
  running it: no background worker left, scheduler stopped).
- PostgreSQL: the ingest service's rollup worker. It is unhealthy when the
  oldest row of the queue (`usage_rollup_pending.queued_at`) waited longer
  than `pending_max_age_seconds` (the worker stalled, or falls behind).

Every ingest replica checks every `interval` seconds and reports the result as
gauges (`llmmeter_storage_healthy`, `llmmeter_storage_jobs{state}`,
`llmmeter_rollup_pending_records`, `llmmeter_rollup_pending_oldest_seconds`),
one log line whenever the set of problems changes, and the gRPC health status
of the service name `storage` (NOT_SERVING while unhealthy). The service's own
health (its names and "") does not follow it: a stalled rollup must not take
ingest out of a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg
from grpc_health.v1 import health, health_pb2

from llmmeter_common.metrics import ServiceMetrics

log = logging.getLogger(__name__)

#: The gRPC health service name reporting storage health.
HEALTH_NAME = "storage"

JOBS_SQL = """
SELECT j.job_id, j.proc_name, coalesce(j.hypertable_name::text, '') AS relation,
       s.last_run_status, s.next_start,
       coalesce(s.last_run_status = 'Failed', false) AS failed,
       (j.scheduled AND s.next_start IS NOT NULL
        AND s.next_start < now() - make_interval(secs => $1)) AS stale
FROM timescaledb_information.jobs AS j
LEFT JOIN timescaledb_information.job_stats AS s USING (job_id)
WHERE j.scheduled
ORDER BY j.job_id
"""

PENDING_SQL = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(queued_at)), 0)::float8
FROM usage_rollup_pending
"""


@dataclass
class StorageStatus:
    """One check's findings."""

    problems: dict[str, str] = field(default_factory=dict)
    """What is wrong: a stable key (what changed, for the log) -> a line for operators."""
    failed_jobs: int = 0
    stale_jobs: int = 0
    pending_records: int = 0
    pending_oldest_seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.problems


async def check(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, flavor: str,
                stale_seconds: float, pending_max_age_seconds: float) -> StorageStatus:
    """What is wrong with the storage's background work now."""
    st = StorageStatus()
    if flavor == "timescale":
        for r in await conn.fetch(JOBS_SQL, stale_seconds):
            what = f"job {r['job_id']} {r['proc_name']}" + (f" on {r['relation']}" if r["relation"] else "")
            if r["failed"]:
                st.failed_jobs += 1
                st.problems[f"{r['job_id']}:failed"] = f"{what}: last run failed"
            elif r["stale"]:
                st.stale_jobs += 1
                st.problems[f"{r['job_id']}:stale"] = f"{what}: next start {r['next_start']} is overdue"
    row = await conn.fetchrow(PENDING_SQL)
    assert row is not None
    count, oldest = int(row[0]), float(row[1])
    st.pending_records, st.pending_oldest_seconds = count, oldest
    if count and oldest > pending_max_age_seconds:
        st.problems["rollup_queue"] = (f"rollup queue: {count} rows, the oldest queued {oldest:.0f} s ago "
                           f"(limit {pending_max_age_seconds:.0f} s): the rollup worker is stalled or behind")
    return st


class StorageHealth:
    """Checks periodically; publishes metrics, log lines on change and the `storage` health status."""

    def __init__(self, pool: asyncpg.Pool, flavor: str, metrics: ServiceMetrics,
                 health_servicer: health.aio.HealthServicer, interval: float,
                 stale_seconds: float, pending_max_age_seconds: float) -> None:
        self._pool = pool
        self._flavor = flavor
        self._health = health_servicer
        self._interval = interval
        self._stale = stale_seconds
        self._max_age = pending_max_age_seconds
        self._task: asyncio.Task[None] | None = None
        self.status = StorageStatus()
        """The last check's findings (healthy before the first check)."""
        self._reported: tuple[str, ...] | None = None
        self._healthy = metrics.gauge(
            "llmmeter_storage_healthy",
            "1 when the storage's background work is healthy (TimescaleDB jobs neither failed nor "
            "overdue; the rollup queue's oldest row younger than the limit), else 0.")
        jobs = metrics.gauge("llmmeter_storage_jobs",
                             "TimescaleDB background jobs whose last run failed, or overdue.", ["state"])
        self._failed, self._stale_jobs = jobs.labels("failed"), jobs.labels("stale")
        self._pending = metrics.gauge("llmmeter_rollup_pending_records",
                                      "Rows queued for the rollups (PostgreSQL flavour).")
        self._oldest = metrics.gauge("llmmeter_rollup_pending_oldest_seconds",
                                     "Age of the oldest row queued for the rollups (0 when empty).")
        self._healthy.set(1)

    async def start(self) -> None:
        """Report SERVING on `storage` until the first check says otherwise; check periodically."""
        await self._health.set(HEALTH_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._task = asyncio.create_task(self._loop())

    async def check_once(self) -> StorageStatus:
        """Check now and publish the result."""
        async with self._pool.acquire() as conn:
            st = await check(conn, self._flavor, self._stale, self._max_age)
        self.status = st
        self._healthy.set(1 if st.healthy else 0)
        self._failed.set(st.failed_jobs)
        self._stale_jobs.set(st.stale_jobs)
        self._pending.set(st.pending_records)
        self._oldest.set(st.pending_oldest_seconds)
        await self._health.set(HEALTH_NAME, health_pb2.HealthCheckResponse.SERVING if st.healthy
                               else health_pb2.HealthCheckResponse.NOT_SERVING)
        problems = tuple(sorted(st.problems))
        if problems != self._reported:
            if problems:
                log.warning("storage unhealthy: %s", "; ".join(st.problems.values()))
            elif self._reported:
                log.info("storage healthy again")
            self._reported = problems
        return st

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception as exc:  # the database may be away: its own probe reports that
                log.debug("storage health check failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
