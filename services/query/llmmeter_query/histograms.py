"""Percentiles of many merged histograms at once, in numpy.

A 7-day hourly series by model merges and reads back ~1,700 histograms of a
few hundred keys each; doing that key by key in Python (or shipping one row
per key) took seconds. Here the histograms arrive as stored (`sketch`: a
bytea of 4-byte (key, count) elements, sent as it is), all blobs of a
statement are parsed in one vectorised pass into a few flat arrays, and every
quantile of every group is read from one cumulative sum over all groups'
counts, each group laid out over its own key span (or, past DENSE_CELLS
cells, from one sort and one `searchsorted`).
Counts may be negative: "other" is the total minus the groups kept, which is
exact because the histograms are plain counts per key.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from llmmeter_common import sketch

Ints = npt.NDArray[np.int64]


#: The stored histogram format (`sketch`): 4-byte big-endian elements `key << COUNT_BITS | count`.
_ELEMENT = np.dtype(">u4")


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

    def add_sent(self, groups: Sequence[Hashable], blobs: Sequence[bytes | None], sign: int = 1) -> None:
        """Many histograms at once, each in the stored format (`sketch.ELEM_BYTES` a (key, count)),
        parsed in one pass: parsing them one by one cost more than merging them."""
        size = sketch.ELEM_BYTES
        n = np.fromiter((len(b) // size if b else 0 for b in blobs), dtype=np.int64, count=len(blobs))
        if not n.any():
            return
        body = b"".join([b for b in blobs if b])
        elems = np.frombuffer(body, dtype=_ELEMENT).astype(np.int64)
        keys = elems >> sketch.COUNT_BITS
        counts = elems & sketch.COUNT_MAX
        gids = np.fromiter((self.gid(g) for g in groups), dtype=np.int64, count=len(groups))
        self._gids.extend(gids[n > 0].tolist())
        self._lens.extend(n[n > 0].tolist())
        self._keys.append(keys)
        self._counts.append(counts if sign > 0 else -counts)

    def quantiles(self, qs: Sequence[float]) -> dict[Hashable, list[float | None]]:
        """Nearest-rank quantiles (as `sketch.quantile`, in µs) of every group's merged histogram."""
        out: dict[Hashable, list[float | None]] = {g: [None] * len(qs) for g in self._ids}
        if not self._keys:
            return out
        gids = np.array(self._gids, dtype=np.int64)
        lens = np.array(self._lens, dtype=np.int64)
        keys, counts = _joined(self._keys), _joined(self._counts)
        n = len(self._ids)
        walk = _alone_and_ordered(gids, lens, keys, counts, n)
        if not walk.any():
            found, total = _merged(gids, lens, keys, counts, n, qs)
        elif walk.all():
            found, total = np.zeros((n, len(qs)), dtype=np.int64), np.zeros(n, dtype=np.int64)
            found[gids], total[gids] = _walked(lens, keys, counts, qs)
        else:
            pairs = np.repeat(walk, lens)
            found, total = _merged(gids[~walk], lens[~walk], keys[~pairs], counts[~pairs], n, qs)
            found[gids[walk]], total[gids[walk]] = _walked(lens[walk], keys[pairs], counts[pairs], qs)
        values = _values_of(found)
        for name, row, count in zip(self._ids, values.tolist(), total.tolist(), strict=True):
            if count > 0:
                out[name] = list[float | None](row)
        return out


#: `sketch.value_of` of every key up to this one, computed once by that function: numpy's vectorised
#: power may differ from Python's in the last bit (it does in numpy 2.4), and a percentile must
#: read back exactly the value the rest of the system gives its bucket.
_TABLED_KEYS = 8192
_VALUES = np.array([sketch.value_of(k) for k in range(_TABLED_KEYS)], dtype=np.float64)


def _values_of(keys: np.ndarray) -> np.ndarray:
    """`sketch.value_of` of each key (1.0 for keys <= 0), by table lookup."""
    inside = np.clip(keys, 0, _TABLED_KEYS - 1)
    values: np.ndarray = _VALUES[inside]
    beyond = keys >= _TABLED_KEYS
    if beyond.any():  # not reachable from validated records (durations are bounded); still right
        values[beyond] = [sketch.value_of(int(k)) for k in keys[beyond]]
    return values


def _joined(parts: list[npt.NDArray[Any]]) -> Ints:
    """The parts end to end as int64; one part (one parse of many blobs) is used without a copy."""
    return np.asarray(parts[0], np.int64) if len(parts) == 1 else np.concatenate(parts, dtype=np.int64)


