"""IngestService over gRPC: check the request's shape, call the domain, convert back.

Per-record problems come back in `rejections`; a request none of whose
records could be stored fails as a whole with INVALID_ARGUMENT and a
BadRequest naming `records[i].field`, so a sender never mistakes total
rejection for success. Records sent as `columns` are named the same way, by
their position.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import grpc

from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc
from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_ingest.ingestor import Ingestor, Outcome, Prepared
from llmmeter_ingest.settings import IngestSettings
from llmmeter_ingest.writer import Job


def _check_size(message: ingest_pb2.WriteRecordsRequest | ingest_pb2.StreamRecordsRequest, limit: int) -> int:
    """The message's record count, within `limit`, in `records` or in `columns`, not both."""
    records, columns = len(message.records), len(message.columns.request_id)
    if records and message.HasField("columns"):
        raise InvalidArgument("columns: send records either in records or in columns, not both",
                              [FieldViolation("columns", "not allowed together with records")])
    field = "columns" if message.HasField("columns") else "records"
    if max(records, columns) > limit:
        raise InvalidArgument(
            f"{field}: {max(records, columns)} records in one message, at most {limit} allowed",
            [FieldViolation(field, f"at most {limit} records per message")],
        )
    return max(records, columns)


def _prepare(ingestor: Ingestor, message: ingest_pb2.WriteRecordsRequest | ingest_pb2.StreamRecordsRequest,
             offset: int) -> Prepared:
    if message.HasField("columns"):
        return ingestor.prepare_columns(message.columns, offset)
    return ingestor.prepare(message.records, offset)


def _raise_if_nothing_stored(outcome: Outcome) -> None:
    if outcome.accepted or outcome.duplicates:
        return
    if not outcome.rejections:
        raise InvalidArgument("records: at least one record is required",
                              [FieldViolation("records", "at least one record is required")])
    first = outcome.rejections[0]
    raise InvalidArgument(
        f"all {len(outcome.rejections)} records were rejected; first: records[{first.index}].{first.field}: "
        f"{first.reason}",
        [FieldViolation(f"records[{r.index}].{r.field}", r.reason) for r in outcome.rejections],
    )


def _rejections(outcome: Outcome) -> list[ingest_pb2.RecordRejection]:
    return [
        ingest_pb2.RecordRejection(index=r.index, request_id=r.request_id, field=r.field, reason=r.reason)
        for r in outcome.rejections
    ]


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """The gRPC face of `Ingestor`."""

    def __init__(self, ingestor: Ingestor, settings: IngestSettings) -> None:
        self._ingestor = ingestor
        self._settings = settings

    async def WriteRecords(
        self, request: ingest_pb2.WriteRecordsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.WriteRecordsResponse:
        """Store one batch and say what became of each record."""
        _check_size(request, self._settings.max_batch_records)
        outcome = await self._ingestor.store(_prepare(self._ingestor, request, 0))
        _raise_if_nothing_stored(outcome)
        return ingest_pb2.WriteRecordsResponse(
            accepted_count=outcome.accepted, duplicate_count=outcome.duplicates,
            rejections=_rejections(outcome),
        )

    async def StreamRecords(
        self, request_iterator: AsyncIterator[ingest_pb2.StreamRecordsRequest],
        context: grpc.aio.ServicerContext,
    ) -> ingest_pb2.StreamRecordsResponse:
        """Store chunks as they arrive, a few in flight at once, and sum up the stream."""
        total = Outcome()
        inflight: deque[tuple[Prepared, Job | None]] = deque()
        offset = 0
        try:
            async for message in request_iterator:
                count = _check_size(message, self._settings.max_batch_records)
                prepared = _prepare(self._ingestor, message, offset)
                offset += count
                job = await self._ingestor.submit(prepared, self._settings.stream_queue_wait_seconds)
                inflight.append((prepared, job))
                while len(inflight) >= self._settings.stream_inflight_chunks:
                    total.add(await self._ingestor.finish(*inflight.popleft()))
            while inflight:
                total.add(await self._ingestor.finish(*inflight.popleft()))
        finally:
            for _, job in inflight:  # commits still complete; nobody waits for their answer
                if job is not None:
                    job.done.add_done_callback(lambda f: f.exception())
        _raise_if_nothing_stored(total)
        return ingest_pb2.StreamRecordsResponse(
            accepted_count=total.accepted, duplicate_count=total.duplicates,
            rejections=_rejections(total),
        )
