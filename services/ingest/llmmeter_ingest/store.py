"""Writes batches of rows to the database in one transaction, one round of COPY.

The shape of a write: COPY the rows into session-local staging tables, then
one statement stores them all in `usage_records`, their payloads, and queues
them for the rollups (PostgreSQL flavour; TimescaleDB's continuous aggregates
need no queue). That statement runs in a savepoint and assumes no key is
stored yet, the usual case: plain inserts, no conflict handling. When a key
is stored already (a client's retry), the unique index refuses it, the
savepoint is rolled back, and a second statement inserts the rows skipping
the keys already stored, stores the payloads and queues exactly the rows it
inserted, and returns the keys it skipped, so callers can tell accepted from
duplicate. A notification names the transaction, the hours and the time range
it touched, for live tails. No per-row statements; a failure rolls the whole
batch back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from llmmeter_common.rollups import ORIGIN, PENDING_COLUMNS
from llmmeter_ingest.rows import PAYLOAD_COLUMNS, RECORD_COLUMNS, Row

log = logging.getLogger(__name__)

_STAGING = "llmmeter_staged_rows"
_STAGING_PAYLOADS = "llmmeter_staging_payloads"
#: A row written in the savepoint of the usual batch, for the id of the transaction its rows carry.
_MARKER = "llmmeter_commit_marker"
#: Numeric columns travel as text: asyncpg's binary numeric encoder costs ~1.8 µs a Decimal, str()
#: and PostgreSQL's numeric_in of the same digits give the same value and scale for far less.
_AS_TEXT = ("audio_seconds", "video_seconds", "cost")
_TEXT_AT = tuple(RECORD_COLUMNS.index(c) for c in _AS_TEXT)

_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS
    SELECT {", ".join(f"{c}::text AS {c}" if c in _AS_TEXT else c for c in RECORD_COLUMNS)}
    FROM usage_records WITH NO DATA;
CREATE TEMP TABLE IF NOT EXISTS {_STAGING_PAYLOADS}
    (LIKE usage_payloads INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS {_MARKER} (x integer) ON COMMIT DELETE ROWS;
"""

_COLS = ", ".join(RECORD_COLUMNS)
_STAGED = ", ".join(f"{c}::numeric" if c in _AS_TEXT else c for c in RECORD_COLUMNS)


def _staged(row: Row) -> list[object]:
    """A row as COPY sends it to the staging table (numerics as text)."""
    out = list(row)
    for i in _TEXT_AT:
        out[i] = str(out[i])
    return out

#: Channel on which every commit that stored records is announced: {"xid": 32-bit id of the
#: writing transaction (the rows' xmin), "hours": [hours since the epoch of their start_time],
#: "first_us"/"last_us": their earliest and latest start_time, microseconds since the epoch}.
NOTIFY_CHANNEL = "llmmeter_records"


#: What the announcement says of the rows, in one pass over them (aggregates: one row).
_SPAN = (f"count(*) AS n, array_agg(DISTINCT "
         f"extract(epoch FROM date_bin('1 hour', start_time, {ORIGIN}))::bigint / 3600) AS hours, "
         "(extract(epoch FROM min(start_time)) * 1000000)::bigint AS first_us, "
         "(extract(epoch FROM max(start_time)) * 1000000)::bigint AS last_us")


def _announce(span: str, mark: str) -> str:
    """The notification of a commit: the transaction id off the marker row `mark` wrote, and the
    hours and first and last start time of the `span` row (`_SPAN`)."""
    return (f"pg_notify('{NOTIFY_CHANNEL}', json_build_object("
            f"'xid', (SELECT xmin::text::bigint FROM {mark}), 'hours', {span}.hours, "
            f"'first_us', {span}.first_us, 'last_us', {span}.last_us)::text)")


def write_sql(queue_for_rollups: bool) -> str:
    """The batch statement; new rows are queued for the rollups only where no continuous
    aggregates maintain them (the PostgreSQL flavour).

    Keys already stored are left out before the insert, not only by its conflict clause: on
    TimescaleDB 2.17 an insert whose conflict lies in a compressed chunk returns no rows at all,
    the ones it did insert included, so those would be counted as duplicates and their payloads
    dropped. The clause still settles repeats within the batch and a concurrent writer's keys.

    It answers in one row whatever the batch's size (decoding a key per stored row cost the
    service more than the rest of the write): how many rows it stored, the keys of the staged
    rows it did not store (looked for only when fewer than the $1 staged rows were stored: the
    usual batch has none), and it announces the commit on NOTIFY_CHANNEL with the hours the new
    rows fall in.
    """
    pending = ", ".join(PENDING_COLUMNS)
    returned = ", ".join(dict.fromkeys(("start_time", "request_id", *PENDING_COLUMNS)))
    rollups = (f""",
pend AS (INSERT INTO usage_rollup_pending ({pending}) SELECT {pending} FROM ins)"""
               if queue_for_rollups else "")
    return f"""
WITH ins AS (
    INSERT INTO usage_records ({_COLS})
    SELECT {_STAGED} FROM {_STAGING} AS s
    WHERE NOT EXISTS (SELECT FROM usage_records AS r
                      WHERE r.start_time = s.start_time AND r.request_id = s.request_id)
    ORDER BY start_time, request_id
    ON CONFLICT (start_time, request_id) DO NOTHING
    RETURNING {returned}
),
pay AS (
    INSERT INTO usage_payloads ({", ".join(PAYLOAD_COLUMNS)})
    SELECT p.start_time, p.request_id, p.request, p.response
    FROM {_STAGING_PAYLOADS} AS p JOIN ins USING (start_time, request_id)
    ON CONFLICT (start_time, request_id) DO NOTHING
){rollups},
mark AS (INSERT INTO {_MARKER} VALUES (1) RETURNING xmin),
stored AS (SELECT {_SPAN} FROM ins),
skipped AS (
    SELECT s.request_id, s.start_time FROM {_STAGING} AS s
    WHERE NOT EXISTS (SELECT FROM ins WHERE ins.start_time = s.start_time AND ins.request_id = s.request_id)
)
SELECT stored.n,
       CASE WHEN stored.n < $1 THEN (SELECT array_agg(request_id) FROM skipped) END,
       CASE WHEN stored.n < $1 THEN (SELECT array_agg(start_time) FROM skipped) END,
       CASE WHEN stored.n > 0 THEN {_announce("stored", "mark")} END
FROM stored
"""


