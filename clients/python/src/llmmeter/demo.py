"""Synthetic but realistic LLM traffic for `llmmeter demo`, as a pure seeded generator.

Dashboards, alerts and queries can only be judged on data that looks like
production: a daily rhythm, a long tail of users, models with their real list
prices and speeds, streaming, prompt caching, reasoning, and a few percent of
failures. Everything random comes from one `random.Random(seed)`, so the same
seed and `now` give the same records, and the generator needs no server.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import accumulate

from google.protobuf import duration_pb2, json_format, timestamp_pb2

from llmmeter.demo_data import (
    ANSWERS,
    API_BASES,
    ERRORS,
    FIRST_NAMES,
    MODELS,
    REQUEST_ID_PREFIXES,
    TEAMS,
    TENANTS,
    USER_PROMPTS,
    ModelProfile,
    Team,
)
from llmmeter.v1 import usage_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000
_MILLION = Decimal(1_000_000)
_COST_QUANTUM = Decimal("1e-10")
_PAYLOAD_SHARE = 0.05
_STREAMING_SHARE = 0.75
_GATEWAY_CACHE_HIT_SHARE = 0.02
# Cumulative shares of failures, by status code (the rest succeeds).
_FAILURES = ((0.030, 429), (0.0375, 500), (0.045, 503), (0.055, 400), (0.060, 408))
_ERROR_LATENCY_S = {429: 0.08, 500: 2.0, 503: 0.4, 400: 0.15}


@dataclass(frozen=True)
class _User:
    """A caller: who, in which team, from where, and how busy."""

    name: str
    team: Team
    client_ip: str
    weight: float


def _users() -> list[_User]:
    """Builds the ~40 callers over the teams, with a long-tailed activity and varied address families."""
    users = []
    for i, first in enumerate(FIRST_NAMES):
        if i % 8 == 7:
            ip = f"2001:db8:{i:x}:4a::{(i * 37) % 4096:x}"
        elif i % 3 == 0:
            ip = f"203.0.113.{(i * 7) % 250 + 2}"
        else:
            ip = f"10.{20 + i % 5}.{(i * 11) % 250}.{(i * 37) % 250 + 2}"
        users.append(_User(f"{first}@example.com", TEAMS[i % len(TEAMS)], ip, 1.0 / (i + 1) ** 0.8))
    return users


def generate_records(
    count: int, *, days: float = 7.0, seed: int | None = None, now: datetime | None = None
) -> Iterator[usage_pb2.UsageRecord]:
    """Yields `count` valid usage records spread over the `days` before `now` (default: the current time).

    Records are generated lazily, one at a time, so any `count` fits in memory.
    Every `end_time` is at or before `now`, and every record satisfies the
    contract in `usage.proto` (cost components add up to `cost`, TTFT within
    the latency, token parts within their totals).
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if not days > 0:
        raise ValueError(f"days must be positive, got {days}")
    rng = random.Random(seed)
    moment = now if now is not None else datetime.now(UTC)
    now_us = (moment - _EPOCH) // timedelta(microseconds=1)
    users = _users()
    user_weights = list(accumulate(u.weight for u in users))
    model_weights = {
        team.name: list(accumulate(m.weight * team.model_boost.get(m.model, 1.0) for m in MODELS))
        for team in TEAMS
    }
    for _ in range(count):
        user = rng.choices(users, cum_weights=user_weights)[0]
        model = rng.choices(MODELS, cum_weights=model_weights[user.team.name])[0]
        yield _record(rng, user, model, now_us, days)


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    """Samples a lognormal value by its median, the natural parameter for latencies and sizes."""
    return rng.lognormvariate(math.log(median), sigma)


def _start_us(rng: random.Random, now_us: int, days: float) -> int:
    """Samples a start time with a diurnal rhythm (peak mid-afternoon UTC) and quieter weekends."""
    span_us = int(days * 86_400 * _US)
    while True:
        start = now_us - rng.randrange(1, span_us + 1)
        moment = _EPOCH + timedelta(microseconds=start)
        hour = moment.hour + moment.minute / 60
        weight = 0.12 + 0.88 * math.exp(-(((hour - 15.0) / 4.5) ** 2))
        if moment.weekday() >= 5:
            weight *= 0.45
        if rng.random() < weight:
            return start


