"""Live tail: new requests pushed to watchers as their transaction commits.

The ingest service announces each commit on the `llmmeter_records` channel
with its transaction id and the hours its rows fall in. One listening
connection per query service receives those; when anybody is watching, one
query fetches exactly that transaction's rows (by `xmin`, within those
hours, by literal time bounds so that only their partitions or chunks are
read) and hands each row to the watchers whose
filter it matches. The database is never polled, however many watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from llmmeter_common.errors import LlmmeterError, ResourceExhausted, Unavailable
from llmmeter_common.timeutil import from_us
from llmmeter_query.filter_syntax import FIELDS
from llmmeter_query.filters import Filter
from llmmeter_query.request_log import LOG_COLUMNS

log = logging.getLogger(__name__)

CHANNEL = "llmmeter_records"
#: What a tail reads of each new row: the log row, and every column a filter can test.
_COLUMNS = (*LOG_COLUMNS, *(c for c in dict.fromkeys(FIELDS.values()) if c not in LOG_COLUMNS), "metadata")
_HOUR = timedelta(hours=1)
_MICROSECOND = timedelta(microseconds=1)


def fetch_sql(hours: list[datetime], first: datetime | None = None, last: datetime | None = None) -> str:
    """The statement fetching one commit's rows: its transaction's (`xmin` = $1) within the hours it
    touched, each run of consecutive hours one range of literal bounds, the first range starting
    at the commit's earliest row (`first`) and the last ending after its latest (`last`): a commit
    of a few rows reads those few, not the hour around them.

    Literal bounds, not parameters: the planner then leaves out every partition or chunk outside
    them. On TimescaleDB that matters beyond speed, as a plan that includes a compressed chunk
    cannot read `xmin` at all. The bounds are datetimes made here from integers, never text from
    outside.
    """
    spans: list[list[datetime]] = []
    for h in sorted(set(hours)):
        if spans and spans[-1][1] == h:
            spans[-1][1] = h + _HOUR
        else:
            spans.append([h, h + _HOUR])
    if spans and first is not None and last is not None and first < spans[0][1] and last >= spans[-1][0]:
        spans[0][0] = max(spans[0][0], first)
        spans[-1][1] = min(spans[-1][1], last + _MICROSECOND)
    ranges = " OR ".join(f"(r.start_time >= TIMESTAMPTZ '{lo.isoformat()}' AND "
                         f"r.start_time < TIMESTAMPTZ '{hi.isoformat()}')" for lo, hi in spans)
    return (f"SELECT {', '.join(_COLUMNS)} FROM usage_records AS r "
            f"WHERE r.xmin::text::bigint = $1 AND ({ranges}) ORDER BY r.start_time")


class TailHub:
    """One LISTEN connection shared by every watcher of this process."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, queue_size: int = 10_000) -> None:
        self._dsn = dsn
        self._pool = pool
        self._queue_size = queue_size
        self._watchers: dict[asyncio.Queue[dict[str, Any] | LlmmeterError], Filter] = {}
        self._conn: asyncpg.Connection | None = None
        self._notes: asyncio.Queue[str] = asyncio.Queue()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Begin listening (reconnecting by itself if the database goes away)."""
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._deliver_loop())]

    async def _run(self) -> None:
        while True:
            try:
                lost = asyncio.Event()
                self._conn = await asyncpg.connect(self._dsn)
                self._conn.add_termination_listener(lambda _conn, ev=lost: ev.set())
                await self._conn.add_listener(CHANNEL, self._on_notify)
                self._ready.set()
                await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("tail listener lost the database: %s; reconnecting", exc)
            self._ready.clear()
            await asyncio.sleep(1.0)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        if self._watchers:
            self._notes.put_nowait(str(payload))

    async def _deliver_loop(self) -> None:
        """Fetch and fan out commits one at a time, in commit order."""
        while True:
            payload = await self._notes.get()
            try:
                await self._deliver(payload)
            except Exception:
                log.exception("tail delivery failed")

    async def _fetch_hour_by_hour(self, xid: int, hours: list[datetime],
                                  exc: Exception) -> list[asyncpg.Record]:
        """A commit's rows hour by hour, after its one fetch failed: the rows of an hour that
        cannot be read by transaction (on TimescaleDB, a late row written into a compressed
        chunk) are not tailed, and the log says so; every other hour's rows still are."""
        rows: list[asyncpg.Record] = []
        for hour in sorted(set(hours)):
            try:
                rows += await self._pool.fetch(fetch_sql([hour]), xid)
            except asyncpg.InternalServerError as hour_exc:
                log.warning("live tail skips the rows of transaction %d in the hour from %s: %s",
                            xid, hour.isoformat(), hour_exc)
        log.info("live tail fetched transaction %d hour by hour after: %s", xid, exc)
        return rows

    async def _deliver(self, payload: str) -> None:
        note = json.loads(payload)
        xid, hours = int(note["xid"]), [from_us(int(h) * 3_600_000_000) for h in note["hours"]]
        first, last = (from_us(int(note[k])) if note.get(k) is not None else None
                       for k in ("first_us", "last_us"))
        try:
            rows = await self._pool.fetch(fetch_sql(hours, first, last), xid)
        except asyncpg.InternalServerError as exc:
            rows = await self._fetch_hour_by_hour(xid, hours, exc)
        for i, rec in enumerate(rows):
            if i % 64 == 63:  # a commit of 10,000 rows for many watchers: let other calls run meanwhile
                await asyncio.sleep(0)
            row = dict(rec)
            row["metadata"] = json.loads(row["metadata"])
            for queue, filt in list(self._watchers.items()):
                if filt.matches(row):
                    if queue.qsize() >= self._queue_size:  # a watcher that does not read is dropped
                        self._watchers.pop(queue, None)
                        queue.put_nowait(ResourceExhausted(
                            f"live tail fell more than {self._queue_size} rows behind; start it again"))
                        continue
                    queue.put_nowait(row)

    async def subscribe(self, filt: Filter, ready_timeout: float = 10.0) -> Subscription:
        """Start receiving rows matching `filt` stored from now on (once listening)."""
        try:
            await asyncio.wait_for(self._ready.wait(), ready_timeout)
        except TimeoutError:
            raise Unavailable("live tail is not connected to the database; retry later") from None
        queue: asyncio.Queue[dict[str, Any] | LlmmeterError] = asyncio.Queue()
        self._watchers[queue] = filt
        return Subscription(self, queue)

    def _unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | LlmmeterError]) -> None:
        self._watchers.pop(queue, None)

    async def stop(self) -> None:
        """Stop listening and end every watch."""
        for queue in list(self._watchers):
            queue.put_nowait(Unavailable("the query service is shutting down; reconnect"))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()



class Subscription:
    """Rows for one watcher; iterate, and close when done."""

    def __init__(self, hub: TailHub, queue: asyncio.Queue[dict[str, Any] | LlmmeterError]) -> None:
        self._hub = hub
        self._queue = queue

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                row = await self._queue.get()
                if isinstance(row, LlmmeterError):
                    raise row  # the stream ends with a status saying why, never silently
                yield row
        finally:
            self.close()

    def close(self) -> None:
        """Stop receiving."""
        self._hub._unsubscribe(self._queue)
