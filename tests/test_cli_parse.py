"""JSON Lines parsing of `llmmeter ingest`: what is accepted, and how bad lines are reported.

A wrong line must be reported by its line number and must not stop the other
lines; server-side rejections, known only by stream position, must map back
to the same line numbers.
"""

from __future__ import annotations

import io
import json

import pytest

from llmmeter.cli.common import IngestSummary
from llmmeter.cli.jsonl import JsonlReader, LineError, RecordParseError, count_lines, parse_record
from llmmeter.v1 import ingest_pb2

SNAKE = (
    '{"request_id": "r1", "start_time": "2025-06-01T12:00:00Z", "end_time": "2025-06-01T12:00:01.5Z",'
    ' "time_to_first_token": "0.25s", "status_code": 200, "model": "gpt-4o", "input_tokens": 812,'
    ' "cache_read_tokens": 512, "cost_breakdown": {"input": 0.001, "output": 0.002}, "cost": 0.003,'
    ' "metadata": {"tenant": "acme"}, "media": {"images": 1},'
    ' "payload": {"request": {"messages": [{"role": "user", "content": "hi"}]}}}'
)
CAMEL = (
    '{"requestId": "r1", "startTime": "2025-06-01T12:00:00Z", "endTime": "2025-06-01T12:00:01.5Z",'
    ' "timeToFirstToken": "0.25s", "statusCode": 200, "model": "gpt-4o", "inputTokens": "812",'
    ' "cacheReadTokens": 512, "costBreakdown": {"input": 0.001, "output": 0.002}, "cost": 0.003,'
    ' "metadata": {"tenant": "acme"}, "media": {"images": 1},'
    ' "payload": {"request": {"messages": [{"role": "user", "content": "hi"}]}}}'
)


def _record(request_id: str) -> str:
    return json.dumps({"request_id": request_id, "model": "gpt-4o", "status_code": 200})


def _reader(text: str, batch_size: int = 1000) -> JsonlReader:
    return JsonlReader(io.BytesIO(text.encode()), batch_size)


def _read_all(reader: JsonlReader) -> list[list[str]]:
    batches = []
    while batch := reader.read_batch():
        batches.append([r.request_id for r in batch])
    return batches


def test_snake_case_and_camel_case_give_the_same_record() -> None:
    snake, camel = parse_record(SNAKE), parse_record(CAMEL)
    assert snake == camel
    assert snake.input_tokens == 812 and snake.time_to_first_token.nanos == 250_000_000
    assert snake.end_time.seconds - snake.start_time.seconds == 1 and snake.metadata["tenant"] == "acme"
    assert snake.payload.request.struct_value.fields["messages"].list_value.values[0].struct_value


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("{not json", "", "invalid JSON"),
        ("[1, 2]", "", "expected a JSON object, got list"),
        ('"just a string"', "", "expected a JSON object, got str"),
        ("null", "", "expected a JSON object, got NoneType"),
        ('{"request_id": "r", "colour": "blue"}', "colour", 'no field named "colour"'),
        ('{"input_tokens": "many"}', "input_tokens", "Failed to parse input_tokens field"),
        ('{"start_time": "yesterday"}', "start_time", "Failed to parse start_time field"),
        ('{"metadata": {"tenant": 1}}', "metadata", "Failed to parse metadata field"),
    ],
)
def test_bad_records_name_the_field_and_reason(text: str, field: str, reason: str) -> None:
    with pytest.raises(RecordParseError) as caught:
        parse_record(text)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_bad_lines_are_reported_by_number_and_do_not_stop_the_others() -> None:
    text = "\n".join([_record("a"), "{oops", _record("b"), '{"bogus": 1}', _record("c")]) + "\n"
    reader = _reader(text)
    assert _read_all(reader) == [["a", "b", "c"]]
    assert [(e.line, e.field) for e in reader.errors] == [(2, ""), (4, "bogus")]
    assert reader.lines_read == 5 and reader.records_read == 3


def test_blank_lines_are_skipped_and_positions_map_back_to_lines() -> None:
    lines = ["", _record("a"), "   ", "{bad", _record("b"), "\t", "", _record("c"), _record("d"), ""]
    reader = _reader("\n".join(lines), batch_size=2)
    assert _read_all(reader) == [["a", "b"], ["c", "d"]]
    assert [e.line for e in reader.errors] == [4]
    assert [reader.line_of(i) for i in range(4)] == [2, 5, 8, 9]
    with pytest.raises(IndexError):
        reader.line_of(4)


def test_crlf_bom_and_invalid_utf8() -> None:
    data = (
        b"\xef\xbb\xbf" + _record("a").encode() + b"\r\n" + b'{"model": "\xff"}\r\n' + _record("b").encode()
    )
    reader = JsonlReader(io.BytesIO(data), 10)
    assert _read_all(reader) == [["a", "b"]]
    assert len(reader.errors) == 1 and reader.errors[0].line == 2 and "UTF-8" in reader.errors[0].reason


def test_empty_input_gives_no_batches() -> None:
    reader = _reader("\n\n")
    assert reader.read_batch() == [] and reader.errors == [] and reader.lines_read == 2


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        _reader("", batch_size=0)


@pytest.mark.parametrize(("data", "lines"), [(b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\n\nb\n", 3)])
def test_count_lines_counts_a_last_unterminated_line_and_rewinds(data: bytes, lines: int) -> None:
    stream = io.BytesIO(data)
    assert count_lines(stream, chunk_size=2) == lines
    assert stream.tell() == 0


def test_summary_merges_server_and_local_rejections_by_line() -> None:
    reader = _reader("\n".join([_record("a"), "", "{bad", _record("b"), _record("c")]))
    _read_all(reader)
    response = ingest_pb2.StreamRecordsResponse(accepted_count=1, duplicate_count=1)
    response.rejections.add(index=1, request_id="b", field="end_time", reason="end_time is required")
    summary = IngestSummary.build(response, reader.line_of, reader.errors)
    assert (summary.accepted, summary.duplicates, summary.rejected, summary.exit_code) == (1, 1, 2, 1)
    assert [(r.line, r.request_id, r.field) for r in summary.rejections] == [
        (3, "", ""),
        (4, "b", "end_time"),
    ]


def test_summary_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    summary = IngestSummary.build(
        ingest_pb2.StreamRecordsResponse(accepted_count=5), lambda i: i + 1, [LineError(7, "model", "bad")]
    )
    summary.print("json")
    assert json.loads(capsys.readouterr().out) == {
        "accepted": 5,
        "duplicates": 0,
        "rejected": 1,
        "rejections": [{"line": 7, "request_id": "", "field": "model", "reason": "bad"}],
    }
    IngestSummary.build(ingest_pb2.StreamRecordsResponse(accepted_count=5), lambda i: i + 1).print("table")
    assert "accepted" in capsys.readouterr().out