def _status(rng: random.Random) -> int:
    """Draws the HTTP status: mostly 200, a few percent of rate limits, provider errors and timeouts."""
    draw = rng.random()
    return next((code for share, code in _FAILURES if draw < share), 200)


def _ts(us: int) -> timestamp_pb2.Timestamp:
    """Converts microseconds since the epoch to a Timestamp."""
    return timestamp_pb2.Timestamp(seconds=us // _US, nanos=(us % _US) * 1000)


def _dur(us: int) -> duration_pb2.Duration:
    """Converts non-negative microseconds to a Duration."""
    return duration_pb2.Duration(seconds=us // _US, nanos=(us % _US) * 1000)


def _record(
    rng: random.Random, user: _User, model: ModelProfile, now_us: int, days: float
) -> usage_pb2.UsageRecord:
    """Draws one call of `user` to `model`."""
    team = user.team
    status = _status(rng)
    feature = "ad-images" if model.call_type == "image_generation" else rng.choice(team.features)
    metadata = {"environment": "prod" if rng.random() < 0.85 else "staging", "feature": feature}
    if rng.random() < 0.8:
        metadata["tenant"] = rng.choice(TENANTS)
    rec = usage_pb2.UsageRecord(
        request_id=REQUEST_ID_PREFIXES[model.call_type][model.provider] + f"{rng.getrandbits(120):030x}",
        status_code=status,
        model=model.model,
        model_alias=rng.choice(model.aliases) if rng.random() < 0.7 else "",
        provider=model.provider,
        call_type=model.call_type,
        model_id=f"{model.provider}/{model.model}",
        api_base=API_BASES[model.provider],
        user=user.name,
        team=team.name,
        account=rng.choice(team.accounts),
        client_ip=user.client_ip,
        metadata=metadata,
        gateway_overhead=_dur(int(_lognormal(rng, 4_000, 0.5))),
    )
    if model.input_median:
        rec.input_tokens = max(5, min(200_000, int(_lognormal(rng, model.input_median, 0.9))))
    latency_us = _fill_success(rng, rec, model) if status == 200 else _fill_failure(rng, rec, model)
    start = _start_us(rng, now_us, days)
    start = min(start, now_us - latency_us)
    rec.start_time.CopyFrom(_ts(start))
    rec.end_time.CopyFrom(_ts(start + latency_us))
    if rng.random() < _PAYLOAD_SHARE:
        _fill_payload(rng, rec)
    return rec


def _fill_success(rng: random.Random, rec: usage_pb2.UsageRecord, model: ModelProfile) -> int:
    """Fills tokens, timing, streaming and cost of a successful call; returns its latency in microseconds."""
    rec.response_model = model.response_model
    rec.retries = rng.choice((1, 2)) if rng.random() < 0.03 else 0
    if model.call_type == "image_generation":
        rec.media.images = rng.choice((1, 1, 1, 2))
        _set_cost(rec, {"images": model.image_price * rec.media.images})
        return int(_lognormal(rng, model.latency_s, 0.3) * _US)
    if model.call_type == "embedding":
        _set_cost(rec, {"input": model.input_price * rec.input_tokens / _MILLION})
        return int((_lognormal(rng, model.latency_s, 0.4) + rec.input_tokens / 50_000) * _US)
    rec.output_tokens = max(1, min(8_192, int(_lognormal(rng, model.output_median, 0.8))))
    if rng.random() < model.reasoning_share:
        rec.reasoning_tokens = max(16, int(_lognormal(rng, 700, 0.9)))
        rec.output_tokens += rec.reasoning_tokens
    if model.cache_read_price and rec.input_tokens >= 1024 and rng.random() < 0.35:
        rec.cache_read_tokens = int(rec.input_tokens * rng.uniform(0.3, 0.9))
    if model.cache_write_price and rng.random() < 0.15:
        rec.cache_write_tokens = int((rec.input_tokens - rec.cache_read_tokens) * rng.uniform(0.2, 0.8))
    speed = model.tokens_per_s * _lognormal(rng, 1.0, 0.25)
    ttft_us = int((_lognormal(rng, model.latency_s, 0.45) + rec.reasoning_tokens / speed) * _US)
    latency_us = ttft_us + max(1_000, int((rec.output_tokens - rec.reasoning_tokens) / speed * _US))
    if rng.random() < _GATEWAY_CACHE_HIT_SHARE:
        rec.cache_hit = True  # served by the gateway: fast and free
        return int(_lognormal(rng, 0.012, 0.4) * _US)
    if rng.random() < _STREAMING_SHARE:
        rec.streaming = True
        rec.time_to_first_token.CopyFrom(_dur(ttft_us))
        rec.output_chunks = max(1, math.ceil(rec.output_tokens / rng.choice((1, 1, 1, 2, 3))))
    uncached = rec.input_tokens - rec.cache_read_tokens - rec.cache_write_tokens
    components = {
        "input": model.input_price * uncached,
        "output": model.output_price * rec.output_tokens,
        "cache_read": model.cache_read_price * rec.cache_read_tokens,
        "cache_write": model.cache_write_price * rec.cache_write_tokens,
    }
    _set_cost(rec, {key: value / _MILLION for key, value in components.items()})
    return latency_us


def _fill_failure(rng: random.Random, rec: usage_pb2.UsageRecord, model: ModelProfile) -> int:
    """Fills error class and message of a failed call (no output, not billed); returns its latency in µs."""
    error_type, template = ERRORS[rec.status_code]
    if rec.status_code == 408:
        seconds = rng.choice((30.0, 60.0, 120.0)) + rng.uniform(0, 0.5)
    else:
        seconds = _lognormal(rng, _ERROR_LATENCY_S[rec.status_code], 0.5)
    if rec.status_code == 429:
        rec.retries = rng.choice((0, 1, 2, 3))
    rec.error_type = error_type
    rec.error_message = template.format(
        model=model.model, provider=model.provider, tokens=rec.input_tokens + 128_000, seconds=seconds
    )
    return int(seconds * _US)


def _set_cost(rec: usage_pb2.UsageRecord, components: dict[str, Decimal]) -> None:
    """Rounds each non-zero component to 1e-10 USD and sets `cost` to their exact sum."""
    rounded = {k: v.quantize(_COST_QUANTUM) for k, v in components.items() if v > 0}
    for key, value in rounded.items():
        rec.cost_breakdown[key] = float(value)
    rec.cost = float(sum(rounded.values(), Decimal(0)))


def _fill_payload(rng: random.Random, rec: usage_pb2.UsageRecord) -> None:
    """Attaches request and response bodies shaped like the provider's API."""
    prompt = rng.choice(USER_PROMPTS)
    if rec.call_type == "embedding":
        request: dict[str, object] = {"model": rec.model, "input": [prompt]}
        response: dict[str, object] = {
            "object": "list",
            "data": [{"index": 0, "embedding": [round(rng.uniform(-0.1, 0.1), 6) for _ in range(8)]}],
        }
    elif rec.call_type == "image_generation":
        request = {"model": rec.model, "prompt": prompt, "n": rec.media.images, "size": "1024x1024"}
        response = {"data": [{"url": f"https://images.example.com/{rng.getrandbits(64):016x}.png"}]}
    else:
        messages = [
            {"role": "system", "content": f"You help with {rec.metadata['feature']}."},
            {"role": "user", "content": prompt},
        ]
        request = {"model": rec.model_alias or rec.model, "messages": messages, "stream": rec.streaming}
        response = {
            "id": rec.request_id,
            "model": rec.response_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": rng.choice(ANSWERS)},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": rec.input_tokens, "completion_tokens": rec.output_tokens},
        }  # fmt: skip
    if rec.status_code != 200:
        response = {"error": {"type": rec.error_type, "message": rec.error_message}}
    json_format.ParseDict(request, rec.payload.request)
    json_format.ParseDict(response, rec.payload.response)
