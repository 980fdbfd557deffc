"""Adds a chunk of queued rows to every rollup level, aggregated in numpy (PostgreSQL flavour).

Why not in SQL: the same work as one statement (`rollups.rollup_ctes`) cost PostgreSQL about
90 µs per record, most of it in grouping sets and in building each histogram element with a
SQL function, and it was the largest part of the write path's cost. Here the database does one
cheap pass: a statement deletes the chunk from the queue and groups it by minute and every
dimension (one hash aggregate: the measures summed, and the histogram keys, computed by
`llmmeter_hist_key` so they are PostgreSQL's own, as 2-byte lists per group). From those
groups numpy derives every level's grouping sets (`rollups.ROLLUPS`), sums and histograms in
`sketch`'s format, and one `INSERT .. ON CONFLICT` per rollup table adds them, with the
conflict rule the SQL path uses (`rollups.conflict_sql`: measures added, histograms appended).
Everything runs in the caller's transaction, so a chunk is in the rollups or in the queue,
never both, and a refused chunk rolls back whole.

Exactness: whole counts are summed in int64 after a bound shows they cannot overflow (else as
Python ints, and a sum past bigint is refused as PostgreSQL would refuse it); numeric columns
as integers scaled to their largest scale, each sum written back with its terms' largest scale
(value and scale as SQL's sum gives them); double precision as float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import asyncpg
import numpy as np

from llmmeter_common import sketch
from llmmeter_common.rollups import (
    DIMENSIONS,
    HISTOGRAMS,
    MEASURES,
    ORIGIN,
    ROLLUPS,
    Rollup,
    conflict_sql,
    mask_of,
    rollup_columns,
)

_BIGINT = 1 << 63
_SECONDS = {"1 minute": 60, "1 hour": 3600, "1 day": 86400}
#: A histogram is counted with bincount when its (group, key) cells are at most this many plus
#: four per element (the scan of the counts stays cheap), else with a sort.
_DENSE_CELLS = 1 << 16
_DIMS = ", ".join(DIMENSIONS)


def group_sql(source: str) -> str:
    """The one pass over the rows of CTE `source`: per minute and dimension combination, the
    measures summed (numeric ones as text: asyncpg's Decimal codec is the slow one), the
    histogram keys (NULL values left out; array_agg costs the database less
    than packing bytes), and the first and last start time."""
    sums = ", ".join(f"{m.summed(m.raw_expr)}" + ("::text" if m.sql_type == "numeric" else "")
                     for m in MEASURES)
    keys = ", ".join(f"array_agg(llmmeter_hist_key({col})::smallint) FILTER (WHERE {col} IS NOT NULL)"
                     for _, col in HISTOGRAMS)
    return f"""SELECT date_bin('1 minute', start_time, {ORIGIN}), {_DIMS}, {sums}, {keys},
    min(start_time), max(start_time)
FROM {source} GROUP BY 1, {_DIMS}"""


def _sql_type(column: str) -> str:
    if column == "bucket":
        return "timestamptz"
    if column == "dims_mask":
        return "smallint"
    if column in DIMENSIONS:
        return "integer" if column == "status_code" else "text"
    if column.endswith("_hist"):
        return "bytea"
    return next(m.sql_type for m in MEASURES if m.column == column)


#: Where a chunk's rollup rows are COPYed before the upserts (numeric columns as text, `level`
#: the index in ROLLUPS): COPY encodes a value for a fraction of what an array parameter costs.
#: Emptied before each chunk: isolating a refused chunk adds several in one transaction.
_STAGING = "llmmeter_rollup_rows"
_COLUMNS = rollup_columns()
_CREATE_STAGING = f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS
    SELECT 0::smallint AS level, {", ".join(
        f"{c}::text AS {c}" if _sql_type(c) == "numeric" else c for c in _COLUMNS)}
    FROM usage_1m WITH NO DATA;
TRUNCATE {_STAGING}"""


def upsert_sql(level: int) -> str:
    """Add the staged rows of rollup level `level` to its table, in key order (cheaper index
    insertion, and the lock order the SQL path used)."""
    r = ROLLUPS[level]
    selected = ", ".join(f"{c}::numeric" if _sql_type(c) == "numeric" else c for c in _COLUMNS)
    key = ", ".join(("dims_mask", "bucket", *DIMENSIONS))
    return f"""INSERT INTO {r.table} ({", ".join(_COLUMNS)})
SELECT {selected} FROM {_STAGING} WHERE level = {level} ORDER BY {key}
ON CONFLICT ({key}) DO UPDATE SET {conflict_sql(r.table)}"""


UPSERT_SQL: tuple[str, ...] = tuple(upsert_sql(i) for i in range(len(ROLLUPS)))


class _Refused(asyncpg.exceptions.NumericValueOutOfRangeError):
    """A sum past what its column holds, refused here as PostgreSQL would (SQLSTATE 22003)."""


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Dense integer codes of `values` and the distinct values they index."""
    index = {v: i for i, v in enumerate(dict.fromkeys(values))}
    return np.fromiter(map(index.__getitem__, values), np.int64, len(values)), list(index)


def _group_ids(parts: list[tuple[np.ndarray, int]], n: int) -> tuple[np.ndarray, int]:
    """Dense group ids 0..G-1 of rows by the combination of the (codes, cardinality) parts."""
    g, card = np.zeros(n, np.int64), 1
    for codes, size in parts:
        if card * size >= 1 << 62:
            uniq, g = np.unique(g, return_inverse=True)
            card = len(uniq)
        g, card = g * size + codes, card * size
    uniq, inv = np.unique(g, return_inverse=True)
    return inv.reshape(-1), len(uniq)


#: Positions in MEASURES of the whole counts, the numerics and the double precision sums.
_KINDS = {kind: [i for i, m in enumerate(MEASURES) if m.sql_type == kind]
          for kind in ("bigint", "numeric", "double precision")}


@dataclass
class Groups:
    """The minute groups of a chunk, as the group statement returned them, column-wise."""

    n: int
    minute: np.ndarray  # epoch seconds
    dims: list[tuple[np.ndarray, list[Any]]]  # per dimension: codes, distinct values
    measures: dict[str, Any]  # per kind (_KINDS): whole counts and doubles as 2-D arrays, numerics
    # as one `_Numeric` per column
    hist: list[tuple[np.ndarray, np.ndarray]]  # per histogram: keys, owning group
    records: int
    lo: datetime | None
    hi: datetime | None


def parse(rows: Sequence[Any]) -> Groups:
    """Column arrays of the group statement's rows."""
    n = len(rows)
    if not n:
        return Groups(0, np.zeros(0, np.int64), [], {}, [], 0, None, None)
    cols = list(zip(*rows, strict=True))
    epoch = {b: int(b.timestamp()) for b in set(cols[0])}
    minute = np.fromiter(map(epoch.__getitem__, cols[0]), np.int64, n)
    dims = [_codes(cols[1 + i]) for i in range(len(DIMENSIONS))]
    base = 1 + len(DIMENSIONS)
    measures = {"bigint": _int64(np.array([cols[base + i] for i in _KINDS["bigint"]], np.int64).T),
                "numeric": [_numeric(cols[base + i]) for i in _KINDS["numeric"]],
                "double precision": np.array([cols[base + i] for i in _KINDS["double precision"]],
                                             np.float64).T.copy()}
    hist = []
    for j in range(len(HISTOGRAMS)):
        lists = [k or () for k in cols[base + len(MEASURES) + j]]
        lengths = np.fromiter(map(len, lists), np.int64, n)
        keys = np.fromiter(chain.from_iterable(lists), np.int64, int(lengths.sum()))
        hist.append((keys, np.repeat(np.arange(n), lengths)))
    records = sum(cols[base + MEASURES.index(next(m for m in MEASURES if m.column == "request_count"))])
    return Groups(n, minute, dims, measures, hist, records, min(cols[-2]), max(cols[-1]))


def _int64(cols: np.ndarray) -> np.ndarray:
    """The whole-count columns (each value a bigint) as they are when no sum of them can overflow
    (the usual case), else as Python ints, whose sums `_sums` checks."""
    bound = max(abs(int(cols.max(initial=0))), abs(int(cols.min(initial=0))))
    return cols.copy() if bound * len(cols) < _BIGINT else cols.astype(object)


def _sums(kind: str, cols: Any, order: np.ndarray, starts: np.ndarray) -> list[list[Any]]:
    """Per-group sums of each column of one kind (rows grouped by `order`, groups starting at
    `starts`); numeric ones as text (`_numeric_sums`)."""
    if kind == "numeric":
        return [_numeric_sums(col, order, starts) for col in cols]
    sums = np.add.reduceat(cols[order], starts, axis=0)
    if kind == "bigint" and sums.dtype == object and any(not -_BIGINT <= v < _BIGINT for v in sums.flat):
        raise _Refused("bigint out of range (a rollup sum)")
    if sums.dtype == np.float64 and not np.isfinite(sums).all():
        raise _Refused("value out of range: overflow (a rollup sum)")
    return sums.T.tolist()  # type: ignore[no-any-return]


@dataclass
class _Numeric:
    """A numeric column, exactly: each value times 10**`scale` (the column's largest scale) as an
    integer, and each value's own scale (a sum's scale is its terms' largest, as in SQL)."""

    scaled: np.ndarray  # int64, or Python ints when a sum could overflow int64
    scales: np.ndarray
    scale: int


def _numeric(texts: Sequence[str]) -> _Numeric | None:
    """A numeric column from PostgreSQL's text of its values (plain digits, no exponent); None
    when every value is '0' (media seconds, mostly: nothing to add)."""
    if all(t == "0" for t in texts):
        return None
    scales = [len(t) - 1 - t.find(".") if "." in t else 0 for t in texts]
    top = max(scales)
    scaled = [int(t.replace(".", "")) * 10 ** (top - sc) for t, sc in zip(texts, scales, strict=True)]
    return _Numeric(_int64(np.array(scaled, dtype=object)), np.array(scales, np.int64), top)


def _numeric_sums(col: _Numeric | None, order: np.ndarray, starts: np.ndarray) -> list[str]:
    """Per-group sums of a numeric column, as the text of a numeric with the group's scale."""
    if col is None:
        return ["0"] * len(starts)
    sums = np.add.reduceat(col.scaled[order], starts).tolist()
    scales = np.maximum.reduceat(col.scales[order], starts).tolist()
    return [_decimal_text(v // 10 ** (col.scale - sc), sc) for v, sc in zip(sums, scales, strict=True)]


def _decimal_text(units: int, scale: int) -> str:
    """The text of the number units * 10**-scale, `scale` digits after the point."""
    digits = str(abs(units)).rjust(scale + 1, "0")
    sign = "-" if units < 0 else ""
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}" if scale else f"{sign}{digits}"


def _histograms(keys: np.ndarray, owner: np.ndarray, gid: np.ndarray, ngroups: int) -> list[bytes]:
    """Each group's histogram in `sketch`'s format, keys ascending, large counts split."""
    if not len(keys):
        return [b""] * ngroups
    kmin = int(keys.min())
    span = int(keys.max()) - kmin + 1
    cell = gid[owner] * span + (keys - kmin)
    if ngroups * span <= 4 * len(keys) + _DENSE_CELLS:
        counts = np.bincount(cell, minlength=ngroups * span)
        cells = np.flatnonzero(counts)
        counts = counts[cells]
    else:
        cells, counts = np.unique(cell, return_counts=True)
    group, key = np.divmod(cells, span)
    return encode(group, key + kmin, counts, ngroups)


def encode(group: np.ndarray, key: np.ndarray, counts: np.ndarray, ngroups: int) -> list[bytes]:
    """Histograms 0..ngroups-1 in `sketch`'s format from (group, key, count) triples sorted by
    group: one element per key, a count above COUNT_MAX split as `llmmeter_hist_elems` splits it
    (full elements first), a zero count kept as one element."""
    if len(counts) and int(counts.max()) > sketch.COUNT_MAX:
        parts = np.maximum(-(-counts // sketch.COUNT_MAX), 1)
        first = np.repeat(np.cumsum(parts) - parts, parts)
        nth = np.arange(int(parts.sum())) - first
        counts = np.minimum(np.repeat(counts, parts) - nth * sketch.COUNT_MAX, sketch.COUNT_MAX)
        group, key = np.repeat(group, parts), np.repeat(key, parts)
    elems = ((key << sketch.COUNT_BITS) | counts).astype(">u4").tobytes()
    bounds = (np.searchsorted(group, np.arange(ngroups + 1)) * sketch.ELEM_BYTES).tolist()
    return [elems[bounds[i]:bounds[i + 1]] for i in range(ngroups)]


def level_rows(g: Groups, r: Rollup) -> list[list[Any]]:
    """The rows of every grouping set of rollup `r`, one list per column (`rollup_columns`)."""
    width = _SECONDS[r.width]
    buckets, bcodes = np.unique((g.minute // width) * width, return_inverse=True)
    cols: list[list[Any]] = [[] for _ in rollup_columns()]
    for gset in r.sets:
        parts = [(bcodes.reshape(-1), len(buckets))]
        parts += [(g.dims[DIMENSIONS.index(d)][0], len(g.dims[DIMENSIONS.index(d)][1])) for d in gset]
        gid, ngroups = _group_ids(parts, g.n)
        order = np.argsort(gid, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(gid[order]) != 0])
        first = order[starts]
        when = [datetime.fromtimestamp(s, UTC) for s in buckets[bcodes[first]].tolist()]
        values: list[list[Any]] = [when, [mask_of(gset)] * ngroups]
        for i, d in enumerate(DIMENSIONS):
            codes, distinct = g.dims[i]
            values.append([distinct[c] for c in codes[first].tolist()] if d in gset
                          else [0 if d == "status_code" else ""] * ngroups)
        measures: list[list[Any]] = [[]] * len(MEASURES)
        for kind, idx in _KINDS.items():
            sums = _sums(kind, g.measures[kind], order, starts)
            for i, summed in zip(idx, sums, strict=True):
                measures[i] = summed
        values += measures
        values += [_histograms(keys, owner, gid, ngroups) for keys, owner in g.hist]
        for out, v in zip(cols, values, strict=True):
            out += v
    return cols


async def add_groups(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
                     rows: Sequence[Any]) -> tuple[int, datetime | None, datetime | None]:
    """Add the group statement's rows to every rollup level; returns (records, first, last)."""
    g = parse(rows)
    if g.n:
        staged: list[Any] = []
        for level, r in enumerate(ROLLUPS):
            cols = level_rows(g, r)
            staged += zip(itertools.repeat(level, len(cols[0])), *cols, strict=False)
        await conn.execute(_CREATE_STAGING)
        await conn.copy_records_to_table(_STAGING, records=staged, columns=("level", *_COLUMNS))
        for sql in UPSERT_SQL:
            await conn.execute(sql)
    return g.records, g.lo, g.hi
