"""The demo generator must produce traffic the ingest service accepts and dashboards can trust.

These tests run without a server: they check determinism, the contract of
usage.proto (the same rules the ingest service enforces) and that the mix of
models, people, statuses and times looks like real traffic.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import islice

import pytest

from llmmeter.demo import generate_records
from llmmeter.v1 import usage_pb2

NOW = datetime(2025, 6, 18, 12, 30, tzinfo=UTC)
NOW_US = int(NOW.timestamp()) * 1_000_000
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _us(ts: object) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="module")
def records() -> list[usage_pb2.UsageRecord]:
    return list(generate_records(20_000, days=7, seed=7, now=NOW))


def contract_violations(rec: usage_pb2.UsageRecord) -> list[str]:
    """Every rule stated in the comments of usage.proto, as a list of broken ones."""
    problems = []
    if not rec.request_id or len(rec.request_id) > 256:
        problems.append("request_id")
    if not rec.HasField("start_time") or not rec.HasField("end_time"):
        problems.append("times")
    latency = _us(rec.end_time) - _us(rec.start_time)
    if latency < 0:
        problems.append("end_time")
    if rec.HasField("time_to_first_token") and _us(rec.time_to_first_token) > latency:
        problems.append("time_to_first_token")
    if not 100 <= rec.status_code <= 599:
        problems.append("status_code")
    if len(rec.error_message) > 4096:
        problems.append("error_message")
    if not rec.model:
        problems.append("model")
    counts = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
    if any(getattr(rec, name) < 0 for name in (*counts, "output_chunks", "retries")):
        problems.append("negative count")
    if rec.cache_read_tokens + rec.cache_write_tokens > rec.input_tokens:
        problems.append("cache tokens")
    if rec.reasoning_tokens > rec.output_tokens:
        problems.append("reasoning_tokens")
    if rec.cost < 0 or not math.isfinite(rec.cost):
        problems.append("cost")
    if rec.cost_breakdown:
        total = sum((Decimal(repr(v)) for v in rec.cost_breakdown.values()), Decimal(0))
        if abs(total - Decimal(repr(rec.cost))) > Decimal("1e-9"):
            problems.append("cost_breakdown")
    if len(rec.metadata) > 64 or any(
        not _METADATA_KEY.match(k) or len(v) > 1024 for k, v in rec.metadata.items()
    ):
        problems.append("metadata")
    return problems


def test_same_seed_and_now_give_the_same_records() -> None:
    first = [r.SerializeToString(deterministic=True) for r in generate_records(300, seed=3, now=NOW)]
    again = [r.SerializeToString(deterministic=True) for r in generate_records(300, seed=3, now=NOW)]
    other = [r.SerializeToString(deterministic=True) for r in generate_records(300, seed=4, now=NOW)]
    assert first == again
    assert first != other


def test_generation_is_lazy() -> None:
    assert len(list(islice(generate_records(10**12, seed=1, now=NOW), 5))) == 5


def test_rejects_nonsense_arguments() -> None:
    with pytest.raises(ValueError):
        list(generate_records(-1))
    with pytest.raises(ValueError):
        list(generate_records(1, days=0))


def test_every_record_satisfies_the_contract(records: list[usage_pb2.UsageRecord]) -> None:
    broken = {r.request_id: p for r in records if (p := contract_violations(r))}
    assert broken == {}


def test_cost_breakdown_sums_to_cost(records: list[usage_pb2.UsageRecord]) -> None:
    billed = [r for r in records if r.cost > 0]
    assert len(billed) > len(records) * 0.8
    for rec in records:
        assert math.isclose(math.fsum(rec.cost_breakdown.values()), rec.cost, rel_tol=0, abs_tol=1e-12)
    keys = Counter(k for r in records for k in r.cost_breakdown)
    assert {"input", "output", "cache_read", "cache_write", "images"} <= set(keys)


def test_times_are_in_the_window_and_never_in_the_future(records: list[usage_pb2.UsageRecord]) -> None:
    oldest = NOW_US - 7 * 86_400 * 1_000_000
    for rec in records:
        assert oldest <= _us(rec.start_time) <= _us(rec.end_time) <= NOW_US


def test_streaming_calls_have_a_ttft_below_the_latency(records: list[usage_pb2.UsageRecord]) -> None:
    chat = [r for r in records if r.call_type == "chat" and r.status_code == 200 and not r.cache_hit]
    streamed = [r for r in chat if r.streaming]
    assert 0.6 < len(streamed) / len(chat) < 0.9
    for rec in streamed:
        assert rec.HasField("time_to_first_token") and rec.output_chunks >= 1
        assert _us(rec.time_to_first_token) < _us(rec.end_time) - _us(rec.start_time)
    assert not any(r.HasField("time_to_first_token") for r in records if not r.streaming)


def test_status_mix_and_failed_calls(records: list[usage_pb2.UsageRecord]) -> None:
    share = {code: n / len(records) for code, n in Counter(r.status_code for r in records).items()}
    assert 0.02 < share[429] < 0.04
    assert 0.01 < share[500] + share[503] < 0.02
    assert 0.005 < share[400] < 0.015
    assert 0 < share[408] < 0.01
    for rec in (r for r in records if r.status_code != 200):
        assert rec.output_tokens == 0 and rec.cost == 0 and rec.error_type and rec.error_message
    types = {r.status_code: r.error_type for r in records if r.status_code != 200}
    assert types[429] == "RateLimitError" and types[400] == "BadRequestError" and types[408] == "Timeout"


def test_models_providers_and_call_types(records: list[usage_pb2.UsageRecord]) -> None:
    pairs = {(r.model, r.provider, r.call_type) for r in records}
    assert {
        ("gpt-4o", "openai", "chat"),
        ("gpt-4o-mini", "openai", "chat"),
        ("claude-sonnet-4", "anthropic", "chat"),
        ("claude-haiku", "anthropic", "chat"),
        ("gemini-2.5-flash", "google", "chat"),
        ("llama-3.1-70b", "groq", "chat"),
        ("text-embedding-3-small", "openai", "embedding"),
        ("dall-e-3", "openai", "image_generation"),
    } <= pairs
    ok = [r for r in records if r.status_code == 200]
    assert all(r.output_tokens == 0 for r in ok if r.call_type == "embedding")
    assert all(r.media.images >= 1 for r in ok if r.call_type == "image_generation")
    assert any(r.model_alias for r in records) and any(r.response_model != r.model for r in ok)
    assert sum(r.reasoning_tokens > 0 for r in records) > 100
    assert sum(r.cache_read_tokens > 0 for r in records) > 100
    assert sum(r.cache_write_tokens > 0 for r in records) > 10


def test_people_metadata_and_payloads(records: list[usage_pb2.UsageRecord]) -> None:
    assert 35 <= len({r.user for r in records}) <= 45
    assert len({r.team for r in records}) == 6
    assert len({r.account for r in records}) == 10
    assert len({r.request_id for r in records}) == len(records)
    assert all(r.request_id.startswith(("chatcmpl-", "msg_", "gen-", "embd-", "img-")) for r in records)
    assert {r.metadata["environment"] for r in records} == {"prod", "staging"}
    assert all("feature" in r.metadata for r in records)
    assert sum("tenant" in r.metadata for r in records) > len(records) * 0.6
    assert all(r.client_ip for r in records) and any(":" in r.client_ip for r in records)
    with_payload = [r for r in records if r.HasField("payload")]
    assert 0.02 < len(with_payload) / len(records) < 0.1
    chat = next(r for r in with_payload if r.call_type == "chat" and r.status_code == 200)
    messages = chat.payload.request.struct_value.fields["messages"].list_value.values
    assert [m.struct_value.fields["role"].string_value for m in messages] == ["system", "user"]


def test_traffic_follows_the_day(records: list[usage_pb2.UsageRecord]) -> None:
    hours = Counter(datetime.fromtimestamp(r.start_time.seconds, UTC).hour for r in records)
    afternoon = sum(hours[h] for h in range(13, 18))
    night = sum(hours[h] for h in range(1, 6))
    assert afternoon > 3 * night > 0


def test_latencies_are_plausible_per_model(records: list[usage_pb2.UsageRecord]) -> None:
    def median_latency(model: str) -> float:
        values = sorted(
            (_us(r.end_time) - _us(r.start_time)) / 1e6
            for r in records
            if r.model == model and r.status_code == 200 and not r.cache_hit
        )
        return values[len(values) // 2]

    assert median_latency("text-embedding-3-small") < 0.5
    assert 1 < median_latency("gpt-4o") < 20
    assert median_latency("llama-3.1-70b") < median_latency("claude-sonnet-4")
    assert median_latency("dall-e-3") > 5
    assert max(_us(r.end_time) - _us(r.start_time) for r in records) < timedelta(minutes=10) / timedelta(
        microseconds=1
    )