def fast_write_sql(queue_for_rollups: bool) -> str:
    """The batch when no key of it is stored yet, as two statements in one round trip: every
    staged row inserted as it is (no conflict check per row, no RETURNING to collect) and queued
    from the staging table; then the commit announced as `write_sql` announces it. A key already
    stored fails the first with a unique violation, and the caller takes `write_sql` instead.

    Run in a savepoint, the rows carry the savepoint's transaction id, not the top-level one (which
    `pg_current_xact_id` gives; and after a rollback to the savepoint, `write_sql` runs in a
    subtransaction of its own), so both statements read the id off a row they write to a session
    temp table (live tails fetch rows by it). Not off a stored record: on TimescaleDB a plan
    reaching a compressed chunk, where late records may land, cannot read `xmin`.
    """
    pending = ", ".join(PENDING_COLUMNS)
    queued = ", ".join(f"{c}::numeric" if c in _AS_TEXT else c for c in PENDING_COLUMNS)
    rollups = (f""",
pend AS (INSERT INTO usage_rollup_pending ({pending}) SELECT {queued} FROM {_STAGING})"""
               if queue_for_rollups else "")
    return f"""
WITH ins AS (
    INSERT INTO usage_records ({_COLS}) SELECT {_STAGED} FROM {_STAGING}
),
pay AS (
    INSERT INTO usage_payloads ({", ".join(PAYLOAD_COLUMNS)})
    SELECT start_time, request_id, request, response FROM {_STAGING_PAYLOADS}
){rollups}
SELECT;
WITH mark AS (INSERT INTO {_MARKER} VALUES (1) RETURNING xmin),
staged AS (SELECT {_SPAN} FROM {_STAGING})
SELECT {_announce("staged", "mark")} FROM staged
"""


@dataclass(frozen=True)
class Written:
    """What one write stored: `count` rows, every row of the call but those whose keys are in
    `skipped` (already stored) and repeats of a key within the call."""

    count: int
    skipped: frozenset[tuple[str, datetime]]

    def __len__(self) -> int:
        return self.count


def _day(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


class Store:
    """Batch writer over a connection pool; knows which partitions exist."""

    def __init__(self, pool: asyncpg.Pool, queue_for_rollups: bool) -> None:
        self._pool = pool
        self._sql = write_sql(queue_for_rollups)
        self._fast_sql = fast_write_sql(queue_for_rollups)
        self._days_ready: set[datetime] = set()

    async def ensure_partitions(self, start_times: Sequence[datetime]) -> None:
        """Create the day and month partitions these rows fall in, once per process (every day
        from the first to the last: a batch spans few)."""
        if not start_times:
            return
        first, last = _day(min(start_times)), _day(max(start_times))
        missing = {first + timedelta(days=i) for i in range((last - first).days + 1)} - self._days_ready
        if not missing:
            return
        lo, hi = min(missing), max(missing)
        await self._pool.execute("SELECT llmmeter_ensure_partitions($1, $2)", lo, hi)
        self._days_ready |= {lo + timedelta(days=i) for i in range((hi - lo).days + 1)}

    def forget_partitions(self) -> None:
        """Forget what partitions exist (after retention dropped some, or a failed insert)."""
        self._days_ready.clear()

    async def write(self, rows: Sequence[Row], payloads: Sequence[Row]) -> Written:
        """Store rows; a key already stored, or repeated in the call, is stored once. The commit
        is announced on NOTIFY_CHANNEL (delivered at commit: live tails learn of new rows
        without polling)."""
        await self.ensure_partitions([r[0] for r in rows])
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_CREATE_STAGING)
            await conn.copy_records_to_table(_STAGING, records=map(_staged, rows), columns=RECORD_COLUMNS)
            if payloads:
                await conn.copy_records_to_table(
                    _STAGING_PAYLOADS, records=payloads, columns=PAYLOAD_COLUMNS
                )
            try:
                async with conn.transaction():  # a savepoint: a key already stored rolls back only this
                    await conn.execute(self._fast_sql)
                return Written(len(rows), frozenset())
            except asyncpg.UniqueViolationError:
                pass
            row = await conn.fetchrow(self._sql, len(rows))
        assert row is not None  # aggregates' one row
        return Written(int(row[0]), frozenset(zip(row[1] or (), row[2] or (), strict=True)))

    async def apply_retention(self, raw_days: int, payload_days: int, minute_days: int,
                              rollup_days: int) -> list[str]:
        """Drop partitions past their retention; returns their names."""
        dropped = await self._pool.fetch(
            "SELECT * FROM llmmeter_apply_retention($1, $2, $3, $4)",
            timedelta(days=raw_days), timedelta(days=payload_days), timedelta(days=minute_days),
            timedelta(days=rollup_days),
        )
        if dropped:
            self.forget_partitions()
            log.info("retention dropped %d partitions", len(dropped))
        return [r[0] for r in dropped]
