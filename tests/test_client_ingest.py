"""IngestClient and the CLI against an in-process fake IngestService.

The fake follows the server contract (mixed batches return rejections, an
all-invalid request fails with INVALID_ARGUMENT and a BadRequest, duplicates
are dropped on (request_id, start_time)) and can inject failures, so retries,
error messages, stream windows and line mapping are tested without a database.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from llmmeter.cli.main import main
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
from llmmeter.errors import ConfigError
from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc, usage_pb2

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.005)


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Keeps records in memory; `failures` are status codes to fail the next calls with."""

    def __init__(self) -> None:
        self.stored: set[tuple[str, bytes]] = set()
        self.failures: list[tuple[grpc.StatusCode, str]] = []
        self.fail_after_messages = 0  # a stream failure hits after this many messages were stored
        self.delay = 0.0
        self.calls = 0

    def _ingest(self, records: Sequence[usage_pb2.UsageRecord], offset: int, out: Any) -> None:
        for i, rec in enumerate(records):
            if not rec.model or not rec.request_id:
                field = "request_id" if not rec.request_id else "model"
                out.rejections.add(
                    index=offset + i, request_id=rec.request_id, field=field, reason=f"{field} is required"
                )
                continue
            key = (rec.request_id, rec.start_time.SerializeToString())
            if key in self.stored:
                out.duplicate_count += 1
            else:
                self.stored.add(key)
                out.accepted_count += 1

    async def _check(self, out: Any, context: grpc.aio.ServicerContext) -> None:
        if out.accepted_count or out.duplicate_count:
            return
        bad_request = error_details_pb2.BadRequest()
        for r in out.rejections:
            bad_request.field_violations.add(field=f"records[{r.index}].{r.field}", description=r.reason)
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="all records were rejected")
        status.details.append(detail)
        await context.abort_with_status(rpc_status.to_status(status))

    async def _maybe_fail(self, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.failures:
            code, details = self.failures.pop(0)
            await context.abort(code, details)

    async def WriteRecords(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._maybe_fail(context)
        out = ingest_pb2.WriteRecordsResponse()
        self._ingest(request.records, 0, out)
        await self._check(out, context)
        return out

    async def StreamRecords(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        out = ingest_pb2.StreamRecordsResponse()
        offset = 0
        async for message in request_iterator:
            self._ingest(message.records, offset, out)
            offset += len(message.records)
            if self.fail_after_messages and offset >= self.fail_after_messages:
                self.fail_after_messages = 0
                await context.abort(grpc.StatusCode.UNAVAILABLE, "database connection lost")
        await self._maybe_fail(context)
        await self._check(out, context)
        return out


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeIngest, str]]:
    server = grpc.aio.server()
    servicer = FakeIngest()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


def _rec(request_id: str, model: str = "gpt-4o") -> usage_pb2.UsageRecord:
    rec = usage_pb2.UsageRecord(request_id=request_id, model=model, status_code=200)
    rec.start_time.FromSeconds(1_750_000_000)
    rec.end_time.FromSeconds(1_750_000_001)
    return rec


def _client(addr: str, **config: Any) -> IngestClient:
    return IngestClient(ClientConfig(ingest_addr=addr, retry=FAST_RETRY, **config))


async def _batches(*batches: list[usage_pb2.UsageRecord]) -> AsyncIterator[list[usage_pb2.UsageRecord]]:
    for batch in batches:
        yield batch


async def test_write_records_reports_mixed_batches(fake: tuple[FakeIngest, str]) -> None:
    async with _client(fake[1]) as client:
        response = await client.write_records([_rec("a"), _rec("b", model=""), _rec("a")])
    assert (response.accepted_count, response.duplicate_count) == (1, 1)
    assert [(r.index, r.request_id, r.field) for r in response.rejections] == [(1, "b", "model")]


async def test_all_invalid_batch_raises_with_field_violations(fake: tuple[FakeIngest, str]) -> None:
    async with _client(fake[1]) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.write_records([_rec("a", model=""), _rec("")])
    error = caught.value
    assert error.violations == (
        FieldViolation("records[0].model", "model is required"),
        FieldViolation("records[1].request_id", "request_id is required"),
    )
    assert "\n" not in str(error)
    assert str(error).startswith(f"WriteRecords on the ingest service at {fake[1]} failed: INVALID_ARGUMENT")
    assert "records[0].model: model is required" in str(error)


async def test_retries_full_queue_and_unavailable_then_succeeds(fake: tuple[FakeIngest, str]) -> None:
    servicer, addr = fake
    servicer.failures = [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
        (grpc.StatusCode.UNAVAILABLE, "db down"),
    ]
    async with _client(addr) as client:
        response = await client.write_records([_rec("a")])
    assert response.accepted_count == 1 and servicer.calls == 3


async def test_gives_up_after_max_attempts(fake: tuple[FakeIngest, str]) -> None:
    servicer, addr = fake
    servicer.failures = [(grpc.StatusCode.UNAVAILABLE, "db down")] * 10
    async with _client(addr) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.write_records([_rec("a")])
    assert servicer.calls == 4 and caught.value.attempts == 4
    assert "gave up after 4 attempts" in str(caught.value) and "db down" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "details", "error_type"),
    [
        (grpc.StatusCode.INTERNAL, "boom", RpcError),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Received message larger than max (5 vs. 4)",
            ResourceExhaustedError,
        ),
    ],
)
async def test_does_not_retry_what_cannot_succeed(
    fake: tuple[FakeIngest, str], code: grpc.StatusCode, details: str, error_type: type[RpcError]
) -> None:
    servicer, addr = fake
    servicer.failures = [(code, details)] * 3
    async with _client(addr) as client:
        with pytest.raises(error_type):
            await client.write_records([_rec("a")])
    assert servicer.calls == 1


