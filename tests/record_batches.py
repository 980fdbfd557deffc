"""Batches of records for the bulk ingest paths: valid ones of every shape, and ways to break one.

Shared by the tests of the record-message and the column forms, which must agree on both.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from llmmeter.v1 import usage_pb2
from llmmeter_ingest.validation import MAX_TOKENS, Limits

from records import dur, record

HUGE = 2**62


def limits() -> Limits:
    """Fourteen days back, a minute ahead, 4 KiB of payload."""
    now = int(time.time() * 1_000_000)
    return Limits(now - 14 * 86_400_000_000, now + 60_000_000, 4096)


def valid_batch(seed: int, n: int = 60) -> list[usage_pb2.UsageRecord]:
    """Valid records of every shape: streamed or not, with inter-token latency, gateway overhead,
    media, a payload, metadata, a cost breakdown, no cost (priced), IPv4/IPv6/no address."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        start = now - timedelta(seconds=rng.uniform(5, 86_400 * 3))
        out_tokens = rng.choice([0, 1, 2, rng.randint(3, 4000)])
        rec = record(start.replace(microsecond=rng.randrange(1_000_000)), latency_ms=rng.uniform(1, 60_000),
                     ttft_ms=rng.choice([None, rng.uniform(0, 1)]), request_id=f"b-{seed}-{i}",
                     model=rng.choice(["gpt-4o", "claude-sonnet-4", "émoji-✓"]),
                     output_tokens=out_tokens, reasoning_tokens=min(out_tokens, rng.randint(0, 5)),
                     output_chunks=rng.choice([0, 1, 2, 40]), status_code=rng.choice([200, 429, 500]),
                     user=rng.choice(["", "ana"]), team=rng.choice(["", "payments"]),
                     client_ip=rng.choice(["", "203.0.113.77", "2001:db8::1"]),
                     retries=rng.randint(0, 3), cache_hit=rng.random() < 0.3)
        if rng.random() < 0.5:
            rec.cost = rng.random() * 0.05
        else:
            rec.ClearField("cost")  # priced by the built-in price table
        if rng.random() < 0.3:
            rec.mean_inter_token_latency.CopyFrom(dur(rng.uniform(0, 50)))
        if rng.random() < 0.5:
            rec.gateway_overhead.CopyFrom(dur(rng.choice([0, rng.uniform(0, 20)])))
        if rng.random() < 0.3:
            rec.media.CopyFrom(usage_pb2.MediaUsage(images=rng.randint(0, 4), audio_seconds=rng.random() * 9,
                                                    characters=rng.randint(0, 99)))
        if rng.random() < 0.5:
            rec.metadata.update({"tenant": rng.choice(["acme", "ünïcode"]), "env": "prod"})
        if rec.HasField("cost") and rng.random() < 0.5:
            rec.cost_breakdown.update({"input": rec.cost / 4, "output": rec.cost - rec.cost / 4})
        if rng.random() < 0.1:
            rec.payload.request.struct_value.fields["q"].string_value = "hello"
        out.append(rec)
    return out


def _set(name: str, value: object) -> Callable[[usage_pb2.UsageRecord], None]:
    def apply(rec: usage_pb2.UsageRecord) -> None:
        target = rec
        *path, last = name.split(".")
        for part in path:
            target = getattr(target, part)
        if isinstance(value, (duration_pb2.Duration, timestamp_pb2.Timestamp)):
            getattr(target, last).CopyFrom(value)
        else:
            setattr(target, last, value)
    return apply


def _old_start(rec: usage_pb2.UsageRecord) -> None:
    rec.start_time.seconds -= 15 * 86_400
    rec.end_time.seconds -= 15 * 86_400


def _future(rec: usage_pb2.UsageRecord) -> None:
    rec.end_time.seconds += 3600


def _long_call(rec: usage_pb2.UsageRecord) -> None:
    rec.start_time.seconds -= 3601


