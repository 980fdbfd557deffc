"""Folds repeated histogram keys in rollup rows, in numpy (PostgreSQL flavour's rollup worker).

Upserts append histogram elements (`rollups.conflict_sql`), so a row many chunks touch holds a
key many times until it is compacted. `rollups.compact_sql` does that in SQL with
`llmmeter_hist_fold`, which takes every element apart with `get_byte`: about 20 µs per element,
1.5 s of database CPU for the eight or so busy rows a live chunk pushes past the threshold,
and most of the rollup worker's time. Here the same rows are read once, folded in numpy
(each key once, in key order, large counts split as `llmmeter_hist_elems` splits them: the
bytes `llmmeter_hist_fold` gives) and written back in one UPDATE per rollup table.

Callers hold the rollup worker's lock: a concurrent append between the read and the update
would be lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import numpy as np

from llmmeter_common import sketch
from llmmeter_common.rollups import DIMENSIONS, HISTOGRAMS, ORIGIN, ROLLUPS, Rollup
from llmmeter_ingest.rollup_agg import encode

_KEY = ("dims_mask", "bucket", *DIMENSIONS)
_HIST = [f"{p}_hist" for p, _ in HISTOGRAMS]
_KEY_TYPES = {"dims_mask": "smallint", "bucket": "timestamptz", "status_code": "integer"}


def select_sql(r: Rollup) -> str:
    """The key and histograms of the rows of `r` in the buckets holding start times $1 to $2
    whose histograms hold more than $3 elements (`rollups.compact_sql`'s rows)."""
    masks = ", ".join(str(m) for m in r.masks)
    long_ = " OR ".join(f"length({h}) > $3 * {sketch.ELEM_BYTES}" for h in _HIST)
    return f"""SELECT {", ".join((*_KEY, *_HIST))} FROM {r.table}
WHERE dims_mask = ANY('{{{masks}}}'::smallint[])
  AND bucket >= date_bin('{r.width}', $1::timestamptz, {ORIGIN}) AND bucket <= $2 AND ({long_})"""


def update_sql(r: Rollup) -> str:
    """Replace the histograms of the rows named by key (one array per key column, then one per
    histogram)."""
    cols = (*_KEY, *_HIST)
    arrays = ", ".join(f"${i}::{_KEY_TYPES.get(c, 'bytea' if c in _HIST else 'text')}[]"
                       for i, c in enumerate(cols, 1))
    sets = ", ".join(f"{h} = u.{h}" for h in _HIST)
    match = " AND ".join(f"t.{c} = u.{c}" for c in _KEY)
    return f"""UPDATE {r.table} AS t SET {sets}
FROM unnest({arrays}) AS u({", ".join(cols)}) WHERE {match}"""


_SQL = {r.table: (select_sql(r), update_sql(r)) for r in ROLLUPS}


def fold(blobs: Sequence[bytes]) -> list[bytes]:
    """Each histogram with every key once, in key order (`llmmeter_hist_fold`)."""
    lengths = np.fromiter(map(len, blobs), np.int64, len(blobs)) // sketch.ELEM_BYTES
    elems = np.frombuffer(b"".join(blobs), ">u4").astype(np.int64)
    if not len(elems):
        return [b""] * len(blobs)
    cells = np.repeat(np.arange(len(blobs)), lengths) << (32 - sketch.COUNT_BITS) | elems >> sketch.COUNT_BITS
    order = np.argsort(cells, kind="stable")
    cells = cells[order]
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
    counts = np.add.reduceat(elems[order] & sketch.COUNT_MAX, starts)
    cells = cells[starts]
    return encode(cells >> (32 - sketch.COUNT_BITS), cells & ((1 << (32 - sketch.COUNT_BITS)) - 1), counts,
                  len(blobs))


async def compact_level(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, r: Rollup,
                        lo: datetime, hi: datetime, longer_than: int) -> int:
    """Fold the histograms of the rows of `r` in the buckets of start times [lo, hi] whose
    histograms grew past `longer_than` elements; returns the rows rewritten."""
    select, update = _SQL[r.table]
    rows = await conn.fetch(select, lo, hi, longer_than)
    if not rows:
        return 0
    cols = list(zip(*rows, strict=True))
    hists = [fold(cols[len(_KEY) + i]) for i in range(len(_HIST))]
    await conn.execute(update, *cols[:len(_KEY)], *hists)
    return len(rows)
