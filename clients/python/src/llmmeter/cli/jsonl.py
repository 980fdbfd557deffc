"""Reading usage records from JSON Lines, one record per line, without loading the file.

`llmmeter ingest` must report a bad record by the line it came from, both for
lines that do not even parse and for records the server rejects later by
their position in the stream. The reader therefore keeps, besides the parse
errors, just enough to map a record's position back to its line number: the
positions at which lines were skipped, which costs memory only for blank or
bad lines, not for every record.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from google.protobuf import json_format

from llmmeter.v1 import usage_pb2

_FIELD_PATTERNS = (
    re.compile(r"Failed to parse (\S+) field"),
    re.compile(r'has no field named "([^"]+)"'),
)


@dataclass(frozen=True)
class LineError:
    """A line that is not a usage record, and why."""

    line: int
    """1-based line number in the input."""
    field: str
    """The offending field when it is known, else an empty string."""
    reason: str
    """One-line explanation."""


class RecordParseError(ValueError):
    """A JSON text is not a usage record in protobuf's JSON mapping."""

    def __init__(self, field: str, reason: str) -> None:
        """Keeps the field apart from the reason so the report can show both in columns."""
        super().__init__(reason)
        self.field = field
        self.reason = reason


def parse_record(text: str) -> usage_pb2.UsageRecord:
    """Parses one JSON object into a UsageRecord; accepts proto (snake_case) and JSON (lowerCamelCase) names.

    Raises :class:`RecordParseError` with a one-line reason, and the field when
    protobuf names one, for invalid JSON, non-objects, unknown fields and
    values of the wrong type.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordParseError("", f"invalid JSON: {error}") from None
    if not isinstance(value, dict):
        raise RecordParseError("", f"expected a JSON object, got {type(value).__name__}")
    try:
        return json_format.ParseDict(value, usage_pb2.UsageRecord())
    except json_format.ParseError as error:
        message = str(error).splitlines()[0].strip() if str(error).strip() else "not a usage record"
        field = next((m.group(1) for p in _FIELD_PATTERNS if (m := p.search(message))), "")
        raise RecordParseError(field, message) from None


class JsonlReader:
    """Reads a binary JSON Lines stream in batches of records, remembering each record's line.

    Blank lines are skipped; lines that are not records are collected in
    :attr:`errors` and do not stop the others. Records are numbered from 0 in
    the order returned, across batches, like the server's rejection indexes.
    """

    def __init__(self, stream: BinaryIO, batch_size: int) -> None:
        """Wraps `stream`, which the caller keeps ownership of; `batch_size` bounds each batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._lines: Iterator[bytes] = iter(stream)
        self._batch_size = batch_size
        self._records = 0
        self._skips: list[int] = []  # for each skipped line, how many records came before it
        self.errors: list[LineError] = []
        """Lines that could not be parsed, in input order."""
        self.lines_read = 0
        """Lines consumed so far, blank and bad ones included."""

    @property
    def records_read(self) -> int:
        """Records returned so far."""
        return self._records

    def read_batch(self) -> list[usage_pb2.UsageRecord]:
        """Returns up to `batch_size` records; an empty list means the input is exhausted."""
        batch: list[usage_pb2.UsageRecord] = []
        while len(batch) < self._batch_size:
            raw = next(self._lines, None)
            if raw is None:
                break
            self.lines_read += 1
            record = self._parse_line(raw)
            if record is None:
                self._skips.append(self._records)
                continue
            batch.append(record)
            self._records += 1
        return batch

    def _parse_line(self, raw: bytes) -> usage_pb2.UsageRecord | None:
        """Parses one raw line; returns None for a blank line or (after recording it) a bad one."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            self.errors.append(
                LineError(self.lines_read, "", f"not valid UTF-8: {error.reason} at byte {error.start}")
            )
            return None
        if self.lines_read == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            return None
        try:
            return parse_record(text)
        except RecordParseError as error:
            self.errors.append(LineError(self.lines_read, error.field, error.reason))
            return None

    def line_of(self, index: int) -> int:
        """Returns the 1-based line number of the record at stream position `index` (from 0)."""
        if not 0 <= index < self._records:
            raise IndexError(f"no record at position {index}; {self._records} were read")
        return index + 1 + bisect_right(self._skips, index)


def count_lines(stream: BinaryIO, chunk_size: int = 1 << 20) -> int:
    """Counts the lines of a seekable stream quickly and rewinds it, to size a progress bar."""
    count = 0
    last = b""
    for chunk in iter(lambda: stream.read(chunk_size), b""):
        count += chunk.count(b"\n")
        last = chunk
    stream.seek(0)
    return count + (1 if last and not last.endswith(b"\n") else 0)
