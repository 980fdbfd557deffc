"""Live-tail latency: how soon a record written through the ingest service reaches TailRequests.

The dashboard's live view is only useful if a request shows up moments after it was made;
this measures the time from the send and from the ingest acknowledgement to the tail message.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timedelta
from typing import Any

from ..harness import BenchFailure, api_key
from ..timing import summarize


async def measure_tail(query_addr: str, ingest_addr: str, reps: int, at: datetime) -> dict[str, Any]:
    """`reps` round trips (after one warm-up) of one record, WriteRecords -> TailRequests message.

    The records start just before `at`, the loaded data's end: a later run's windows (which end
    there) then hold them, and no record lies past those windows' end, as in a live "up to now"
    window (the query service reads such a window's last bucket whole)."""
    from google.protobuf import timestamp_pb2

    from llmmeter.channels import open_channel
    from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc, usage_pb2

    from_send, from_ack = [], []
    async with open_channel(query_addr, api_key()) as qch, open_channel(ingest_addr, api_key()) as ich:
        qstub = query_pb2_grpc.QueryServiceStub(qch)
        istub = ingest_pb2_grpc.IngestServiceStub(ich)
        call = qstub.TailRequests(query_pb2.TailRequestsRequest(filter='model = "bench-tail"'))
        await asyncio.wait_for(call.initial_metadata(), 30)
        for k in range(reps + 1):
            st, en = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
            st.FromDatetime(at - timedelta(milliseconds=300))
            en.FromDatetime(at - timedelta(milliseconds=10))
            rec = usage_pb2.UsageRecord(request_id=f"bench-tail-{os.getpid()}-{k}", start_time=st,
                                        end_time=en, status_code=200, model="bench-tail", provider="bench",
                                        user="bench", input_tokens=10, output_tokens=5)
            got = asyncio.ensure_future(call.read())
            t_send = time.perf_counter()
            ack = await istub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[rec]), timeout=30)
            t_ack = time.perf_counter()
            msg = await asyncio.wait_for(got, 30)
            t_msg = time.perf_counter()
            if ack.accepted_count != 1 or msg.request.request_id != rec.request_id:
                raise BenchFailure(f"tail: accepted {ack.accepted_count}, got {msg.request.request_id!r}")
            if k:  # the first one warms up
                from_send.append(t_msg - t_send)
                from_ack.append(max(0.0, t_msg - t_ack))
            await asyncio.sleep(0.05)
        call.cancel()
    return {"from_send": {**summarize(from_send), "max_ms": round(max(from_send) * 1000, 2)},
            "from_ack": {**summarize(from_ack), "max_ms": round(max(from_ack) * 1000, 2)}}
