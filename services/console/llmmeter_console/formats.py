"""Numbers with their units, the same way on every page (and the same as the CLI's tables)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment

from llmmeter.cli.render import fmt_cost, fmt_int, fmt_ms, fmt_pct
from llmmeter.v1 import alerts_pb2, query_pb2


def when(ts: Timestamp) -> str:
    """`2026-12-04 03:20:39 UTC`."""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC") if ts.seconds else "-"


def tokens(value: float) -> str:
    """`1,234 tokens`."""
    return f"{fmt_int(value)} tokens"


def method(name: str | int) -> str:
    """How the percentiles were computed, as the API says."""
    if isinstance(name, int):
        name = query_pb2.PercentileMethod.Name(name)  # type: ignore[arg-type]
    return {"PERCENTILE_METHOD_EXACT": "exact", "PERCENTILE_METHOD_ESTIMATED": "estimated (within 0.5%)"
            }.get(name, "no data")


def row_dict(row: query_pb2.RequestRow) -> dict[str, Any]:
    """A request-log row as the table shows it (the live tail sends the same to the browser)."""
    return {
        "request_id": row.request_id, "time": when(row.start_time), "status": row.status_code,
        "success": row.success, "model": row.model, "prompt": fmt_int(row.input_tokens),
        "completion": fmt_int(row.output_tokens), "total": fmt_int(row.total_tokens),
        "latency": fmt_ms(row.latency_ms), "ttft": fmt_ms(row.ttft_ms) if row.ttft_measured else "-",
        "spend": fmt_cost(row.cost), "user": row.user, "team": row.team,
    }


def _enum_name(enum: Any, prefix: str) -> Any:
    def name(value: int) -> str:
        return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", " ")
    return name


def register(env: Environment) -> None:
    """The template filters: `cost`, `ms`, `pct`, `int`, `tokens`, `when`, `method`, `row`, and the
    alert enums by name."""
    env.filters.update(cost=fmt_cost, ms=fmt_ms, pct=fmt_pct, int=fmt_int, tokens=tokens, when=when,
                       method=method, row=row_dict,
                       alert_state=_enum_name(alerts_pb2.AlertState, "ALERT_STATE_"),
                       severity=_enum_name(alerts_pb2.Severity, "SEVERITY_"),
                       event_kind=_enum_name(alerts_pb2.AlertEventKind, "ALERT_EVENT_KIND_"))
