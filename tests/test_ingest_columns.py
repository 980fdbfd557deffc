"""Records sent as `UsageColumns`: the same records, the same rows, the same rejections.

The column form is only a cheaper encoding of record messages, so every test here holds it
against the record form: `to_columns` and `to_records` invert each other, a valid batch read
from columns gives exactly the rows `rows.to_rows` gives, and a batch with a bad record falls
back to the per-record checks with the record's own field named.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import pytest

from llmmeter.columns import ColumnRecords, ColumnsError, record_count, to_columns, to_records
from llmmeter.v1 import usage_pb2
from llmmeter_ingest import bulk_batch, bulk_rows
from llmmeter_ingest.pricing import BUILTIN_ONLY
from llmmeter_ingest.rows import to_rows
from llmmeter_ingest.validation import Rejected, validate

from record_batches import BREAKING, limits, valid_batch
from records import record

#: Breakages a column cannot carry: columns hold whole nanoseconds, not (seconds, nanos) pairs,
#: and a NaN cost is how a column says "no cost sent".
_NOT_IN_COLUMNS = {"start nanos", "end nanos", "ttft nanos", "itl huge", "gateway huge", "nan cost"}


def _convert(cols: usage_pb2.UsageColumns, team: str | None = None) -> tuple | None:
    batch = bulk_batch.from_columns(cols, record_count(cols))
    return None if batch is None else bulk_rows.convert(batch, limits(), True, BUILTIN_ONLY, team)


@pytest.mark.parametrize("seed", range(4))
def test_columns_and_records_invert_each_other(seed: int) -> None:
    recs = valid_batch(seed)
    cols = usage_pb2.UsageColumns.FromString(to_columns(recs).SerializeToString())
    assert to_records(cols) == recs


@pytest.mark.parametrize("seed", range(6))
def test_a_valid_batch_as_columns_gives_the_rows_to_rows_gives(seed: int) -> None:
    recs = valid_batch(seed)
    got = _convert(to_columns(recs))
    assert got is not None
    expected = [to_rows(r, True) for r in recs]
    assert got[0] == [e[0] for e in expected]
    assert [[type(v) for v in r] for r in got[0]] == [[type(v) for v in e[0]] for e in expected]
    assert got[1] == [e[1] for e in expected if e[1] is not None]


_COLUMN_BREAKING = [(c, b) for c, b in BREAKING if c not in _NOT_IN_COLUMNS]


def _field_of(rec: usage_pb2.UsageRecord) -> str:
    with pytest.raises(Rejected) as rejected:
        validate(rec, limits())
        to_rows(rec, True)  # a payload's NaN is found converting it
    return rejected.value.field


@pytest.mark.parametrize(("case", "breaks"), _COLUMN_BREAKING, ids=[c for c, _ in _COLUMN_BREAKING])
def test_a_bad_record_in_columns_is_named_as_in_a_record(case: str, breaks: Callable) -> None:
    recs = valid_batch(zlib.crc32(case.encode()) % 1000, 20)
    breaks(recs[7])
    cols = to_columns(recs)
    assert _convert(cols) is None
    assert _field_of(to_records(cols)[7]) == _field_of(recs[7])


def test_a_negative_duration_other_than_unset_is_refused_by_name() -> None:
    recs = valid_batch(3, 5)
    cols = to_columns(recs)
    cols.gateway_overhead_nanos[2] = -5_000
    assert _convert(cols) is None
    assert _field_of(to_records(cols)[2]) == "gateway_overhead"


def test_lists_left_empty_mean_every_record_has_the_default() -> None:
    recs = [record(request_id=f"min-{i}", model="gpt-4o", status_code=200) for i in range(3)]
    for rec in recs:  # only what a record requires: id, times, status, model
        for name in ("time_to_first_token", "cost", "user", "team", "output_chunks", "input_tokens",
                     "output_tokens", "streaming", "metadata", "provider", "call_type"):
            rec.ClearField(name)  # type: ignore[arg-type]
    full = to_columns(recs)
    cols = usage_pb2.UsageColumns(
        request_id=full.request_id, start_time_unix_nano=full.start_time_unix_nano,
        end_time_unix_nano=full.end_time_unix_nano, status_code=full.status_code, model=full.model)
    assert to_records(cols) == recs
    got = _convert(cols)
    assert got is not None
    assert got[0] == [to_rows(r, True)[0] for r in recs]
    assert {row[-1] for row in got[0]} != {1}  # no cost sent: priced, not "reported"


def test_a_nan_cost_is_a_cost_not_sent_and_priced() -> None:
    rec = record(model="gpt-4o", input_tokens=1000, output_tokens=10, cost=0.25)
    cols = to_columns([rec])
    cols.cost[0] = math.nan
    rec.ClearField("cost")
    assert ColumnRecords(cols).record(0) == rec
    got = _convert(cols)
    assert got is not None and got[0] == [to_rows(rec, True)[0]]


def test_a_team_bound_key_pins_the_team_of_columns_or_refuses_the_batch() -> None:
    recs = valid_batch(12, 10)
    for r in recs:
        r.team = ""
    got = _convert(to_columns(recs), team="search")
    assert got is not None and {row[20] for row in got[0]} == {"search"}
    recs[4].team = "payments"
    assert _convert(to_columns(recs), team="search") is None


@pytest.mark.parametrize(("field", "change"), [
    ("columns.model", lambda c: c.model.append("extra")),
    ("columns.input_tokens", lambda c: c.input_tokens.pop()),
    ("columns.metadata_count", lambda c: c.metadata_count.append(0)),
    ("columns.metadata_key", lambda c: c.metadata_key.append("extra")),
    ("columns.cost_breakdown_key", lambda c: c.cost_breakdown_value.append(0.5)),
    ("columns.metadata_count", lambda c: (c.metadata_count.__setitem__(0, -1),
                                          c.metadata_count.__setitem__(1, c.metadata_count[1] + 1))),
    ("columns.payload_index", lambda c: c.payload_index.append(0)),
    ("columns.payload_index", lambda c: (c.payloads.add(), c.payload_index.append(99))),
    ("columns.payload_index", lambda c: (c.payloads.add(), c.payloads.add(), c.payload_index.extend([2, 1]))),
])
def test_lists_of_the_wrong_length_name_the_column(field: str, change: Callable) -> None:
    recs = valid_batch(5, 4)
    for rec in recs:
        rec.ClearField("payload")
    cols = to_columns(recs)
    change(cols)
    with pytest.raises(ColumnsError) as err:
        record_count(cols)
    assert err.value.field == field


@pytest.mark.parametrize(("case", "breaks"), [(c, b) for c, b in BREAKING if c in _NOT_IN_COLUMNS],
                         ids=sorted(_NOT_IN_COLUMNS, key=[c for c, _ in BREAKING].index))
def test_a_record_columns_cannot_carry_is_refused_by_to_columns(case: str, breaks: Callable) -> None:
    recs = valid_batch(4, 5)
    breaks(recs[2])
    with pytest.raises(ValueError):
        to_columns(recs)


def test_a_duration_of_mixed_signs_is_refused_by_to_columns() -> None:
    rec = record(ttft_ms=100)
    rec.time_to_first_token.nanos = -5  # seconds 0: fine
    to_columns([rec])
    rec.time_to_first_token.seconds = 1
    with pytest.raises(ValueError):
        to_columns([rec])
