"""The command-line names of the query service's metrics (`--metric latency_p95`, `rps`, ...).

The Metric enum's names are long and shouted (`METRIC_REQUESTS_PER_SECOND`);
people type and read short lower-case ones. Parsing and printing go through
the same alias table so a name printed in a chart can be typed back.
"""

from __future__ import annotations

import argparse

from llmmeter.v1 import query_pb2

#: Short metric names of the command line that are not the enum's own lower-cased name.
_ALIASES = {
    "rps": "REQUESTS_PER_SECOND",
    "itl": "ITL_AVG",
    "tpot": "TPOT_AVG",
    "tpm": "TOKENS_PER_MINUTE",
}
_SHORT = {value: key for key, value in _ALIASES.items()}

#: Metrics whose bucket values add up to a meaningful total.
ADDITIVE = frozenset(
    query_pb2.Metric.Value(f"METRIC_{name}")
    for name in (
        "REQUESTS",
        "SUCCESSES",
        "FAILURES",
        "COST",
        "INPUT_TOKENS",
        "OUTPUT_TOKENS",
        "CACHE_READ_TOKENS",
        "CACHE_WRITE_TOKENS",
        "TOTAL_TOKENS",
        "IMAGES",
        "AUDIO_SECONDS",
        "VIDEO_SECONDS",
        "CHARACTERS",
    )
)


def metric_names() -> list[str]:
    """The metric names `--metric` accepts, in enum order."""
    names = []
    for name in query_pb2.Metric.DESCRIPTOR.values_by_name:
        if name != "METRIC_UNSPECIFIED":
            bare = name.removeprefix("METRIC_")
            names.append(_SHORT.get(bare, bare.lower()))
    return names


def parse_metric(text: str) -> int:
    """argparse type: `latency_p95`, `rps`, `METRIC_COST`, ... -> the Metric enum value."""
    bare = text.strip().upper().removeprefix("METRIC_")
    bare = _ALIASES.get(bare.lower(), bare)
    if bare == "UNSPECIFIED" or f"METRIC_{bare}" not in query_pb2.Metric.DESCRIPTOR.values_by_name:
        raise argparse.ArgumentTypeError(f"unknown metric {text!r}; one of {', '.join(metric_names())}")
    return query_pb2.Metric.Value(f"METRIC_{bare}")


def metric_label(metric: int) -> str:
    """The command-line name of a Metric value."""
    bare = query_pb2.Metric.Name(metric).removeprefix("METRIC_")  # type: ignore[arg-type]
    return _SHORT.get(bare, bare.lower())
