"""Output of the read commands (`usage`, `logs`): table, JSON and CSV, charts.

`--format json` is the response message in protobuf's JSON mapping with the
proto field names and every field present, so scripts can rely on the keys;
`--format csv` is one header row and a row per item with the same names
(nested fields joined by dots); `--format table` is for people and may
round, abbreviate and leave columns out. Export files are in
:mod:`llmmeter.cli.exports`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, Literal

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console

Format = Literal["table", "json", "csv"]
FORMATS: tuple[str, ...] = ("table", "json", "csv")

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_BLOCKS = "▁▂▃▄▅▆▇█"
_PIPED_WIDTH = 160


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--format table|json|csv` (default table)."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="a table for people (default), the response as JSON (proto field names), or CSV rows",
    )


def console(stderr: bool = False) -> Console:
    """A rich console; when the output is piped, wide enough that tables keep whole values."""
    out = Console(stderr=stderr, soft_wrap=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = max(out.width, _PIPED_WIDTH)
    return out


def message_dict(message: Message) -> dict[str, Any]:
    """A message in protobuf's JSON mapping (proto field names, default values included) as a dict."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def message_json(message: Message, indent: int | None = 2) -> str:
    """A message in protobuf's JSON mapping (proto field names, default values included)."""
    text = json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=indent,
        ensure_ascii=False,
    )
    if indent is None:  # MessageToJson pads separators even without indentation
        text = json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    return text


def print_json(message: Message) -> None:
    """Prints a message as indented JSON on stdout."""
    sys.stdout.write(message_json(message) + "\n")


_FREE_FORM = ("metadata", "cost_breakdown", "payload")


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists and free-form maps (metadata, payload) become JSON text."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item and key not in _FREE_FORM:
            out.update(flatten(item, f"{name}."))
        elif isinstance(item, (Mapping, list)):
            out[name] = json.dumps(item, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        else:
            out[name] = item
    return out


def message_row(message: Message) -> dict[str, Any]:
    """A message as one flat CSV row, keyed like its JSON mapping."""
    return flatten(message_dict(message))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """A cell made inert in spreadsheets: text starting with `= + - @`, tab or CR gets a `'`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


class CsvOut:
    """CSV rows on stdout with a header taken from the first row's keys."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._writer = csv.writer(stream or sys.stdout, lineterminator="\n")
        self._header: list[str] | None = None

    def header(self, names: Sequence[str]) -> None:
        """Writes the header now (e.g. for an empty result)."""
        if self._header is None:
            self._header = list(names)
            self._writer.writerow(self._header)

    def row(self, row: Mapping[str, Any]) -> None:
        """Writes one row, in the header's column order."""
        self.header(list(row))
        assert self._header is not None
        self._writer.writerow([csv_cell(row.get(name, "")) for name in self._header])


def write_csv(rows: Iterable[Mapping[str, Any]], header: Sequence[str] = ()) -> None:
    """Writes rows as CSV on stdout; `header` is used when there are no rows."""
    out = CsvOut()
    for row in rows:
        out.row(row)
    if header:
        out.header(header)
    sys.stdout.flush()


def print_response(
    message: Message,
    output_format: str,
    *,
    csv_rows: Callable[[], Iterable[Mapping[str, Any]]],
    table: Callable[[], None],
    csv_header: Sequence[str] = (),
) -> None:
    """Prints a response in the `--format` asked for, so every read command maps the formats alike.

    `json` is the whole message, `csv` the rows `csv_rows()` makes (with
    `csv_header` when there are none), `table` whatever `table()` prints.
    """
    if output_format == "json":
        print_json(message)
    elif output_format == "csv":
        write_csv(csv_rows(), header=csv_header)
    else:
        table()


def field_names(message_type: type[Message]) -> list[str]:
    """The top-level field names of a message type, for the header of an empty CSV."""
    return [f.name for f in message_type.DESCRIPTOR.fields]


# numbers for people


def fmt_int(value: int | float) -> str:
    """`1,234`."""
    return f"{int(value):,}"


def fmt_cost(value: float) -> str:
    """`$12.34`, more digits for small amounts."""
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:,.4f}".rstrip("0").rstrip(".")
    return f"${value:.7f}".rstrip("0").rstrip(".")


def fmt_ms(value: float) -> str:
    """`850 ms`, `1.25 s`."""
    if value >= 10_000:
        return f"{value / 1000:,.1f} s"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"


def fmt_pct(ratio: float) -> str:
    """`99.5%` of a 0..1 ratio."""
    return f"{ratio * 100:.1f}%"


def fmt_number(value: float) -> str:
    """A compact number for chart labels: `1.2k`, `3.4M`, `0.035`."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if magnitude >= size:
            return f"{value / size:.3g}{unit}"
    if magnitude >= 1:
        return f"{value:.4g}"
    return f"{value:.3g}"


# charts


def sparkline(values: Sequence[float | None], width: int) -> str:
    """One row of block characters for `values` (None: no data, shown as a space).

    More values than `width` are folded into columns by their maximum, so a
    spike is never averaged away.
    """
    if not values:
        return ""
    columns: list[float | None] = []
    count = min(width, len(values)) if width > 0 else len(values)
    for i in range(count):
        chunk = [
            v for v in values[i * len(values) // count : (i + 1) * len(values) // count] if v is not None
        ]
        columns.append(max(chunk) if chunk else None)
    present = [v for v in columns if v is not None and math.isfinite(v)]
    if not present:
        return " " * len(columns)
    low, high = min(0.0, min(present)), max(present)
    span = high - low
    out = []
    for v in columns:
        if v is None:
            out.append(" ")
        elif span == 0:
            out.append(_BLOCKS[0])
        else:  # only the lowest value gets the lowest block, so small values stand out from zero
            level = int((v - low) / span * (len(_BLOCKS) - 1) + 0.5)
            out.append(_BLOCKS[min(len(_BLOCKS) - 1, max(1 if v > low else 0, level))])
    return "".join(out)
