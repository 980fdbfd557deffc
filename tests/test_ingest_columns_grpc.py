"""Records sent as `columns` through WriteRecords and StreamRecords, end to end.

What the service stores from columns must be what it stores from the same records sent as
messages (same keys, so the second form is all duplicates); rejections name the record's
field by its position across the stream; a shape error refuses the message naming the column.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from llmmeter.columns import to_columns
from llmmeter.v1 import ingest_pb2, usage_pb2
from llmmeter_ingest.rows import to_rows

from conftest import drain_rollups
from record_batches import valid_batch
from records import bad_request_fields, record

_TOTALS = ("SELECT count(*), sum(input_tokens), sum(output_tokens), sum(cost), count(ttft_us), "
           "count(*) FILTER (WHERE has_payload), count(*) FILTER (WHERE cost_source = 1) FROM usage_records")


async def _stream(*messages: ingest_pb2.StreamRecordsRequest
                  ) -> AsyncIterator[ingest_pb2.StreamRecordsRequest]:
    for m in messages:
        yield m


async def test_columns_store_what_the_same_records_store(ingest_stub, db_pool, db_url) -> None:
    recs = valid_batch(21, 80)
    resp = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(columns=to_columns(recs)))
    assert (resp.accepted_count, resp.duplicate_count, len(resp.rejections)) == (80, 0, 0)
    expected = [to_rows(r, False) for r in recs]
    totals = await db_pool.fetchrow(_TOTALS)
    assert tuple(totals) == (
        80, sum(e[0][23] for e in expected), sum(e[0][24] for e in expected), sum(e[0][32] for e in expected),
        sum(e[0][4] is not None for e in expected), sum(e[1] is not None for e in expected),
        sum(r.HasField("cost") for r in recs))
    assert await db_pool.fetchval("SELECT count(*) FROM usage_payloads") == totals[5]
    again = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=recs))
    assert (again.accepted_count, again.duplicate_count) == (0, 80)
    await drain_rollups(db_url)
    assert await db_pool.fetchval("SELECT sum(request_count) FROM usage_1h WHERE dims_mask = 0") == 80


async def test_stream_mixes_record_and_column_messages_and_counts_indexes_across_both(
        ingest_stub, db_pool) -> None:
    first = [record(request_id=f"r-{i}") for i in range(3)]
    second = [record(request_id=f"c-{i}") for i in range(4)]
    second[1].model = ""
    second[3].status_code = 999
    resp = await ingest_stub.StreamRecords(_stream(
        ingest_pb2.StreamRecordsRequest(records=first),
        ingest_pb2.StreamRecordsRequest(columns=to_columns(second))))
    assert resp.accepted_count == 5
    assert [(r.index, r.request_id, r.field) for r in resp.rejections] == [
        (4, "c-1", "model"), (6, "c-3", "status_code")]
    ids = {r[0] for r in await db_pool.fetch("SELECT request_id FROM usage_records")}
    assert ids == {"r-0", "r-1", "r-2", "c-0", "c-2"}


async def test_a_column_of_the_wrong_length_refuses_the_message_by_name(ingest_stub, db_pool) -> None:
    cols = to_columns([record(), record()])
    cols.model.append("one too many")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(columns=cols))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == ["columns.model"]
    assert "3 values for 2 records" in (err.value.details() or "")
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records") == 0


async def test_a_bad_column_message_keeps_the_stream_messages_before_it(ingest_stub, db_pool) -> None:
    cols = to_columns([record(), record()])
    cols.payload_index.append(5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.StreamRecords(_stream(
            ingest_pb2.StreamRecordsRequest(records=[record(request_id="kept")]),
            ingest_pb2.StreamRecordsRequest(columns=cols)))
    assert [f for f, _ in bad_request_fields(err.value)] == ["columns.payload_index"]
    for _ in range(100):  # the first message's commit completes after the call has failed
        if await db_pool.fetchval("SELECT count(*) FROM usage_records WHERE request_id = 'kept'"):
            break
        await asyncio.sleep(0.05)
    assert await db_pool.fetchval("SELECT count(*) FROM usage_records WHERE request_id = 'kept'") == 1


async def test_records_and_columns_in_one_message_are_refused(ingest_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(
            records=[record()], columns=to_columns([record()])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == ["columns"]


async def test_columns_of_only_invalid_records_fail_naming_each(ingest_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(
            columns=to_columns([record(model=""), record(cost=-1)])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == ["records[0].model", "records[1].cost"]


async def test_empty_columns_are_no_records(ingest_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(columns=usage_pb2.UsageColumns()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "records"


_INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: c.start_time_unix_nano.__setitem__(1, -_INT64_MAX), "records[1].start_time"),
    (lambda c: c.end_time_unix_nano.__setitem__(1, _INT64_MAX), "records[1].end_time"),
    (lambda c: c.time_to_first_token_nanos.__setitem__(1, _INT64_MAX), "records[1].time_to_first_token"),
    (lambda c: c.gateway_overhead_nanos.__setitem__(1, -_INT64_MAX), "records[1].gateway_overhead"),
    (lambda c: c.media_audio_seconds.__setitem__(1, float("inf")), "records[1].media.audio_seconds"),
    (lambda c: c.input_tokens.__setitem__(1, -_INT64_MAX), "records[1].input_tokens"),
    (lambda c: c.metadata_count.__setitem__(1, 2**31 - 1), "columns.metadata_key"),
    (lambda c: c.payload_index.extend([_INT64_MAX]) or c.payloads.add(), "columns.payload_index"),
], ids=["start", "end", "ttft", "gateway", "audio", "tokens", "metadata count", "payload index"])
async def test_hostile_columns_are_refused_by_name_and_harm_no_other_caller(
        ingest_stub, db_pool, change, field) -> None:
    recs = [record(request_id="h-0"), record(request_id="h-1")]
    cols = to_columns(recs)
    change(cols)
    if field.startswith("records"):
        resp = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(columns=cols))
        assert resp.accepted_count == 1
        assert [f"records[{r.index}].{r.field}" for r in resp.rejections] == [field]
    else:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(columns=cols))
        assert [f for f, _ in bad_request_fields(err.value)] == [field]
    after = await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(columns=to_columns([record()])))
    assert after.accepted_count == 1
