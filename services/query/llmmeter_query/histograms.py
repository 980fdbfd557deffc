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

import numpy as np
import numpy.typing as npt

from llmmeter_common import sketch

_INT4 = np.dtype([("len", ">i4"), ("value", ">i4")])
_INT8 = np.dtype([("len", ">i4"), ("value", ">i8")])

Ints = npt.NDArray[np.int64]


def unpack(data: bytes | None, wide: bool) -> Ints:
    """The elements of a one-dimensional int4 (`wide` False) or int8 array sent by `array_send`.

    The format is: ndim, has-nulls flag, element type oid, then (length, lower
    bound) per dimension, then (byte length, value) per element. Histogram
    arrays never hold NULLs.
    """
    if not data:
        return np.zeros(0, dtype=np.int64)
    ndim = int.from_bytes(data[0:4], "big")
    if ndim == 0:
        return np.zeros(0, dtype=np.int64)
    n = int.from_bytes(data[12:16], "big")
    items = np.frombuffer(data, dtype=_INT8 if wide else _INT4, count=n, offset=12 + 8 * ndim)
    return items["value"].astype(np.int64)


class Collector:
    """Histogram pieces of one kind (latency or TTFT) for many groups, merged on `quantiles`."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        self._gids: list[Ints] = []
        self._keys: list[Ints] = []
        self._counts: list[Ints] = []

    def gid(self, group: Hashable) -> int:
        """The dense index of a group, allocated on first sight."""
        found = self._ids.get(group)
        if found is None:
            found = self._ids[group] = len(self._ids)
        return found

    def add(self, group: Hashable, keys: Ints, counts: Ints | None, sign: int = 1) -> None:
        """Add (sign 1) or subtract (sign -1) a histogram; `counts` None means one per key."""
        if len(keys) == 0:
            return
        if counts is None:
            counts = np.ones(len(keys), dtype=np.int64)
        self._gids.append(np.full(len(keys), self.gid(group), dtype=np.int64))
        self._keys.append(keys)
        self._counts.append(counts if sign > 0 else -counts)

    def quantiles(self, qs: Sequence[float]) -> dict[Hashable, list[float | None]]:
        """Nearest-rank quantiles (as `sketch.quantile`, in µs) of every group's merged histogram."""
        out: dict[Hashable, list[float | None]] = {g: [None] * len(qs) for g in self._ids}
        if not self._keys:
            return out
        gid, keys, counts = (np.concatenate(a) for a in (self._gids, self._keys, self._counts))
        order = np.lexsort((keys, gid))
        gid, keys, counts = gid[order], keys[order], counts[order]
        # one entry per (group, key), empty ones dropped
        first = np.ones(len(gid), dtype=bool)
        first[1:] = (gid[1:] != gid[:-1]) | (keys[1:] != keys[:-1])
        starts = np.flatnonzero(first)
        counts = np.add.reduceat(counts, starts)
        gid, keys = gid[starts], keys[starts]
        live = counts > 0
        gid, keys, counts = gid[live], keys[live], counts[live]
        if len(gid) == 0:
            return out
        cum = np.cumsum(counts)
        groups = np.arange(len(self._ids))
        lo = np.searchsorted(gid, groups, side="left")
        hi = np.searchsorted(gid, groups, side="right")
        base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0)
        total = np.where(hi > lo, cum[np.maximum(hi - 1, 0)] - base, 0)
        values = np.where(keys <= 0, 1.0, 2 * sketch.GAMMA ** keys.astype(np.float64) / (sketch.GAMMA + 1))
        found = np.zeros((len(groups), len(qs)), dtype=np.float64)
        for j, q in enumerate(qs):
            rank = np.maximum(np.ceil(q * total), 1).astype(np.int64)
            at = np.minimum(np.searchsorted(cum, base + rank, side="left"), np.maximum(hi - 1, 0))
            found[:, j] = values[at]
        for name, row, n in zip(self._ids, found.tolist(), total.tolist(), strict=True):
            if n > 0:
                out[name] = list[float | None](row)
        return out
