"""Percentiles of many merged histograms at once, in numpy.

A 7-day hourly series by model merges and reads back ~1,700 histograms of a
few hundred keys each; doing that key by key in Python (or shipping one row
per key) took seconds. Here the histograms arrive as PostgreSQL's binary
array format (`array_send`), are laid end to end in a few flat arrays, and
every quantile of every group is found with one sort and one `searchsorted`.
Counts may be negative: "other" is the total minus the groups kept, which is
exact because the histograms are plain counts per key.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from llmmeter_common import sketch

_INT4 = np.dtype([("len", ">i4"), ("value", ">i4")])
_INT8 = np.dtype([("len", ">i4"), ("value", ">i8")])

Ints = npt.NDArray[np.int64]


def unpack(data: bytes | None, wide: bool) -> npt.NDArray[np.signedinteger[Any]]:
    """The elements of a one-dimensional int4 (`wide` False) or int8 array sent by `array_send`,
    as a big-endian view of `data` (no copy).

    The format is: ndim, has-nulls flag, element type oid, then (length, lower
    bound) per dimension, then (byte length, value) per element. Histogram
    arrays never hold NULLs.
    """
    if not data or len(data) <= 12:  # NULL, or an empty array (ndim 0, no dimensions)
        return _EMPTY
    n = int.from_bytes(data[12:16], "big")
    return np.frombuffer(data, dtype=_INT8 if wide else _INT4, count=n, offset=20)["value"]


_EMPTY = np.zeros(0, dtype=np.int64)


class Collector:
    """Histogram pieces of one kind (latency or TTFT) for many groups, merged on `quantiles`."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        self._gids: list[int] = []
        self._lens: list[int] = []
        self._keys: list[npt.NDArray[Any]] = []
        self._counts: list[npt.NDArray[Any]] = []

    def gid(self, group: Hashable) -> int:
        """The dense index of a group, allocated on first sight."""
        found = self._ids.get(group)
        if found is None:
            found = self._ids[group] = len(self._ids)
        return found

    def add(self, group: Hashable, keys: npt.NDArray[Any], counts: npt.NDArray[Any] | None,
            sign: int = 1) -> None:
        """Add (sign 1) or subtract (sign -1) a histogram; `counts` None means one per key."""
        n = len(keys)
        if n == 0:
            return
        if counts is None:
            counts = np.ones(n, dtype=np.int64)
        self._gids.append(self.gid(group))
        self._lens.append(n)
        self._keys.append(keys)
        self._counts.append(counts if sign > 0 else -counts.astype(np.int64))

    def quantiles(self, qs: Sequence[float]) -> dict[Hashable, list[float | None]]:
        """Nearest-rank quantiles (as `sketch.quantile`, in µs) of every group's merged histogram."""
        out: dict[Hashable, list[float | None]] = {g: [None] * len(qs) for g in self._ids}
        if not self._keys:
            return out
        gid = np.repeat(np.array(self._gids, dtype=np.int64), self._lens)
        keys = np.concatenate(self._keys, dtype=np.int64)
        counts = np.concatenate(self._counts, dtype=np.int64)
        lo = int(keys.min())
        width = int(keys.max()) - lo + 1
        n = len(self._ids)
        if n * width <= DENSE_CELLS:
            found, total = _dense(gid, keys - lo, counts, n, width, qs)
            found += lo
        else:
            found, total = _sorted(gid, keys, counts, n, qs)
        values = np.where(found <= 0, 1.0, 2 * sketch.GAMMA ** found.astype(np.float64) / (sketch.GAMMA + 1))
        for name, row, count in zip(self._ids, values.tolist(), total.tolist(), strict=True):
            if count > 0:
                out[name] = list[float | None](row)
        return out


#: Largest groups x key range laid out densely (8 bytes each); wider spans sort instead.
DENSE_CELLS = 4_000_000


def _dense(gid: Ints, offset: Ints, counts: Ints, n: int, width: int,
           qs: Sequence[float]) -> tuple[Ints, Ints]:
    """One row of counts per group over the key range: no sort, one cumulative sum per row."""
    cells = np.bincount(gid * width + offset, weights=counts, minlength=n * width).reshape(n, width)
    np.maximum(cells, 0, out=cells)  # "other" minus kept: never below zero, but clip float dust
    cum = np.cumsum(cells, axis=1)
    total = cum[:, -1].astype(np.int64)
    found = np.zeros((n, len(qs)), dtype=np.int64)
    for j, q in enumerate(qs):
        rank = np.maximum(np.ceil(q * total), 1)
        found[:, j] = np.minimum((cum < rank[:, None]).sum(axis=1), width - 1)
    return found, total


def _sorted(gid: Ints, keys: Ints, counts: Ints, n: int, qs: Sequence[float]) -> tuple[Ints, Ints]:
    """The same from (group, key)-sorted pairs, for key ranges too wide to lay out densely."""
    order = np.lexsort((keys, gid))
    gid, keys, counts = gid[order], keys[order], counts[order]
    first = np.ones(len(gid), dtype=bool)
    first[1:] = (gid[1:] != gid[:-1]) | (keys[1:] != keys[:-1])
    starts = np.flatnonzero(first)
    counts = np.add.reduceat(counts, starts)
    gid, keys = gid[starts], keys[starts]
    live = counts > 0
    gid, keys, counts = gid[live], keys[live], counts[live]
    found = np.zeros((n, len(qs)), dtype=np.int64)
    if len(gid) == 0:
        return found, np.zeros(n, dtype=np.int64)
    cum = np.cumsum(counts)
    groups = np.arange(n)
    lo = np.searchsorted(gid, groups, side="left")
    hi = np.searchsorted(gid, groups, side="right")
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0)
    total = np.where(hi > lo, cum[np.maximum(hi - 1, 0)] - base, 0)
    for j, q in enumerate(qs):
        rank = np.maximum(np.ceil(q * total), 1).astype(np.int64)
        at = np.minimum(np.searchsorted(cum, base + rank, side="left"), np.maximum(hi - 1, 0))
        found[:, j] = keys[at]
    return found, total
