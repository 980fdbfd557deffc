"""Reads quantiles back from the sparse log-bucketed histograms the rollups store.

The bucket mapping lives in SQL (`llmmeter_hist_key`, migration 0001); this
is its inverse. With relative accuracy ALPHA, the value returned for a rank
is within ALPHA of the exact value at that rank, which is what lets the query
side answer p95 over 30 days from day rollups instead of 10 million rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

ALPHA = 0.005
GAMMA = (1 + ALPHA) / (1 - ALPHA)

#: The one stored histogram format, on both flavours (migration 0013, `llmmeter_hist_elems`): a
#: bytea of 4-byte big-endian elements, each `key << COUNT_BITS | count`. Keys are 0..~4400 (13
#: bits); a count above COUNT_MAX is split over several elements with the same key. Two histograms
#: concatenated are their sum, so rollup upserts append and readers add counts up by key;
#: compaction (`llmmeter_hist_fold`) rewrites an array with each key once, in key order.
ELEM_BYTES = 4
COUNT_BITS = 19
COUNT_MAX = (1 << COUNT_BITS) - 1


def key_of(us: int) -> int:
    """The bucket of a value in microseconds (mirror of SQL `llmmeter_hist_key`, for tests)."""
    return 0 if us <= 1 else math.ceil(math.log(us) / 0.010000083334583179)


def value_of(key: int) -> float:
    """The representative value, in microseconds, of a bucket."""
    if key <= 0:
        return 1.0
    return 2 * GAMMA**key / (GAMMA + 1)


def encode(hist: Mapping[int, int]) -> bytes:
    """A histogram ({key: count}) in the stored format, keys ascending (mirror of SQL
    `llmmeter_hist_elems`, for tests and tools)."""
    out = bytearray()
    for key in sorted(hist):
        left = hist[key]
        while left > 0:
            c = min(left, COUNT_MAX)
            out += ((key << COUNT_BITS) | c).to_bytes(ELEM_BYTES, "big")
            left -= c
    return bytes(out)


def decode(blob: bytes | None) -> dict[int, int]:
    """{key: count} of a stored histogram (repeated keys added up)."""
    total: dict[int, int] = {}
    for i in range(0, len(blob or b""), ELEM_BYTES):
        v = int.from_bytes(blob[i:i + ELEM_BYTES], "big")  # type: ignore[index]
        total[v >> COUNT_BITS] = total.get(v >> COUNT_BITS, 0) + (v & COUNT_MAX)
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
