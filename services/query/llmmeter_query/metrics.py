"""Derived numbers: rates, averages and percentiles from aggregated stats, by metric name.

Cards, breakdown columns and series points all derive from the same `Stats`,
so "success rate" or "p95 latency" means the same thing everywhere. Values
come out as plain dicts keyed by the proto field names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from llmmeter_query.aggregate import Stats


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _ms(us: float | None) -> float:
    return us / 1000 if us is not None else 0.0


def requests(s: Stats) -> int:
    """All requests."""
    return int(s.get("request_count"))


def failures(s: Stats) -> int:
    """Requests outside 200..399."""
    return int(s.get("error_count"))


def successes(s: Stats) -> int:
    """Requests with 200 <= status < 400."""
    return requests(s) - failures(s)


def cost(s: Stats) -> Decimal:
    """Total cost, exact."""
    value = s.get("cost")
    return value if isinstance(value, Decimal) else Decimal(value)


def total_tokens(s: Stats) -> int:
    """Input plus output tokens."""
    return int(s.get("input_tokens")) + int(s.get("output_tokens"))


def latency_avg_ms(s: Stats) -> float:
    """Mean latency."""
    return _ratio(float(s.get("latency_us_sum")), requests(s)) / 1000


def ttft_avg_ms(s: Stats) -> float:
    """Mean time to first token, over calls that measured it."""
    return _mean_ms(s, "ttft_us_sum", "ttft_count")


def percentile_ms(s: Stats, prefix: str, q: float) -> float:
    """A latency (`lat`) or TTFT (`ttft`) percentile in ms; 0 without data."""
    return _ms(s.percentile(prefix, q))


def _measured(s: Stats) -> dict[str, int]:
    """How many requests measured each optional timing: a mean or percentile of 0 over none
    of them means "no data", which a client can only tell from these counts."""
    return {"ttft_count": int(s.get("ttft_count")), "itl_count": int(s.get("itl_count")),
            "tpot_count": int(s.get("tpot_count"))}


def units(s: Stats) -> dict[str, Any]:
    """The non-token usage units (images, audio and video seconds, characters) that image,
    speech and video models are billed by."""
    return {"images": int(s.get("images")), "audio_seconds": float(s.get("audio_seconds")),
            "video_seconds": float(s.get("video_seconds")), "characters": int(s.get("characters"))}


def _mean_ms(s: Stats, sum_col: str, count_col: str) -> float:
    return _ratio(float(s.get(sum_col)), float(s.get(count_col))) / 1000


def _percentiles(s: Stats, prefix: str, name: str, qs: tuple[float, ...]) -> dict[str, float]:
    return {f"{name}_p{round(q * 100)}_ms": percentile_ms(s, prefix, q) for q in qs}


_ALL_QS = (0.5, 0.75, 0.9, 0.95, 0.99)


def summary(s: Stats) -> dict[str, Any]:
    """The summary cards."""
    c = cost(s)
    return {
        "request_count": requests(s), "success_count": successes(s), "error_count": failures(s),
        "success_rate": _ratio(successes(s), requests(s)),
        "input_tokens": int(s.get("input_tokens")), "output_tokens": int(s.get("output_tokens")),
        "cache_read_tokens": int(s.get("cache_read_tokens")),
        "cache_write_tokens": int(s.get("cache_write_tokens")),
        "reasoning_tokens": int(s.get("reasoning_tokens")), "total_tokens": total_tokens(s),
        "cost": float(c), "cost_exact": str(c),
        "latency_avg_ms": latency_avg_ms(s), "ttft_avg_ms": ttft_avg_ms(s),
        **units(s), **_percentiles(s, "lat", "latency", _ALL_QS), **_percentiles(s, "ttft", "ttft", _ALL_QS),
        "itl_avg_ms": _mean_ms(s, "itl_us_sum", "itl_count"),
        "tpot_avg_ms": _mean_ms(s, "tpot_us_sum", "tpot_count"), **_measured(s),
    }


def breakdown_row(group: str, s: Stats, minutes: float) -> dict[str, Any]:
    """One row of a per-group table."""
    return {
        "group": group, "request_count": requests(s), "success_count": successes(s),
        "failure_count": failures(s), "success_rate": _ratio(successes(s), requests(s)),
        "rpm": _ratio(requests(s), minutes), "tpm": _ratio(total_tokens(s), minutes),
        "input_tokens": int(s.get("input_tokens")), "output_tokens": int(s.get("output_tokens")),
        "total_tokens": total_tokens(s), "cost": float(cost(s)),
        "latency_avg_ms": latency_avg_ms(s), **_percentiles(s, "lat", "latency", _ALL_QS),
        "ttft_avg_ms": ttft_avg_ms(s), **_percentiles(s, "ttft", "ttft", _ALL_QS),
        "cache_read_tokens": int(s.get("cache_read_tokens")),
        "cache_write_tokens": int(s.get("cache_write_tokens")),
        "reasoning_tokens": int(s.get("reasoning_tokens")),
        "itl_avg_ms": _mean_ms(s, "itl_us_sum", "itl_count"),
        "tpot_avg_ms": _mean_ms(s, "tpot_us_sum", "tpot_count"), **_measured(s),
    }


#: The summed measures a breakdown row reads (not images, audio, video, characters, retries,
#: streaming or cache-hit counts: the numeric audio and video sums alone cost a third of the sums).
BREAKDOWN_MEASURES: tuple[str, ...] = (
    "request_count", "error_count", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost", "latency_us_sum", "ttft_us_sum", "ttft_count",
    "itl_us_sum", "itl_count", "tpot_us_sum", "tpot_count",
)

#: BreakdownRow columns a breakdown can be sorted by.
BREAKDOWN_COLUMNS = tuple(breakdown_row("", Stats(), 1.0))
#: The ones read from histograms (sorting by them needs every group's histograms).
PERCENTILE_COLUMNS = frozenset({**_percentiles(Stats(), "lat", "latency", _ALL_QS),
                                **_percentiles(Stats(), "ttft", "ttft", _ALL_QS)})

@dataclass(frozen=True)
class Bucket:
    """What a series value needs to know of its bucket besides the group's own sums."""

    span: timedelta
    """How much of the bucket lies inside the window (rates divide by it)."""
    requests: int
    """Requests of every group in the bucket together ("other" included): shares divide by it."""


