"""LiteLLM's StandardLoggingPayload as an llmmeter `UsageRecord`.

Pure functions of the dictionaries LiteLLM hands its callbacks (no LiteLLM
import), so the mapping is the same in the SDK and in the proxy and can be
read field by field against `protos/llmmeter/v1/usage.proto`. The result always
passes the ingest service's validation: texts are cut to their limits, token
parts never exceed their totals, the time to first token never exceeds the
latency, and the cost breakdown adds up to the cost.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2

from llmmeter.v1 import usage_pb2

_SHORT = 256
_ERROR_MESSAGE = 4096
_METADATA_KEYS = 64
_METADATA_VALUE = 1024
_MAX_PAYLOAD_BYTES = 1_000_000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")

#: LiteLLM call types (sync and async spellings) -> llmmeter's well-known `call_type` values.
CALL_TYPES = {
    "completion": "chat", "acompletion": "chat",
    "text_completion": "completion", "atext_completion": "completion",
    "embedding": "embedding", "aembedding": "embedding",
    "image_generation": "image_generation", "aimage_generation": "image_generation",
    "image_edit": "image_generation", "aimage_edit": "image_generation",
    "video_generation": "video_generation", "avideo_generation": "video_generation",
    "speech": "tts", "aspeech": "tts",
    "transcription": "asr", "atranscription": "asr",
    "moderation": "moderation", "amoderation": "moderation",
    "rerank": "rerank", "arerank": "rerank",
    "responses": "responses", "aresponses": "responses",
    "anthropic_messages": "chat",
}

#: Keys of the SDK's `metadata` argument that LiteLLM itself sets or reads; the others are the caller's own.
_INTERNAL_METADATA = re.compile(
    r"^(user_api_key|litellm|standard_|model_|deployment|hidden_params|headers|endpoint|caching_groups"
    r"|previous_models|api_base|requester_|spend_logs_metadata|global_max|proxy_server_request|tags$"
    r"|team_|user_agent|usage_object|applied_guardrails|mcp_|vector_store|routing|prompt_|cold_storage"
    r"|attempted_|max_retries|preset_cache_key|disable_|langfuse|guardrail)")


def _text(value: object, limit: int = _SHORT) -> str:
    """A string field's value: None and non-strings handled, cut to `limit` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: object) -> int:
    """A non-negative token count from whatever LiteLLM put there (None, int, float, numeric string)."""
    if isinstance(value, int | float | str):
        try:
            return max(0, int(float(value)) if not isinstance(value, int) else value)
        except (TypeError, ValueError, OverflowError):
            return 0
    return 0


def _money(value: object) -> float:
    """A finite, non-negative amount of USD; 0 for anything else."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def _epoch(value: object) -> float | None:
    """Seconds since the epoch from a float or a datetime."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _usage(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The provider's usage object, wherever this LiteLLM version put it."""
    for candidate in (_mapping(payload.get("hidden_params")).get("usage_object"),
                      _mapping(payload.get("metadata")).get("usage_object"),
                      _mapping(payload.get("response")).get("usage")):
        if isinstance(candidate, Mapping) and candidate:
            return candidate
    return {}


def _first(*values: object) -> str:
    """The first non-empty value, as text."""
    for value in values:
        if value not in (None, ""):
            return _text(value)
    return ""


def cost_breakdown(cost: float, breakdown: Mapping[str, Any]) -> dict[str, float]:
    """LiteLLM's cost breakdown as components that add up to `cost` (empty when they cannot).

    LiteLLM versions differ on whether `input_cost` includes the cache-read
    cost, and discounts and margins move the total: the components are
    checked against the cost, the cache parts folded into `input` when that is
    what adds up, a positive remainder becomes `other`, and a breakdown that
    exceeds the cost is left out rather than stored wrong.
    """
    if cost <= 0 or not breakdown:
        return {}
    parts = {
        "input": _money(breakdown.get("input_cost")),
        "cache_read": _money(breakdown.get("cache_read_cost")),
        "cache_write": _money(breakdown.get("cache_creation_cost")),
        "output": _money(breakdown.get("output_cost")),
        "tool_usage": _money(breakdown.get("tool_usage_cost")),
        "guardrail": _money(breakdown.get("guardrail_cost")),
        "margin": _money(breakdown.get("margin_total_amount")),
    }
    for name, value in _mapping(breakdown.get("additional_costs")).items():
        key = _BAD_KEY_CHARS.sub("_", str(name))[:48]
        parts[f"additional.{key}"] = parts.get(f"additional.{key}", 0.0) + _money(value)
    discount = _money(breakdown.get("discount_amount"))
    folded = {k: v for k, v in parts.items() if k not in ("cache_read", "cache_write")}
    for candidate in (parts, folded):
        total = math.fsum(candidate.values()) - discount
        if abs(total - cost) <= 1e-10:
            return _fit({k: v for k, v in candidate.items() if v > 0}, cost)
    for candidate in (parts, folded):
        rest = cost - math.fsum(candidate.values())
        if rest >= 0 and discount == 0:
            return _fit({k: v for k, v in candidate.items() if v > 0} | {"other": rest}, cost)
    return {}


