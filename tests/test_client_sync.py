"""The client package's top-level imports and the blocking facades (llmmeter.sync) against the real
ingest and query services."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import llmmeter
import llmmeter.sync
from llmmeter import ClientConfig, NotFoundError, UnauthenticatedError
from llmmeter.v1 import query_pb2
from llmmeter_ingest.server import IngestServer
from llmmeter_query.server import QueryServer

from keyring import ADMIN
from records import record, ts

_FIRST_IMPORTS = (
    "llmmeter", "llmmeter.v1.usage_pb2", "llmmeter.v1.ingest_pb2_grpc", "llmmeter.config", "llmmeter.errors",
    "llmmeter.channels", "llmmeter.ingest_client", "llmmeter.query_client", "llmmeter.alerts_client",
    "llmmeter.keys_client", "llmmeter.client", "llmmeter.sync", "llmmeter.cli.main",
    "llmmeter.integrations.shipper", "llmmeter.integrations.litellm_records",
)

_CHECK = """
import importlib, sys
for first in %r:
    for name in [m for m in sys.modules if m == "llmmeter" or m.startswith("llmmeter.")]:
        del sys.modules[name]
    importlib.import_module(first)
    from llmmeter import AlertsClient, ClientConfig, IngestClient, QueryClient
    import llmmeter.alerts_client, llmmeter.config, llmmeter.ingest_client, llmmeter.query_client
    assert IngestClient is llmmeter.ingest_client.IngestClient
    assert QueryClient is llmmeter.query_client.QueryClient
    assert AlertsClient is llmmeter.alerts_client.AlertsClient
    assert ClientConfig is llmmeter.config.ClientConfig
for name in [m for m in sys.modules if m == "llmmeter" or m.startswith("llmmeter.")]:
    del sys.modules[name]
import llmmeter.v1.usage_pb2
print("lazy" if "llmmeter.ingest_client" not in sys.modules else "eager")
"""


def test_top_level_names_import_whichever_module_comes_first() -> None:
    """No import cycle: each module imported first in a fresh interpreter, then the top-level names;
    and importing the generated code alone loads no client."""
    done = subprocess.run([sys.executable, "-c", _CHECK % (_FIRST_IMPORTS,)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lazy"
    assert set(llmmeter.__all__) <= set(dir(llmmeter))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        llmmeter.Nope  # noqa: B018


def _config(ingest: IngestServer, query: QueryServer, key: str = ADMIN.token) -> ClientConfig:
    return ClientConfig(ingest_addr=f"127.0.0.1:{ingest.port}", query_addr=f"127.0.0.1:{query.port}",
                        api_key=key)


def _use_sync_clients(config: ClientConfig) -> dict[str, Any]:
    """What a script does with the blocking clients (run in a thread: the services share the test's loop)."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    out: dict[str, Any] = {}
    with llmmeter.sync.IngestClient(config) as ingest:
        out["written"] = ingest.write_records([record(t0, request_id=f"sync-{i}", team="payments")
                                               for i in range(3)])
        batches = ([record(t0 + timedelta(seconds=b), request_id=f"stream-{b}-{i}") for i in range(4)]
                   for b in range(5))
        out["streamed"] = ingest.stream_records(batches)
        out["again"] = ingest.write_records([record(t0, request_id="sync-0", team="payments")])
    window = {"start_time": ts(t0 - timedelta(minutes=1)), "end_time": ts(datetime.now(UTC))}
    with llmmeter.sync.QueryClient(config) as query:
        out["summary"] = query.get_summary(query_pb2.GetSummaryRequest(**window))
        out["page"] = query.list_requests(query_pb2.ListRequestsRequest(**window, filter='team = "payments"'))
        out["export"] = b"".join(chunk.data for chunk in query.export_requests(
            query_pb2.ExportRequestsRequest(**window, format=query_pb2.EXPORT_FORMAT_NDJSON)))
        try:
            query.get_request(query_pb2.GetRequestRequest(request_id="no-such-request"))
        except NotFoundError as error:
            out["missing"] = error
        out["closed_loop"] = query.loop
    return out


async def test_sync_facades_write_and_read_through_the_real_services(
        ingest_server: IngestServer, query_server: QueryServer) -> None:
    out = await asyncio.to_thread(_use_sync_clients, _config(ingest_server, query_server))
    assert out["written"].accepted_count == 3 and not out["written"].rejections
    assert out["streamed"].accepted_count == 20
    assert (out["again"].accepted_count, out["again"].duplicate_count) == (0, 1)
    assert out["summary"].summary.request_count == 23
    assert sorted(row.request_id for row in out["page"].requests) == ["sync-0", "sync-1", "sync-2"]
    lines = [json.loads(line) for line in out["export"].decode().splitlines() if line.strip()]
    assert len(lines) == 23
    assert out["missing"].method == "GetRequest"
    assert out["closed_loop"].is_closed()


async def test_sync_facade_raises_the_async_clients_errors(
        ingest_server: IngestServer, query_server: QueryServer) -> None:
    config = _config(ingest_server, query_server, key="llmm_000000000000_" + "x" * 43)

    def call() -> None:
        with llmmeter.sync.QueryClient(config) as query:
            query.get_summary(query_pb2.GetSummaryRequest())

    with pytest.raises(UnauthenticatedError, match="UNAUTHENTICATED"):
        await asyncio.to_thread(call)


async def test_sync_facade_works_inside_a_running_event_loop(ingest_addr: str) -> None:
    """Unlike asyncio.run, the facade also works where an event loop is already running (a notebook,
    an async framework's sync callback): here a loop of its own in a thread, as the ingest service
    runs on the test's loop."""

    async def inside() -> int:
        with llmmeter.sync.IngestClient(ClientConfig(ingest_addr=ingest_addr, api_key=ADMIN.token)) as client:
            return client.write_records([record(request_id="from-a-loop")]).accepted_count

    assert await asyncio.to_thread(asyncio.run, inside()) == 1


async def test_the_client_readme_example_runs(ingest_server: IngestServer, query_server: QueryServer,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The "Ten lines" of clients/python/README.md, as printed there, against the real services."""
    readme = (Path(__file__).parent.parent / "clients" / "python" / "README.md").read_text()
    example = readme.split("## Ten lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) <= 12
    monkeypatch.setenv("LLMMETER_INGEST_ADDR", f"127.0.0.1:{ingest_server.port}")
    monkeypatch.setenv("LLMMETER_QUERY_ADDR", f"127.0.0.1:{query_server.port}")
    await asyncio.to_thread(exec, compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "1" and "request_count: 1" in printed
