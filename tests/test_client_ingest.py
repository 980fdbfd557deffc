"""IngestClient against the real ingest service over a real PostgreSQL.

Every failure the client has to handle is produced for real: a full queue (a
session holding the rollup lock keeps the only writer busy) gives
RESOURCE_EXHAUSTED, a stopped PostgreSQL or a port nobody listens on yet gives
UNAVAILABLE, the same lock makes calls outlive their deadline, and a trigger
that raises makes the database refuse every write. A client interceptor on the
real channel only records the status of each attempt, so a test can tell how
often the client really called.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from llmmeter.client import (
    DeadlineExceededError,
    FieldViolation,
    IngestClient,
    InvalidArgumentError,
    ResourceExhaustedError,
    RpcError,
    UnavailableError,
)
from llmmeter.config import ClientConfig, RetryPolicy
from llmmeter.v1 import ingest_pb2, usage_pb2
from llmmeter_common.pgcluster import LocalCluster, free_port
from llmmeter_common.serving import MAX_MESSAGE_BYTES
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.settings import IngestSettings

from conftest import drain_rollups, ingest_settings
from keyring import ADMIN, keyed_channel
from records import record

OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.005)
PATIENT = RetryPolicy(max_attempts=200, initial_backoff=0.02, max_backoff=0.1)  # bounded: ~20 s
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


class CallLog:
    """Records (method, final status) of every call made on a channel; changes nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, grpc.StatusCode]] = []
        # grpc.aio files an interceptor under one kind of call only, so one of each kind
        self.interceptors = [_Unary(self), _StreamUnary(self)]

    def codes(self) -> list[grpc.StatusCode]:
        return [code for _, code in self.calls]

    async def record(self, details: Any, call: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls.append((method.rsplit("/", 1)[-1], await call.code()))
        return call


class _Unary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, log: CallLog) -> None:
        self.log = log

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.log.record(details, await continuation(details, request))


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, log: CallLog) -> None:
        self.log = log

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self.log.record(details, await continuation(details, requests))


@contextlib.asynccontextmanager
async def _watched(
    addr: str, retry: RetryPolicy = FAST, **config: Any
) -> AsyncIterator[tuple[IngestClient, CallLog]]:
    """The client on a real channel to `addr` whose attempts are logged."""
    log = CallLog()
    async with keyed_channel(addr, interceptors=log.interceptors) as channel:
        settings = ClientConfig(ingest_addr=addr, retry=retry, **config)
        async with IngestClient(settings, channel=channel) as client:
            yield client, log