#: Most cells (8 bytes each) laid out densely; more than that sorts instead.
DENSE_CELLS = 16_000_000


def _alone_and_ordered(gids: Ints, lens: Ints, keys: Ints, counts: Ints, n: int) -> npt.NDArray[np.bool_]:
    """Per piece: whether it is its group's only piece, with keys ascending (a key split over
    several elements repeats) and no negative count. Such a piece is already its group's merged
    histogram in key order (a compacted rollup row read alone, the common case of a series
    point), so its quantiles need no merge."""
    alone = np.bincount(gids, minlength=n)[gids] == 1
    starts = np.cumsum(lens) - lens
    step = np.empty(len(keys), dtype=bool)
    step[0] = True
    np.greater_equal(keys[1:], keys[:-1], out=step[1:])
    step[starts] = True  # a piece's first pair has nothing before it in the piece
    step &= counts >= 0
    walk: npt.NDArray[np.bool_] = alone & np.logical_and.reduceat(step, starts)
    return walk


def _walked(lens: Ints, keys: Ints, counts: Ints, qs: Sequence[float]) -> tuple[Ints, Ints]:
    """Quantile keys and totals of pieces that are whole histograms in key order: one running sum
    over all of them and a `searchsorted` per quantile."""
    cum = np.cumsum(counts)
    ends = np.cumsum(lens)
    starts = ends - lens
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0)
    total = cum[ends - 1] - base
    found = np.zeros((len(lens), len(qs)), dtype=np.int64)
    for j, q in enumerate(qs):
        rank = np.maximum(np.ceil(q * total), 1).astype(np.int64)
        at = np.clip(np.searchsorted(cum, base + rank, side="left"), starts, ends - 1)
        found[:, j] = keys[at]
    return found, total


def _merged(gids: Ints, lens: Ints, keys: Ints, counts: Ints, n: int,
            qs: Sequence[float]) -> tuple[Ints, Ints]:
    """Quantile keys and totals of all `n` groups from pieces in any order, several per group
    (a group without pieces has total 0)."""
    if len(keys) == 0:
        return np.zeros((n, len(qs)), dtype=np.int64), np.zeros(n, dtype=np.int64)
    lo, span = _spans(gids, lens, keys, n)
    if int(span.sum()) <= DENSE_CELLS:
        return _dense(gids, lens, keys, counts, lo, span, qs)
    return _sorted(np.repeat(gids, lens), keys, counts, n, qs)


def _spans(gids: Ints, lens: Ints, keys: Ints, n: int) -> tuple[Ints, Ints]:
    """Each group's lowest key and key span (0 for a group without pairs), from its pieces' extremes."""
    starts = np.cumsum(lens) - lens
    lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, gids, np.minimum.reduceat(keys, starts))
    np.maximum.at(hi, gids, np.maximum.reduceat(keys, starts))
    span = np.where(hi >= lo, hi - lo + 1, 0)
    return np.where(span > 0, lo, 0), span


def _dense(gids: Ints, lens: Ints, keys: Ints, counts: Ints, lo: Ints, span: Ints,
           qs: Sequence[float]) -> tuple[Ints, Ints]:
    """Every group's counts laid out over its own key span, groups end to end: no sort, one
    cumulative sum for all, and a quantile is one `searchsorted` into it per group. `gids` and
    `lens` say which group each run of `lens` pairs belongs to."""
    start = np.cumsum(span) - span
    cell = np.repeat(start[gids] - lo[gids], lens)
    cell += keys
    # bincount sums in float64, exact for counts below 2**53; the running sum is taken in int64,
    # which is several times faster than a float one (no dependency on a float add's latency).
    cells = np.bincount(cell, weights=counts, minlength=int(span.sum())).astype(np.int64)
    if counts.min() < 0:  # "other" minus kept: the difference of exact counts is never below zero
        np.maximum(cells, 0, out=cells)
    cum = np.cumsum(cells)
    last = np.maximum(start + span - 1, 0)
    base = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0)
    total = np.where(span > 0, cum[last] - base, 0)
    found = np.zeros((len(span), len(qs)), dtype=np.int64)
    for j, q in enumerate(qs):
        rank = np.maximum(np.ceil(q * total), 1).astype(np.int64)  # int: cum is searched as is
        at = np.clip(np.searchsorted(cum, base + rank, side="left"), start, last)
        found[:, j] = lo + at - start
    return found, total.astype(np.int64)


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