async def test_deadline(fake: tuple[FakeIngest, str]) -> None:
    servicer, addr = fake
    servicer.delay = 1.0
    async with _client(addr, timeout=0.1) as client:
        with pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED"):
            await client.write_records([_rec("a")])


async def test_stream_windows_keep_indexes_across_the_whole_input(fake: tuple[FakeIngest, str]) -> None:
    servicer, addr = fake
    batches = [[_rec(f"r{b}-{i}", model="" if (b, i) == (3, 1) else "m") for i in range(2)] for b in range(5)]
    sent: list[int] = []
    async with _client(addr, stream_window_records=3) as client:
        response = await client.stream_records(_batches(*batches), on_sent=sent.append)
    assert (response.accepted_count, response.duplicate_count) == (9, 0)
    assert [(r.index, r.request_id) for r in response.rejections] == [(7, "r3-1")]
    assert servicer.calls == 3 and sum(sent) == 10


async def test_stream_folds_an_all_invalid_window_into_rejections(fake: tuple[FakeIngest, str]) -> None:
    _, addr = fake
    async with _client(addr, stream_window_records=2) as client:
        response = await client.stream_records(
            _batches([_rec("a"), _rec("b")], [_rec("c", model=""), _rec("d", model="")], [], [_rec("e")])
        )
    assert response.accepted_count == 3
    assert [(r.index, r.request_id, r.field) for r in response.rejections] == [
        (2, "c", "model"),
        (3, "d", "model"),
    ]


async def test_stream_resends_a_failed_window_and_counts_each_record_once(
    fake: tuple[FakeIngest, str],
) -> None:
    servicer, addr = fake
    servicer.fail_after_messages = 2
    sent: list[int] = []
    async with _client(addr) as client:
        response = await client.stream_records(
            _batches(*([_rec(f"r{b}{i}") for i in range(3)] for b in range(4))), on_sent=sent.append
        )
    assert (response.accepted_count, response.duplicate_count) == (9, 3)  # the first message was re-sent
    assert len(servicer.stored) == 12 and sum(sent) == 12