def _fit(parts: dict[str, float], cost: float) -> dict[str, float]:
    """Moves the rounding error of the float sum onto the largest part, so fsum(parts) == cost."""
    parts = {k: v for k, v in parts.items() if v > 0}
    if not parts:
        return {}
    largest = max(parts, key=lambda k: parts[k])
    parts[largest] = max(0.0, parts[largest] + (cost - math.fsum(parts.values())))
    return parts if abs(math.fsum(parts.values()) - cost) <= 1e-9 else {}


def _metadata_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value[:_METADATA_VALUE]
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float | bool) for v in value):
        return ",".join(str(v) for v in value)[:_METADATA_VALUE]
    return None  # nested objects (headers, request bodies) are not copied into metadata


def _metadata(payload: Mapping[str, Any], kwargs: Mapping[str, Any], meta: Mapping[str, Any],
              extra: Mapping[str, str]) -> dict[str, str]:
    """LiteLLM ids and the caller's own metadata as a valid llmmeter metadata map."""
    out: dict[str, str] = {}

    def put(key: str, value: object) -> None:
        key = _BAD_KEY_CHARS.sub("_", key)[:64]
        text = _metadata_value(value)
        if key and text not in (None, "") and key not in out and len(out) < _METADATA_KEYS:
            out[key] = text

    for key, value in extra.items():
        put(key, value)
    put("litellm.call_id", payload.get("litellm_call_id"))
    put("litellm.trace_id", payload.get("trace_id"))
    put("litellm.session_id", payload.get("session_id"))
    put("litellm.call_type", payload.get("call_type"))
    put("litellm.team_id", meta.get("user_api_key_team_id") or meta.get("team_id"))
    put("litellm.org_id", meta.get("user_api_key_org_id"))
    put("litellm.org_alias", meta.get("user_api_key_org_alias"))
    put("litellm.project_id", meta.get("user_api_key_project_id"))
    put("litellm.user_id", meta.get("user_api_key_user_id"))
    put("litellm.user_agent", payload.get("user_agent") or meta.get("user_agent"))
    put("litellm.tags", payload.get("request_tags"))
    put("litellm.normalized_error", _mapping(payload.get("error_information")).get("normalized_error"))
    # The proxy passes the client's own metadata as requester_metadata and spend_logs_metadata; in the
    # SDK the caller's `metadata` argument arrives in litellm_params.metadata beside LiteLLM's own keys.
    for source in (meta.get("spend_logs_metadata"), meta.get("requester_metadata")):
        for key, value in _mapping(source).items():
            put(str(key), value)
    if not meta.get("requester_metadata"):
        sdk_meta = _mapping(_mapping(kwargs.get("litellm_params")).get("metadata"))
        for key, value in sdk_meta.items():
            if not _INTERNAL_METADATA.match(str(key)):
                put(str(key), value)
    return out


def _json_value(value: object) -> struct_pb2.Value | None:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        return None
    result = struct_pb2.Value()
    try:
        json_format.Parse(text, result)
    except json_format.ParseError:
        return None
    return result


def _retries(payload: Mapping[str, Any], kwargs: Mapping[str, Any]) -> int:
    headers = _mapping(_mapping(payload.get("hidden_params")).get("additional_headers"))
    litellm_meta = _mapping(_mapping(kwargs.get("litellm_params")).get("metadata"))
    payload_meta = _mapping(payload.get("metadata"))
    for value in (litellm_meta.get("attempted_retries"), payload_meta.get("attempted_retries"),
                  headers.get("x-litellm-attempted-retries"), headers.get("x_litellm_attempted_retries")):
        if value is not None:
            return min(_count(value), 2**31 - 1)
    return 0


def _status(payload: Mapping[str, Any], exception: BaseException | None,
            failed: bool) -> tuple[int, str, str]:
    """(status_code, error_type, error_message) of the call."""
    if not failed:
        return 200, "", ""
    info = _mapping(payload.get("error_information"))
    code = 0
    for candidate in (info.get("error_code"), getattr(exception, "status_code", None)):
        number = _count(candidate)
        if 100 <= number <= 599:
            code = number
            break
    if not 400 <= code <= 599:
        code = 500  # a failed call whose code says success or nothing: count it as a failure
    error_type = _first(info.get("error_class"), type(exception).__name__ if exception is not None else None,
                        "Error")
    message = info.get("error_message") or payload.get("error_str") or (str(exception) if exception else "")
    return code, error_type, _text(message, _ERROR_MESSAGE)


