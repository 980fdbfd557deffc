"""Exports: the filtered request log (CSV or NDJSON) and grouped metrics (CSV), in chunks.

The request log is read through a server-side cursor and written out in
chunks of about 256 KiB, so an export of any size holds one chunk in memory.
Text cells that a spreadsheet would run as a formula (starting with `=`, `+`,
`-`, `@`, tab or carriage return) are prefixed with `'`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_query import metrics
from llmmeter_query.aggregate import Aggregator, Grouping, Stats
from llmmeter_query.filters import Filter
from llmmeter_query.local_days import Calendar
from llmmeter_query.unpriced import unpriced_by_bucket
from llmmeter_query.window import Window

CHUNK_BYTES = 256 * 1024
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: Columns of a request export, in order.
EXPORT_COLUMNS = (
    "request_id", "start_time", "end_time", "status_code", "error_type", "error_message", "model",
    "response_model", "model_alias", "provider", "call_type", "user_name", "team", "account",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "latency_us", "ttft_us", "cost", "cache_hit", "retries", "streaming", "metadata",
    "total_tokens", "latency_ms", "ttft_ms",
)
#: Export columns that are not stored as such: derived in the query, in the units the rest of
#: the API uses (ms; tokens as the request log shows them). Added after the stored columns, so
#: scripts reading the earlier ones by position keep working.
_DERIVED = {
    "total_tokens": "input_tokens + output_tokens",
    "latency_ms": "latency_us / 1000.0::float8",
    "ttft_ms": "ttft_us / 1000.0::float8",
}


def neutralise(cell: Any) -> Any:
    """Make a text cell inert in spreadsheets; other values pass unchanged."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _csv_line(writer: Any, buf: io.StringIO, cells: Iterable[Any]) -> None:
    writer.writerow([neutralise(_plain(c)) if c is not None else "" for c in cells])


async def export_requests(pool: asyncpg.Pool, window: Window, filt: Filter, ndjson: bool,
                          ) -> AsyncIterator[tuple[bytes, int]]:
    """Yield (chunk, rows so far) of the filtered request log, oldest first."""
    params: list[Any] = [window.start, window.end]
    select = ", ".join(f"{_DERIVED[c]} AS {c}" if c in _DERIVED else c for c in EXPORT_COLUMNS)
    sql = (f"SELECT {select} FROM usage_records "
           f"WHERE start_time >= $1 AND start_time < $2 AND {filt.sql(params)} "
           "ORDER BY start_time, request_id")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not ndjson:
        writer.writerow(EXPORT_COLUMNS)
    rows = 0
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for rec in conn.cursor(sql, *params, prefetch=2000):
            if ndjson:
                obj = {k: _plain(rec[k]) for k in EXPORT_COLUMNS}
                obj["metadata"] = json.loads(rec["metadata"])
                buf.write(json.dumps(obj, separators=(",", ":")) + "\n")
            else:
                _csv_line(writer, buf, (rec[k] for k in EXPORT_COLUMNS))
            rows += 1
            if buf.tell() >= CHUNK_BYTES:
                yield buf.getvalue().encode(), rows
                buf.seek(0)
                buf.truncate()
    if buf.tell() or rows == 0:
        yield buf.getvalue().encode(), rows


#: Metric columns of an aggregate export: the first eleven as they always were, then every other
#: breakdown column (percentiles, cache and reasoning tokens, rates, ITL/TPOT and the counts
#: that say whether a TTFT/ITL/TPOT of 0 means "no data").
_FIRST_AGG_COLUMNS = (
    "request_count", "success_count", "failure_count", "input_tokens", "output_tokens",
    "total_tokens", "cost", "latency_avg_ms", "latency_p95_ms", "ttft_avg_ms", "ttft_p95_ms",
)
_AGG_COLUMNS = _FIRST_AGG_COLUMNS + tuple(
    c for c in metrics.BREAKDOWN_COLUMNS if c != "group" and c not in _FIRST_AGG_COLUMNS
) + tuple(metrics.units(Stats())) + ("unpriced_count",)


async def export_aggregates(aggregator: Aggregator, window: Window, filt: Filter,
                            groups: list[Grouping], calendar: Calendar | None,
                            ) -> AsyncIterator[tuple[bytes, int]]:
    """Yield CSV chunks of metrics per combination of `groups` (and per bucket, if given); a
    bucket's rpm and tpm are over its part inside the window."""
    if not groups:
        raise InvalidArgument("group_by: at least one grouping column is required",
                              [FieldViolation("group_by", "at least one")])
    sep = "\x1f"
    combined = Grouping(
        "+".join(g.name for g in groups),
        " || '\x1f' || ".join(f"({g.expr})::text" for g in groups),
        None if any(g.dims is None for g in groups) else frozenset().union(*(g.dims or () for g in groups)),
    )
    bucket = calendar.width if calendar is not None else None
    result = await aggregator.run(window, filt, combined, bucket, days=calendar.days if calendar else None)
    unpriced = await unpriced_by_bucket(aggregator.pool, window, filt, combined,
                                        calendar.starts(window) if calendar is not None else None)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [g.name for g in groups] + (["bucket"] if bucket is not None else []) + list(_AGG_COLUMNS)
    writer.writerow(header)
    rows = 0
    ordered = sorted(result.groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or window.start))
    for (key, tb), stats in ordered:
        span = window.overlap(tb, calendar.end(tb)) if tb is not None and calendar is not None else None
        row = metrics.breakdown_row("", stats, window.minutes if span is None else span.total_seconds() / 60)
        row["cost"] = metrics.cost(stats)  # exact, for chargeback
        row.update(metrics.units(stats))
        row["unpriced_count"] = unpriced.get((key, tb), 0)
        cells = [*key.split(sep), *([tb] if bucket is not None else []), *(row[c] for c in _AGG_COLUMNS)]
        _csv_line(writer, buf, cells)
        rows += 1
        if buf.tell() >= CHUNK_BYTES:
            yield buf.getvalue().encode(), rows
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode(), rows
