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
as Decimal in a context wide enough never to round; double precision as float64.
"""

from __future__ import annotations

import decimal
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

#: Decimal sums never round (PostgreSQL's numeric does not): additions are exact at this precision.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
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


def upsert_sql(r: Rollup) -> str:
    """Add the rows given as one array per column (`rollup_columns` order; numeric ones as text)
    to rollup `r`, in key order (cheaper index insertion, and the lock order the SQL path used)."""
    cols = rollup_columns()
    types = [_sql_type(c) for c in cols]
    arrays = ", ".join(f"${i}::{'text' if t == 'numeric' else t}[]" for i, t in enumerate(types, 1))
    selected = ", ".join(f"{c}::numeric" if t == "numeric" else c for c, t in zip(cols, types, strict=True))
    key = ", ".join(("dims_mask", "bucket", *DIMENSIONS))
    return f"""INSERT INTO {r.table} ({", ".join(cols)})
SELECT {selected} FROM unnest({arrays}) AS u({", ".join(cols)}) ORDER BY {key}
ON CONFLICT ({key}) DO UPDATE SET {conflict_sql(r.table)}"""


UPSERT_SQL: dict[str, str] = {r.table: upsert_sql(r) for r in ROLLUPS}


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
    measures: dict[str, np.ndarray]  # per kind (_KINDS), one column per measure of the kind
    hist: list[tuple[np.ndarray, np.ndarray]]  # per histogram: keys, owning group
    zero_numerics: list[bool]  # per numeric measure: only '0'?
    records: int
    lo: datetime | None
    hi: datetime | None


def parse(rows: Sequence[Any]) -> Groups:
    """Column arrays of the group statement's rows."""
    n = len(rows)
    if not n:
        return Groups(0, np.zeros(0, np.int64), [], {}, [], [], 0, None, None)
    cols = list(zip(*rows, strict=True))
    epoch = {b: int(b.timestamp()) for b in set(cols[0])}
    minute = np.fromiter(map(epoch.__getitem__, cols[0]), np.int64, n)
    dims = [_codes(cols[1 + i]) for i in range(len(DIMENSIONS))]
    base = 1 + len(DIMENSIONS)
    measures = {"bigint": _int64(np.array([cols[base + i] for i in _KINDS["bigint"]], np.int64).T),
                "numeric": np.array([cols[base + i] for i in _KINDS["numeric"]], dtype=object).T.copy(),
                "double precision": np.array([cols[base + i] for i in _KINDS["double precision"]],
                                             np.float64).T.copy()}
    hist = []
    for j in range(len(HISTOGRAMS)):
        lists = [k or () for k in cols[base + len(MEASURES) + j]]
        lengths = np.fromiter(map(len, lists), np.int64, n)
        keys = np.fromiter(chain.from_iterable(lists), np.int64, int(lengths.sum()))
        hist.append((keys, np.repeat(np.arange(n), lengths)))
    records = sum(cols[base + MEASURES.index(next(m for m in MEASURES if m.column == "request_count"))])
    measures["numeric"], zeros = _numerics(measures["numeric"])
    return Groups(n, minute, dims, measures, hist, zeros, records, min(cols[-2]), max(cols[-1]))


def _int64(cols: np.ndarray) -> np.ndarray:
    """The whole-count columns (each value a bigint) as they are when no sum of them can overflow
    (the usual case), else as Python ints, whose sums `_sums` checks."""
    bound = max(abs(int(cols.max(initial=0))), abs(int(cols.min(initial=0))))
    return cols.copy() if bound * len(cols) < _BIGINT else cols.astype(object)


def _sums(kind: str, cols: np.ndarray, order: np.ndarray, starts: np.ndarray,
          zeros: Sequence[bool] = ()) -> list[list[Any]]:
    """Per-group sums of each column of one kind (rows grouped by `order`, groups starting at
    `starts`); a numeric column of plain zeros (`zeros`: media seconds, mostly) sums to zeros
    without adding Decimals."""
    if kind == "numeric":
        return [["0"] * len(starts) if zero else list(map(str, _sums("", col[:, None], order, starts)[0]))
                for col, zero in zip(cols.T, zeros, strict=True)]
    with decimal.localcontext(_EXACT):
        sums = np.add.reduceat(cols[order], starts, axis=0)
    if kind == "bigint" and sums.dtype == object and any(not -_BIGINT <= v < _BIGINT for v in sums.flat):
        raise _Refused("bigint out of range (a rollup sum)")
    if sums.dtype == np.float64 and not np.isfinite(sums).all():
        raise _Refused("value out of range: overflow (a rollup sum)")
    return sums.T.tolist()  # type: ignore[no-any-return]


def _numerics(cols: np.ndarray) -> tuple[np.ndarray, list[bool]]:
    """The numeric columns (as text) as Decimals, and which hold only '0' (scale 0, what a plain
    zero sums to, left as it is: media seconds, mostly)."""
    zeros = [all(v == "0" for v in col) for col in cols.T]
    out = cols.copy()
    for i, zero in enumerate(zeros):
        if not zero:
            out[:, i] = list(map(decimal.Decimal, cols[:, i]))
    return out, zeros


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
            sums = _sums(kind, g.measures[kind], order, starts, g.zero_numerics)
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
        for r in ROLLUPS:
            await conn.execute(UPSERT_SQL[r.table], *level_rows(g, r))
    return g.records, g.lo, g.hi
