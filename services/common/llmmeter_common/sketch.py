"""Reads quantiles back from the sparse log-bucketed histograms the rollups store.

The bucket mapping lives in SQL (`llmmeter_hist_key`, migration 0001); this
is its inverse. With relative accuracy ALPHA, the value returned for a rank
is within ALPHA of the exact value at that rank, which is what lets the query
side answer p95 over 30 days from day rollups instead of 10 million rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

ALPHA = 0.005
GAMMA = (1 + ALPHA) / (1 - ALPHA)

#: A stored histogram pair is one bigint, key << PAIR_SHIFT | count (migration 0005): keys are
#: 0..~4400, counts stay below 2**PAIR_SHIFT.
PAIR_SHIFT = 40
COUNT_MASK = (1 << PAIR_SHIFT) - 1
#: A packed histogram (migration 0007) is this tag, then each pair as 8 big-endian bytes. The tag
#: cannot begin an `array_send` blob, whose first 4 bytes are the dimension count (0 or 1).
PACK_TAG = b"LMP1\x00\x00\x00\x00"


def key_of(us: int) -> int:
    """The bucket of a value in microseconds (mirror of SQL `llmmeter_hist_key`, for tests)."""
    return 0 if us <= 1 else math.ceil(math.log(us) / 0.010000083334583179)


def value_of(key: int) -> float:
    """The representative value, in microseconds, of a bucket."""
    if key <= 0:
        return 1.0
    return 2 * GAMMA**key / (GAMMA + 1)


def split(pairs: Iterable[int]) -> tuple[list[int], list[int]]:
    """(keys, counts) of a stored pairs array."""
    values = list(pairs)
    return [v >> PAIR_SHIFT for v in values], [v & COUNT_MASK for v in values]


def merge(pairs: Iterable[tuple[Iterable[int], Iterable[int]]]) -> dict[int, int]:
    """Add up several (keys, counts) histograms."""
    total: dict[int, int] = {}
    for keys, counts in pairs:
        for k, c in zip(keys, counts, strict=True):
            total[k] = total.get(k, 0) + c
    return total


def quantile(hist: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) in microseconds, nearest-rank definition.

    Nearest rank (the value at position ceil(q * n), as SQL's
    `percentile_disc`) keeps the estimate within ALPHA of an actually observed
    value; None when the histogram is empty.
    """
    n = sum(hist.values())
    if n == 0:
        return None
    rank = max(math.ceil(q * n), 1)
    seen = 0
    for key in sorted(hist):
        seen += hist[key]
        if seen >= rank:
            return value_of(key)
    return value_of(max(hist))
