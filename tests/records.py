"""Builders of usage records for tests: valid by default, any field overridable."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmmeter.v1 import usage_pb2

_ids = itertools.count()


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp."""
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(when)
    return t


def dur(ms: float) -> duration_pb2.Duration:
    """A protobuf Duration of `ms` milliseconds."""
    d = duration_pb2.Duration()
    d.FromMicroseconds(int(ms * 1000))
    return d


def record(start: datetime | None = None, latency_ms: float = 1200.0, ttft_ms: float | None = 300.0,
           **fields: Any) -> usage_pb2.UsageRecord:
    """A valid record starting at `start` (a minute ago by default)."""
    start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    rec = usage_pb2.UsageRecord(
        request_id=fields.pop("request_id", f"chatcmpl-test-{next(_ids)}"),
        start_time=ts(start),
        end_time=ts(start + timedelta(milliseconds=latency_ms)),
        status_code=fields.pop("status_code", 200),
        model=fields.pop("model", "gpt-4o"),
        provider=fields.pop("provider", "openai"),
        call_type=fields.pop("call_type", "chat"),
        input_tokens=fields.pop("input_tokens", 100),
        output_tokens=fields.pop("output_tokens", 50),
        cost=fields.pop("cost", 0.00075),
        **fields,
    )
    if ttft_ms is not None:
        rec.streaming = True
        rec.time_to_first_token.CopyFrom(dur(ttft_ms))
    return rec


def bad_request_fields(err: Any) -> list[tuple[str, str]]:
    """The (field, description) pairs of the BadRequest detail of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status details on the error"
    out = []
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            out += [(v.field, v.description) for v in br.field_violations]
    return out


async def ingest(stub: Any, recs: list[usage_pb2.UsageRecord]) -> None:
    """Store records through the real ingest service, asserting all were accepted."""
    from llmmeter.v1 import ingest_pb2

    for i in range(0, len(recs), 5000):
        resp = await stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=recs[i:i + 5000]))
        assert resp.accepted_count == len(recs[i:i + 5000]), resp


def alike(a: Any, b: Any, rel: float = 1e-12) -> bool:
    """Equal dicts or messages, except that floats need only agree to `rel`: PostgreSQL may add a
    double precision column (TPOT, ITL sums) in another order from one statement to the next
    (parallel aggregation, another plan), which changes the last bits and nothing else."""
    fa, fb = (x if isinstance(x, Mapping) else {f.name: v for f, v in x.ListFields()} for x in (a, b))
    if fa.keys() != fb.keys():
        return False
    return all(math.isclose(x, y, rel_tol=rel) if isinstance(x, float) and isinstance(y, float) else x == y
               for x, y in ((fa[k], fb[k]) for k in fa))