def usage_record(
    payload: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    start_time: object = None,
    end_time: object = None,
    failed: bool | None = None,
    log_payloads: bool = False,
    extra_metadata: Mapping[str, str] | None = None,
) -> usage_pb2.UsageRecord:
    """The `UsageRecord` of one LiteLLM call from its StandardLoggingPayload.

    `payload` is `kwargs["standard_logging_object"]` of LiteLLM's callbacks.

    `kwargs` are the callback's kwargs (for the exception, the SDK's metadata
    and a payload-less fallback); `start_time`/`end_time` the callback's
    arguments, used when the payload lacks them. `failed` overrides the
    payload's `status`. Request and response bodies are attached only with
    `log_payloads`.
    """
    payload = _mapping(payload)
    kwargs = _mapping(kwargs)
    meta = _mapping(payload.get("metadata"))
    hidden = _mapping(payload.get("hidden_params"))
    exception = kwargs.get("exception")
    exception = exception if isinstance(exception, BaseException) else None
    if failed is None:
        failed = payload.get("status") == "failure" or (not payload and exception is not None)

    start = _epoch(payload.get("startTime")) or _epoch(start_time) or _epoch(kwargs.get("start_time"))
    end = _epoch(payload.get("endTime")) or _epoch(end_time) or _epoch(kwargs.get("end_time"))
    if start is None:
        start = end if end is not None else datetime.now().timestamp()
    if end is None or end < start:
        end = start
    record = usage_pb2.UsageRecord(
        request_id=_first(payload.get("id"), payload.get("litellm_call_id"), kwargs.get("litellm_call_id"),
                          uuid.uuid4().hex),
    )
    record.start_time.FromNanoseconds(round(start * 1e6) * 1000)
    record.end_time.FromNanoseconds(max(round(end * 1e6), round(start * 1e6)) * 1000)
    latency_us = round(end * 1e6) - round(start * 1e6)
    record.streaming = bool(payload.get("stream") or kwargs.get("stream"))
    first_token = _epoch(payload.get("completionStartTime"))
    if record.streaming and not failed and first_token is not None and first_token >= start:
        ttft_us = round(first_token * 1e6) - round(start * 1e6)
        record.time_to_first_token.FromMicroseconds(min(ttft_us, latency_us))

    record.status_code, record.error_type, record.error_message = _status(payload, exception, failed)

    response = _mapping(payload.get("response"))
    record.model = _first(payload.get("model"), payload.get("model_group"), kwargs.get("model"), "unknown")
    record.response_model = _first(response.get("model"))
    record.model_alias = _first(payload.get("model_group"))
    record.provider = _first(payload.get("custom_llm_provider"), hidden.get("upstream_provider"))
    call_type = _text(payload.get("call_type") or kwargs.get("call_type"))
    record.call_type = CALL_TYPES.get(call_type, call_type)
    record.model_id = _first(payload.get("model_id"), hidden.get("model_id"))
    record.api_base = _first(payload.get("api_base"), hidden.get("api_base"))
    params = _mapping(payload.get("model_parameters"))
    record.user = _first(payload.get("end_user"), meta.get("user_api_key_end_user_id"), params.get("user"),
                         meta.get("user_api_key_user_id"))
    record.team = _first(meta.get("user_api_key_team_alias"), meta.get("team_alias"),
                         meta.get("user_api_key_team_id"), meta.get("team_id"))
    record.account = _first(meta.get("user_api_key_alias"), meta.get("user_api_key_hash"))
    record.client_ip = _first(meta.get("requester_ip_address"), payload.get("requester_ip_address"))

    usage = _usage(payload)
    record.input_tokens = _count(payload.get("prompt_tokens")) or _count(usage.get("prompt_tokens"))
    record.output_tokens = _count(payload.get("completion_tokens")) or _count(usage.get("completion_tokens"))
    prompt_details = _mapping(usage.get("prompt_tokens_details"))
    completion_details = _mapping(usage.get("completion_tokens_details"))
    cache_read = _count(prompt_details.get("cached_tokens")) or _count(usage.get("cache_read_input_tokens"))
    cache_write = (_count(usage.get("cache_creation_input_tokens"))
                   or _count(prompt_details.get("cache_creation_tokens")))
    record.cache_read_tokens = min(cache_read, record.input_tokens)
    record.cache_write_tokens = min(cache_write, record.input_tokens - record.cache_read_tokens)
    record.reasoning_tokens = min(_count(completion_details.get("reasoning_tokens")), record.output_tokens)

    if payload.get("response_cost") is not None:  # unset: "not known", priced by the service
        record.cost = _money(payload.get("response_cost"))
    record.cost_breakdown.update(cost_breakdown(record.cost, _mapping(payload.get("cost_breakdown"))))
    record.cache_hit = bool(payload.get("cache_hit"))
    overhead_ms = hidden.get("litellm_overhead_time_ms")
    if isinstance(overhead_ms, int | float) and math.isfinite(overhead_ms) and overhead_ms >= 0:
        record.gateway_overhead.FromMicroseconds(round(overhead_ms * 1000))
    record.retries = _retries(payload, kwargs)
    record.metadata.update(_metadata(payload, kwargs, meta, extra_metadata or {}))

    if log_payloads:
        request = _json_value({"messages": payload.get("messages")})
        answer = _json_value(payload.get("response"))
        if request is not None:
            record.payload.request.CopyFrom(request)
        if answer is not None:
            record.payload.response.CopyFrom(answer)
        if record.payload.ByteSize() > _MAX_PAYLOAD_BYTES:
            record.ClearField("payload")
            if len(record.metadata) < _METADATA_KEYS:
                record.metadata["llmmeter.payload"] = "dropped: larger than 1 MB"
    return record