async def test_empty_stream_sends_nothing(fake: tuple[FakeIngest, str]) -> None:
    servicer, addr = fake
    async with _client(addr) as client:
        response = await client.stream_records(_batches([], []))
    assert response == ingest_pb2.StreamRecordsResponse() and servicer.calls == 0


def test_config_from_env() -> None:
    config = ClientConfig.from_env(
        {"LLMMETER_INGEST_ADDR": "i:1", "LLMMETER_QUERY_ADDR": " ", "LLMMETER_TIMEOUT": "2.5"}
    )
    assert (config.ingest_addr, config.query_addr, config.alerts_addr, config.timeout) == (
        "i:1",
        "localhost:50052",
        "localhost:50053",
        2.5,
    )
    assert ClientConfig.from_env({}) == ClientConfig()
    with pytest.raises(ConfigError):
        ClientConfig.from_env({"LLMMETER_TIMEOUT": "soon"})
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    assert [RetryPolicy().backoff(n) for n in (1, 2, 3, 10)] == [0.2, 0.4, 0.8, 5.0]


async def _run_cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_cli_ingest_maps_every_outcome_to_its_line(
    fake: tuple[FakeIngest, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    lines = [
        json.dumps({"request_id": "a", "model": "m", "start_time": "2025-06-01T00:00:00Z"}),
        "",
        "{broken",
        json.dumps({"requestId": "b", "model": ""}),
        json.dumps({"request_id": "a", "model": "m", "start_time": "2025-06-01T00:00:00Z"}),
        json.dumps({"request_id": "c", "model": "m"}),
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code = await _run_cli("--ingest-addr", addr, "ingest", str(path), "--format", "json", "--batch-size", "2")
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (2, 1, 2)
    assert [(r["line"], r["request_id"], r["field"]) for r in report["rejections"]] == [
        (3, "", ""),
        (4, "b", "model"),
    ]
    assert len(servicer.stored) == 2


async def test_cli_ingest_all_good_exits_0_and_reads_stdin(
    fake: tuple[FakeIngest, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, addr = fake
    data = "\n".join(json.dumps({"request_id": f"r{i}", "model": "m"}) for i in range(5)).encode()
    monkeypatch.setattr("sys.stdin", type("Stdin", (), {"buffer": io.BytesIO(data)})())
    monkeypatch.setenv("LLMMETER_INGEST_ADDR", addr)
    assert await _run_cli("ingest", "-", "--quiet") == 0
    out = capsys.readouterr().out
    assert "accepted" in out and "5" in out


async def test_cli_demo_sends_the_generated_records(
    fake: tuple[FakeIngest, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, addr = fake
    code = await _run_cli(
        "demo",
        "--ingest-addr",
        addr,
        "--records",
        "250",
        "--batch-size",
        "100",
        "--seed",
        "1",
        "--format",
        "json",
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "accepted": 250,
        "duplicates": 0,
        "rejected": 0,
        "rejections": [],
    }
    assert len(servicer.stored) == 250


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (["--ingest-addr", "127.0.0.1:1", "--timeout", "1", "ingest", "__FILE__"], {}, 1, "UNAVAILABLE"),
        (
            ["ingest", "/nonexistent/records.jsonl"],
            {},
            1,
            "No such file or directory: /nonexistent/records.jsonl",
        ),
        (["ingest", "__FILE__"], {"LLMMETER_TIMEOUT": "later"}, 2, "LLMMETER_TIMEOUT must be a number"),
        (["ingest", "__FILE__", "--batch-size", "0"], {}, 2, "--batch-size: must be at least 1"),
        (["frobnicate"], {}, 2, "invalid choice"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str],
    env: dict[str, str],
    code: int,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"request_id": "r", "model": "m"}) + "\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main([str(path) if a == "__FILE__" else a for a in argv]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if code == 1:
        assert err.count("\n") == 1 and err.startswith("llmmeter: error: ")


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["ingest", "--help"], ["demo", "--help"]):
        assert main(argv) == 0
        assert "examples:" in capsys.readouterr().out