BREAKING: list[tuple[str, Callable[[usage_pb2.UsageRecord], None]]] = [
    ("negative tokens", _set("input_tokens", -1)),
    ("too many tokens", _set("input_tokens", MAX_TOKENS + 1)),
    ("huge tokens", _set("output_tokens", HUGE)),
    ("cache over input", _set("cache_read_tokens", 10**6)),
    ("reasoning over output", _set("reasoning_tokens", 10**6)),
    ("negative chunks", _set("output_chunks", -2)),
    ("retries", _set("retries", 10**6)),
    ("nan cost", _set("cost", math.nan)),
    ("negative cost", _set("cost", -0.5)),
    ("cost too high", _set("cost", 1e6)),
    ("status low", _set("status_code", 99)),
    ("status high", _set("status_code", 600)),
    ("empty id", _set("request_id", "")),
    ("long id", _set("request_id", "x" * 257)),
    ("nul id", _set("request_id", "a\x00b")),
    ("no model", _set("model", "")),
    ("long model", _set("model", "m" * 257)),
    ("long message", _set("error_message", "e" * 4097)),
    ("nul team", _set("team", "pay\x00")),
    ("bad address", _set("client_ip", "not-an-ip")),
    ("start nanos", _set("start_time.nanos", 1_500_000_000)),
    ("end nanos", _set("end_time.nanos", -1)),
    ("too old", _old_start),
    ("in the future", _future),
    ("longer than an hour", _long_call),
    ("end before start", _set("end_time.seconds", 0)),
    ("negative ttft", _set("time_to_first_token", duration_pb2.Duration(seconds=-1))),
    ("ttft over latency", _set("time_to_first_token", duration_pb2.Duration(seconds=3000))),
    ("ttft nanos", _set("time_to_first_token", duration_pb2.Duration(nanos=-1_000_000_000))),
    ("itl over an hour", _set("mean_inter_token_latency", duration_pb2.Duration(seconds=3601))),
    ("itl huge", _set("mean_inter_token_latency", duration_pb2.Duration(seconds=4_600_000_000_000_000_000))),
    ("gateway huge", _set("gateway_overhead", duration_pb2.Duration(seconds=10**15))),
    ("negative images", _set("media.images", -1)),
    ("nan audio", _set("media.audio_seconds", math.nan)),
    ("huge video", _set("media.video_seconds", 1e300)),
    ("characters", _set("media.characters", 10**10)),
]


def _extra(kind: str) -> Callable[[usage_pb2.UsageRecord], None]:
    def apply(rec: usage_pb2.UsageRecord) -> None:
        if kind == "no start":
            rec.ClearField("start_time")
        elif kind == "no end":
            rec.ClearField("end_time")
        elif kind == "bad metadata key":
            rec.metadata["bad key!"] = "x"
        elif kind == "long metadata value":
            rec.metadata["k"] = "v" * 1025
        elif kind == "nul metadata value":
            rec.metadata["k"] = "a\x00"
        elif kind == "many metadata keys":
            rec.metadata.update({f"k{i}": "v" for i in range(65)})
        elif kind == "breakdown off":
            rec.cost = 0.5
            rec.cost_breakdown.update({"input": 0.1})
        elif kind == "breakdown nan":
            rec.cost = 0.5
            rec.cost_breakdown.update({"input": math.nan})
        elif kind == "breakdown key":
            rec.cost = 0.5
            rec.cost_breakdown.update({"in put": 0.5})
        elif kind == "payload too big":
            rec.payload.request.string_value = "x" * 5000
        elif kind == "payload nan":
            rec.payload.request.CopyFrom(struct_pb2.Value(number_value=math.nan))
    return apply


BREAKING += [(k, _extra(k)) for k in (
    "no start", "no end", "bad metadata key", "long metadata value", "nul metadata value",
    "many metadata keys", "breakdown off", "breakdown nan", "breakdown key", "payload too big",
    "payload nan")]


