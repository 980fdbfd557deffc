"""What `llmmeter logs` prints for people: the request table, one request in full, and tail lines.

`list` and `tail` show the same columns of a request row, one as a rich
table and one as fixed-width lines that can be printed as they arrive; both
take their cells from one function so the two views never disagree on how a
value is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.json import JSON
from rich.table import Table

from llmmeter.cli.render import console, fmt_cost, fmt_int, fmt_ms, message_json
from llmmeter.timeparse import format_timestamp
from llmmeter.v1 import query_pb2

#: Columns the `logs list` table can show: name -> (title, cell key, justify).
TABLE_COLUMNS: dict[str, tuple[str, str, str]] = {
    "time": ("Time", "start_time", "left"),
    "status": ("Status", "status", "right"),
    "model": ("Model", "model", "left"),
    "user": ("User", "user", "left"),
    "team": ("Team", "team", "left"),
    "prompt": ("Prompt", "in", "right"),
    "completion": ("Completion", "out", "right"),
    "total": ("Total", "total", "right"),
    "latency": ("Latency", "latency", "right"),
    "ttft": ("TTFT", "ttft", "right"),
    "spend": ("Spend", "cost", "right"),
    "error_type": ("Error", "error_type", "left"),
    "request": ("Request", "request_id", "left"),
}
#: What `logs list` shows by default: the product pages' request table, readable in 100 columns.
DEFAULT_COLUMNS = ("time", "status", "prompt", "completion", "total", "latency", "spend", "request")

#: Columns of a `logs tail` table line: (title, width, right-aligned); the last one is not padded.
_TAIL_COLUMNS = (
    ("start_time", 24, False),
    ("status", 6, True),
    ("model", 20, False),
    ("user", 12, False),
    ("team", 12, False),
    ("in", 8, True),
    ("out", 8, True),
    ("latency", 9, True),
    ("ttft", 9, True),
    ("cost", 11, True),
    ("error_type", 18, False),
    ("request_id", 0, False),
)


def _cells(r: query_pb2.RequestRow) -> dict[str, str]:
    """The text of each column of a request row, by column title."""
    return {
        "start_time": format_timestamp(r.start_time),
        "request_id": r.request_id,
        "status": str(r.status_code),
        "model": r.model,
        "user": r.user,
        "team": r.team,
        "in": fmt_int(r.input_tokens),
        "out": fmt_int(r.output_tokens),
        "total": fmt_int(r.total_tokens),
        "latency": fmt_ms(r.latency_ms),
        "ttft": fmt_ms(r.ttft_ms) if r.ttft_measured else "-",
        "cost": fmt_cost(r.cost),
        "error_type": r.error_type,
    }


def rows_table(rows: Iterable[query_pb2.RequestRow], columns: Iterable[str] = DEFAULT_COLUMNS) -> Table:
    """A page of the request log as a table of `columns` (names of TABLE_COLUMNS); failed requests
    have their status in red."""
    chosen = [TABLE_COLUMNS[c] for c in columns]
    table = Table()
    for title, _, justify in chosen:
        table.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        cells = _cells(r)
        if not r.success:
            cells["status"] = f"[red]{r.status_code}[/]"
        table.add_row(*(cells[key] for _, key, _ in chosen))
    return table


def _tail_line(cells: list[str]) -> str:
    parts = []
    for (_, width, right), cell in zip(_TAIL_COLUMNS, cells, strict=True):
        if width and len(cell) > width:
            cell = cell[: width - 1] + "…"
        parts.append(cell.rjust(width) if right else cell.ljust(width))
    return "  ".join(parts).rstrip()


def tail_header() -> str:
    """The title line printed above the rows of `logs tail`."""
    return _tail_line([title for title, _, _ in _TAIL_COLUMNS])


def tail_row(r: query_pb2.RequestRow) -> str:
    """One request as a fixed-width `logs tail` line, cut to fit its columns."""
    cells = _cells(r)
    cells["error_type"] = r.error_type or "-"
    return _tail_line([cells[title] for title, _, _ in _TAIL_COLUMNS])


def _duration_ms(message: Any, name: str) -> str:
    if not message.HasField(name):
        return "-"
    return fmt_ms(getattr(message, name).ToMicroseconds() / 1000)


def _streaming(rec: Any) -> str:
    if not rec.streaming:
        return "no"
    return f"yes, {fmt_int(rec.output_chunks)} chunks" if rec.output_chunks else "yes"


def show_request(response: query_pb2.GetRequestResponse) -> None:
    """Prints one request in full: its fields, cost breakdown, metadata and payloads."""
    out = console()
    rec = response.record
    ok = 200 <= rec.status_code < 400
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    model = rec.model
    if rec.response_model not in ("", rec.model):
        model += f" (answered by {rec.response_model})"
    status = str(rec.status_code) if ok else f"[red]{rec.status_code}[/] {rec.error_type}".rstrip()
    fields: list[tuple[str, str]] = [
        ("request_id", rec.request_id),
        ("start_time", format_timestamp(rec.start_time)),
        ("end_time", format_timestamp(rec.end_time)),
        ("stored", format_timestamp(response.ingest_time)),
        ("status", status),
        ("error", rec.error_message),
        ("model", model),
        ("model_alias", rec.model_alias),
        ("model_id", rec.model_id),
        ("provider", rec.provider),
        ("api_base", rec.api_base),
        ("call_type", rec.call_type),
        ("user", rec.user),
        ("team", rec.team),
        ("account", rec.account),
        ("client_ip", rec.client_ip),
        ("streaming", _streaming(rec)),
        (
            "input tokens",
            f"{fmt_int(rec.input_tokens)} (cache read {fmt_int(rec.cache_read_tokens)}, "
            f"cache write {fmt_int(rec.cache_write_tokens)})",
        ),
        ("output tokens", f"{fmt_int(rec.output_tokens)} (reasoning {fmt_int(rec.reasoning_tokens)})"),
        ("latency", fmt_ms(response.latency_ms)),
        ("time to first token", _duration_ms(rec, "time_to_first_token")),
        ("inter-token latency", fmt_ms(response.itl_ms) if response.itl_ms else "-"),
        ("time per output token", fmt_ms(response.tpot_ms) if response.tpot_ms else "-"),
        ("gateway overhead", _duration_ms(rec, "gateway_overhead")),
        ("retries", str(rec.retries)),
        ("cache hit", "yes" if rec.cache_hit else "no"),
        ("cost", fmt_cost(rec.cost) + " USD"),
    ]
    media = rec.media
    for name, amount, text in (
        ("images", media.images, fmt_int(media.images)),
        ("audio", media.audio_seconds, f"{media.audio_seconds:,.1f} s"),
        ("video", media.video_seconds, f"{media.video_seconds:,.1f} s"),
        ("characters", media.characters, fmt_int(media.characters)),
    ):
        if amount:
            fields.append((name, text))
    for name, value in fields:
        if value:
            grid.add_row(name, value)
    out.print(grid)
    if rec.cost_breakdown:
        costs = Table("cost component", "USD", title="cost breakdown", title_justify="left")
        for component, usd in sorted(rec.cost_breakdown.items()):
            costs.add_row(component, fmt_cost(usd))
        out.print(costs)
    if rec.metadata:
        meta = Table("key", "value", title="metadata", title_justify="left")
        for key, value in sorted(rec.metadata.items()):
            meta.add_row(key, value)
        out.print(meta)
    parts = [part for part in ("request", "response") if rec.payload.HasField(part)]
    for part in parts:
        out.print(f"[bold]{part} payload[/]")
        out.print(JSON(message_json(getattr(rec.payload, part))))
    if not parts:
        out.print("[dim]no payload stored[/]")