@contextlib.asynccontextmanager
async def _serving(settings: IngestSettings) -> AsyncIterator[IngestServer]:
    server = IngestServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Bounded polling (15 s at most) for a condition another task brings about."""
    deadline = asyncio.get_running_loop().time() + 15.0
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _hold_rollup_lock(db_url: str) -> asyncpg.Connection:
    """Block every write (and so the queue) by locking a rollup table in another session."""
    conn = await asyncpg.connect(db_url)
    await conn.execute("BEGIN; LOCK TABLE usage_1m IN ACCESS EXCLUSIVE MODE")
    return conn


async def _stored(url: str, sql: str = "SELECT count(*) FROM usage_records") -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql) or 0)
    finally:
        await conn.close()


async def _batches(*batches: list[usage_pb2.UsageRecord]) -> AsyncIterator[list[usage_pb2.UsageRecord]]:
    for batch in batches:
        yield batch


async def test_write_records_reports_mixed_batches(ingest_addr: str, db_url: str) -> None:
    a = record(START, request_id="a")
    async with IngestClient(ClientConfig(ingest_addr=ingest_addr, retry=FAST, api_key=ADMIN.token)) as client:
        response = await client.write_records([a, record(request_id="b", model=""), a])
        again = await client.write_records([a])
    assert (response.accepted_count, response.duplicate_count) == (1, 1)
    assert [(r.index, r.request_id, r.field, r.reason) for r in response.rejections] == [
        (1, "b", "model", "model is required")
    ]
    assert (again.accepted_count, again.duplicate_count) == (0, 1)
    assert await _stored(db_url) == 1


async def test_all_invalid_batch_raises_with_field_violations(ingest_addr: str, db_url: str) -> None:
    async with _watched(ingest_addr) as (client, log):
        with pytest.raises(InvalidArgumentError) as caught:
            await client.write_records([record(model=""), record(request_id="")])
    error = caught.value
    assert error.violations == (
        FieldViolation("records[0].model", "model is required"),
        FieldViolation("records[1].request_id", "request_id is required"),
    )
    assert "\n" not in str(error)
    prefix = f"WriteRecords on the ingest service at {ingest_addr} failed: INVALID_ARGUMENT"
    assert str(error).startswith(prefix)
    assert "records[0].model: model is required" in str(error)
    assert log.codes() == [grpc.StatusCode.INVALID_ARGUMENT] and error.attempts == 1  # not retried
    assert await _stored(db_url) == 0


async def test_retries_a_full_queue_until_it_drains(db_url: str) -> None:
    async with _serving(ingest_settings(db_url, queue_max_records=10, writers=1)) as server:
        blocker = await _hold_rollup_lock(db_url)
        try:
            async with _watched(f"127.0.0.1:{server.port}", PATIENT) as (client, log):
                first = asyncio.create_task(client.write_records([record() for _ in range(8)]))
                await _until(lambda: server.writer.queued_records >= 8, "the first batch to be queued")
                second = asyncio.create_task(client.write_records([record() for _ in range(5)]))
                await _until(lambda: EXHAUSTED in log.codes(), "the queue to refuse the second batch")
                await blocker.execute("ROLLBACK")
                assert (await first).accepted_count == 8
                assert (await second).accepted_count == 5
        finally:
            await blocker.close()
    assert set(log.codes()) == {EXHAUSTED, OK} and log.codes().count(OK) == 2
    assert await _stored(db_url) == 13


async def test_unavailable_database_gives_up_then_retries_through_restart(own_cluster: LocalCluster) -> None:
    recs = [record() for _ in range(20)]
    async with _serving(ingest_settings(own_cluster.dsn())) as server:
        addr = f"127.0.0.1:{server.port}"
        await asyncio.to_thread(own_cluster.stop, "fast")
        async with _watched(addr) as (client, log):
            with pytest.raises(UnavailableError) as caught:
                await client.write_records(recs)
        message = str(caught.value)
        assert caught.value.attempts == 4 and log.codes() == [UNAVAILABLE] * 4
        assert "gave up after 4 attempts" in message and "database unavailable" in message
        assert "\n" not in message and message.startswith(f"WriteRecords on the ingest service at {addr}")

        async with _watched(addr, PATIENT) as (client, log):
            sending = asyncio.create_task(client.write_records(recs))
            await _until(lambda: UNAVAILABLE in log.codes(), "a refused attempt")
            await asyncio.to_thread(own_cluster.start)
            response = await asyncio.wait_for(sending, 60)
    assert response.accepted_count == 20
    assert log.codes()[-1] == OK and set(log.codes()[:-1]) == {UNAVAILABLE}
    assert await _stored(own_cluster.dsn()) == 20


async def test_retries_until_the_server_listens(db_url: str) -> None:
    port = free_port()
    async with _watched(f"127.0.0.1:{port}", PATIENT) as (client, log):
        sending = asyncio.create_task(client.write_records([record()]))
        await _until(lambda: UNAVAILABLE in log.codes(), "a refused connection")
        async with _serving(ingest_settings(db_url, port=port)):
            response = await asyncio.wait_for(sending, 60)
    assert response.accepted_count == 1
    assert log.codes()[-1] == OK and set(log.codes()[:-1]) == {UNAVAILABLE}


async def test_deadline_exceeded_is_not_retried(ingest_addr: str, db_url: str) -> None:
    blocker = await _hold_rollup_lock(db_url)
    try:
        async with _watched(ingest_addr, timeout=0.3) as (client, log):
            with pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED") as caught:
                await client.write_records([record()])
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    assert log.codes() == [grpc.StatusCode.DEADLINE_EXCEEDED] and caught.value.attempts == 1
    assert "\n" not in str(caught.value)


async def test_a_message_over_the_servers_limit_is_not_retried(ingest_addr: str) -> None:
    huge = record(error_message="x" * (MAX_MESSAGE_BYTES + 1))
    async with _watched(ingest_addr) as (client, log):
        with pytest.raises(ResourceExhaustedError, match="larger than max") as caught:
            await client.write_records([huge])
    assert log.codes() == [EXHAUSTED] and caught.value.attempts == 1


async def test_a_database_refusing_writes_is_not_retried(ingest_addr: str, db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'writes are refused'; END$$;"
            "CREATE TRIGGER refuse BEFORE INSERT ON usage_records "
            "FOR EACH STATEMENT EXECUTE FUNCTION refuse()"
        )
    finally:
        await conn.close()
    async with _watched(ingest_addr) as (client, log):
        with pytest.raises(RpcError) as caught:
            await client.write_records([record()])
    # INTERNAL with an error id the service log repeats; the database's words stay in the log
    assert type(caught.value) is RpcError and caught.value.code == grpc.StatusCode.INTERNAL
    assert log.codes() == [grpc.StatusCode.INTERNAL] and "internal error (id " in str(caught.value)
    assert "writes are refused" not in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_stream_windows_keep_indexes_across_the_whole_input(ingest_addr: str, db_url: str) -> None:
    batches = [
        [record(request_id=f"r{b}-{i}", model="" if (b, i) == (3, 1) else "m") for i in range(2)]
        for b in range(5)
    ]
    sent: list[int] = []
    async with _watched(ingest_addr, stream_window_records=3) as (client, log):
        response = await client.stream_records(_batches(*batches), on_sent=sent.append)
    assert (response.accepted_count, response.duplicate_count) == (9, 0)
    assert [(r.index, r.request_id, r.field) for r in response.rejections] == [(7, "r3-1", "model")]
    assert log.calls == [("StreamRecords", OK)] * 3 and sum(sent) == 10
    assert await _stored(db_url) == 9


async def test_stream_folds_an_all_invalid_window_into_rejections(ingest_addr: str, db_url: str) -> None:
    recs = {name: record(request_id=name, model="" if name in "cd" else "m") for name in "abcde"}
    async with _watched(ingest_addr, stream_window_records=2) as (client, log):
        response = await client.stream_records(
            _batches([recs["a"], recs["b"]], [recs["c"], recs["d"]], [], [recs["e"]])
        )
    assert response.accepted_count == 3
    assert [(r.index, r.request_id, r.field, r.reason) for r in response.rejections] == [
        (2, "c", "model", "model is required"),
        (3, "d", "model", "model is required"),
    ]
    assert log.codes() == [OK, grpc.StatusCode.INVALID_ARGUMENT, OK]
    assert await _stored(db_url) == 3


async def test_stream_surfaces_a_violation_that_names_no_record(db_url: str) -> None:
    async with (
        _serving(ingest_settings(db_url, max_batch_records=3)) as server,
        _watched(f"127.0.0.1:{server.port}") as (client, _),
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            await client.stream_records(_batches([record() for _ in range(4)]))
    # streamed batches travel as columns (`stream_as_columns`), so the message's list is `columns`
    assert caught.value.violations == (FieldViolation("columns", "at most 3 records per message"),)
    assert "\n" not in str(caught.value)


async def test_stream_resends_a_failed_window_and_stores_each_record_once(db_url: str) -> None:
    settings = ingest_settings(db_url, queue_max_records=4, writers=1, stream_queue_wait_seconds=1.0)
    batches = [[record(START) for _ in range(3)] for _ in range(4)]
    sent: list[int] = []
    async with _serving(settings) as server:
        blocker = await _hold_rollup_lock(db_url)
        try:
            async with _watched(f"127.0.0.1:{server.port}", PATIENT) as (client, log):
                # The first message is queued behind the lock, the second finds the queue full.
                stream = client.stream_records(_batches(*batches), on_sent=sent.append)
                streaming = asyncio.create_task(stream)
                await _until(lambda: EXHAUSTED in log.codes(), "the stream to be refused midway")
                await blocker.execute("ROLLBACK")  # the first message commits; the window is sent again
                response = await asyncio.wait_for(streaming, 60)
                codes = log.codes()
                # a control: as many records in another minute, written without any failure
                await client.write_records([record(START - timedelta(hours=1)) for _ in range(12)])
        finally:
            await blocker.close()
    assert codes[-1] == OK and set(codes[:-1]) == {EXHAUSTED}
    assert response.accepted_count + response.duplicate_count == 12 and response.duplicate_count >= 3
    assert sum(sent) == 12  # progress is not reported twice for a re-sent window
    assert await _stored(db_url) == 24
    await drain_rollups(db_url)
    rollup = "SELECT sum(request_count) FROM usage_1m WHERE bucket = date_trunc('minute', $1::timestamptz)"
    conn = await asyncpg.connect(db_url)
    try:  # no double counts: the re-sent minute adds up exactly like the control minute
        resent, control = [await conn.fetchval(rollup, t) for t in (START, START - timedelta(hours=1))]
    finally:
        await conn.close()
    assert resent == control and resent > 0


async def test_empty_stream_sends_nothing(ingest_addr: str) -> None:
    async with _watched(ingest_addr) as (client, log):
        response = await client.stream_records(_batches([], []))
    assert response == ingest_pb2.StreamRecordsResponse() and log.calls == []


@pytest.mark.parametrize("as_columns", [True, False], ids=["columns", "records"])
async def test_stream_outcome_is_the_same_in_either_form(
        ingest_addr: str, db_url: str, as_columns: bool) -> None:
    nan_cost = record(request_id="nan")
    nan_cost.cost = float("nan")  # columns cannot carry it: that batch travels as records
    batches = [[record(request_id="a"), record(request_id="bad", model="")],
               [record(request_id="b"), nan_cost], [record(request_id="a")]]
    async with _watched(ingest_addr, stream_as_columns=as_columns) as (client, _):
        response = await client.stream_records(_batches(*batches))
    assert (response.accepted_count, response.duplicate_count) == (2, 1)
    assert [(r.index, r.request_id, r.field) for r in response.rejections] == [(1, "bad", "model"),
                                                                              (3, "nan", "cost")]
    assert await _stored(db_url) == 2
