"""The column-wise fast path (`bulk_rows`) against the per-record path it stands in for.

A batch it converts must give exactly the rows `rows.to_rows` gives, and it must take no batch
the per-record checks (`validation.validate`) would refuse a record of, or whose keys repeat:
those go record by record, which names the field at fault.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest
from google.protobuf import duration_pb2

from llmmeter.v1 import usage_pb2
from llmmeter_ingest import bulk_batch, bulk_rows
from llmmeter_ingest.pricing import BUILTIN_ONLY
from llmmeter_ingest.rows import to_rows
from llmmeter_ingest.validation import Rejected, validate

from record_batches import BREAKING, limits, valid_batch
from records import record


def _convert(recs: list[usage_pb2.UsageRecord], team: str | None = None) -> tuple | None:
    batch = bulk_batch.from_records(recs)
    return None if batch is None else bulk_rows.convert(batch, limits(), True, BUILTIN_ONLY, team)


@pytest.mark.parametrize("seed", range(6))
def test_a_valid_batch_gives_the_rows_to_rows_gives(seed: int) -> None:
    recs = valid_batch(seed)
    got = _convert(recs)
    assert got is not None
    rows, payloads = got
    expected = [to_rows(r, True) for r in recs]
    assert rows == [e[0] for e in expected]
    assert [[type(v) for v in r] for r in rows] == [[type(v) for v in e[0]] for e in expected]
    assert payloads == [e[1] for e in expected if e[1] is not None]


@pytest.mark.parametrize(("case", "breaks"), BREAKING, ids=[c for c, _ in BREAKING])
def test_a_batch_with_one_bad_record_goes_record_by_record(case: str, breaks: Callable) -> None:
    recs = valid_batch(zlib.crc32(case.encode()) % 1000, 20)
    breaks(recs[7])
    with pytest.raises(Rejected):
        validate(recs[7], limits())
        to_rows(recs[7], True)  # a payload's NaN is found converting it
    assert _convert(recs) is None


def test_a_repeated_key_goes_record_by_record() -> None:
    recs = valid_batch(11, 10)
    recs.append(usage_pb2.UsageRecord.FromString(recs[3].SerializeToString()))
    assert _convert(recs) is None


def test_a_team_bound_key_pins_the_team_or_refuses_thevalid_batch() -> None:
    recs = valid_batch(12, 10)
    for r in recs:
        r.team = ""
    got = _convert(recs, team="search")
    assert got is not None and {row[20] for row in got[0]} == {"search"}
    recs[4].team = "payments"
    assert _convert(recs, team="search") is None


def test_zero_durations_and_costs_that_were_sent_are_kept() -> None:
    rec = record(ttft_ms=0.0, cost=0.0)
    rec.gateway_overhead.CopyFrom(duration_pb2.Duration())
    rec.mean_inter_token_latency.CopyFrom(duration_pb2.Duration())
    got = _convert([rec])
    assert got is not None
    assert got[0] == [to_rows(rec, True)[0]]
    row = got[0][0]
    assert (row[4], row[5], row[35]) == (0, 0.0, 0)