SeriesFn = Callable[[Stats, Bucket], "float | None"]


def _pct(prefix: str, q: float) -> SeriesFn:
    def value(s: Stats, _b: Bucket) -> float | None:
        us = s.percentile(prefix, q)
        return None if us is None else us / 1000

    return value


def _avg(sum_col: str, count_col: str) -> SeriesFn:
    return lambda s, _b: (float(s.get(sum_col)) / float(s.get(count_col)) / 1000
                          if s.get(count_col) else None)


#: Series metric name (Metric enum without the prefix) -> value of a bucket, None when undefined;
#: the `Bucket` gives its span inside the window (rates) and all groups' requests (shares).
SERIES: dict[str, SeriesFn] = {
    "REQUESTS": lambda s, _b: requests(s),
    "REQUESTS_PER_SECOND": lambda s, b: requests(s) / b.span.total_seconds(),
    "SUCCESSES": lambda s, _b: successes(s),
    "FAILURES": lambda s, _b: failures(s),
    "FAILURE_RATE": lambda s, _b: _ratio(failures(s), requests(s)) if requests(s) else None,
    "FAILURE_SHARE": lambda s, b: _ratio(failures(s), b.requests) if b.requests else None,
    "SUCCESS_RATE": lambda s, _b: _ratio(successes(s), requests(s)) if requests(s) else None,
    "LATENCY_AVG": _avg("latency_us_sum", "request_count"),
    "TTFT_AVG": _avg("ttft_us_sum", "ttft_count"),
    "ITL_AVG": _avg("itl_us_sum", "itl_count"),
    "TPOT_AVG": _avg("tpot_us_sum", "tpot_count"),
    "COST": lambda s, _b: float(cost(s)),
    "INPUT_TOKENS": lambda s, _b: int(s.get("input_tokens")),
    "OUTPUT_TOKENS": lambda s, _b: int(s.get("output_tokens")),
    "CACHE_READ_TOKENS": lambda s, _b: int(s.get("cache_read_tokens")),
    "CACHE_WRITE_TOKENS": lambda s, _b: int(s.get("cache_write_tokens")),
    "TOTAL_TOKENS": lambda s, _b: total_tokens(s),
    "IMAGES": lambda s, _b: int(s.get("images")),
    "AUDIO_SECONDS": lambda s, _b: float(s.get("audio_seconds")),
    "VIDEO_SECONDS": lambda s, _b: float(s.get("video_seconds")),
    "CHARACTERS": lambda s, _b: int(s.get("characters")),
    "TOKENS_PER_MINUTE": lambda s, b: total_tokens(s) / (b.span.total_seconds() / 60),
    **{f"LATENCY_P{int(q * 100)}": _pct("lat", q) for q in (0.5, 0.75, 0.9, 0.95, 0.99)},
    **{f"TTFT_P{int(q * 100)}": _pct("ttft", q) for q in (0.5, 0.75, 0.9, 0.95, 0.99)},
}

#: Series metrics whose bucket values add up over a window: groups can be ranked by them.
RANKABLE = frozenset(("REQUESTS", "SUCCESSES", "FAILURES", "COST", "INPUT_TOKENS", "OUTPUT_TOKENS",
                      "CACHE_READ_TOKENS", "CACHE_WRITE_TOKENS", "TOTAL_TOKENS",
                      *(unit.upper() for unit in units(Stats()))))

_TOKENS = ("input_tokens", "output_tokens")
#: The summed measures each series metric reads (request_count is always read); percentiles
#: read histograms only.
SERIES_MEASURES: dict[str, tuple[str, ...]] = {
    **{name: () for name in SERIES if "_P" in name},
    "REQUESTS": (), "REQUESTS_PER_SECOND": (),
    **{name: ("error_count",)
       for name in ("SUCCESSES", "FAILURES", "FAILURE_RATE", "SUCCESS_RATE", "FAILURE_SHARE")},
    "LATENCY_AVG": ("latency_us_sum",), "TTFT_AVG": ("ttft_us_sum", "ttft_count"),
    "ITL_AVG": ("itl_us_sum", "itl_count"), "TPOT_AVG": ("tpot_us_sum", "tpot_count"),
    "COST": ("cost",), "INPUT_TOKENS": ("input_tokens",), "OUTPUT_TOKENS": ("output_tokens",),
    "CACHE_READ_TOKENS": ("cache_read_tokens",), "CACHE_WRITE_TOKENS": ("cache_write_tokens",),
    "TOTAL_TOKENS": _TOKENS, "TOKENS_PER_MINUTE": _TOKENS,
    **{unit.upper(): (unit,) for unit in units(Stats())},
}
