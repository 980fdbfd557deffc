"""Database rows to llmmeter.v1 messages, and request timestamps to datetimes.

Kept apart from the servicer so the mapping of every stored column back to
its proto field is in one place (GetRequest returns every stored field).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from llmmeter.v1 import query_pb2, usage_pb2


def ts(t: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp."""
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def opt_time(msg: Any, field: str) -> datetime | None:
    """A Timestamp field as an aware datetime, None when unset."""
    if not msg.HasField(field):
        return None
    return getattr(msg, field).ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def request_row(r: Any) -> query_pb2.RequestRow:
    """One request-log row."""
    status = r["status_code"]
    return query_pb2.RequestRow(
        request_id=r["request_id"], start_time=ts(r["start_time"]), status_code=status,
        success=200 <= status < 400, model=r["model"], provider=r["provider"], user=r["user_name"],
        team=r["team"], input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
        total_tokens=r["input_tokens"] + r["output_tokens"], latency_ms=r["latency_us"] / 1000,
        ttft_ms=(r["ttft_us"] or 0) / 1000, cost=float(r["cost"]), error_type=r["error_type"],
        ttft_measured=r["ttft_us"] is not None, cost_source=r["cost_source"],
    )


def _value(raw: str | None) -> struct_pb2.Value | None:
    if raw is None:
        return None
    value = struct_pb2.Value()
    json_format.Parse(raw, value)
    return value


def _set_duration_us(field: Any, us: int | float | None) -> None:
    if us is not None:
        field.FromMicroseconds(int(us))


def usage_record(r: Any) -> usage_pb2.UsageRecord:
    """Every stored field of a request, back as the record that was sent (IP as stored)."""
    rec = usage_pb2.UsageRecord(
        request_id=r["request_id"], start_time=ts(r["start_time"]), end_time=ts(r["end_time"]),
        streaming=r["streaming"], output_chunks=r["output_chunks"], status_code=r["status_code"],
        error_type=r["error_type"], error_message=r["error_message"], model=r["model"],
        response_model=r["response_model"], model_alias=r["model_alias"], provider=r["provider"],
        call_type=r["call_type"], model_id=r["model_id"], api_base=r["api_base"], user=r["user_name"],
        team=r["team"], account=r["account"], client_ip=r["client_ip"],
        input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
        cache_read_tokens=r["cache_read_tokens"], cache_write_tokens=r["cache_write_tokens"],
        reasoning_tokens=r["reasoning_tokens"],
        media=usage_pb2.MediaUsage(images=r["images"], audio_seconds=float(r["audio_seconds"]),
                                   video_seconds=float(r["video_seconds"]), characters=r["characters"]),
        cost=float(r["cost"]), cost_breakdown=json.loads(r["cost_breakdown"]), cache_hit=r["cache_hit"],
        retries=r["retries"], metadata=json.loads(r["metadata"]),
    )
    _set_duration_us(rec.time_to_first_token, r["ttft_us"])
    _set_duration_us(rec.gateway_overhead, r["gateway_overhead_us"])
    request, response = _value(r["payload_request"]), _value(r["payload_response"])
    if request is not None:
        rec.payload.request.CopyFrom(request)
    if response is not None:
        rec.payload.response.CopyFrom(response)
    return rec
