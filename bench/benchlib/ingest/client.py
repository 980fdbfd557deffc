"""The ingest benchmark's client, in a process of its own.

Sending from the benchmark's own interpreter would put client and service work on one GIL;
as its own process the client behaves like a real one. It loads pre-serialised messages,
connects, says it is ready, and starts the clock only when the parent says go.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

from ..harness import BenchFailure, api_key

STREAM_METHOD = "/llmmeter.v1.IngestService/StreamRecords"


def client_process(addr: str, chunks_path: str, streams: int, ready: Any, go: Any, results: Any) -> None:
    """Runs in its own process: load the serialized chunks, connect, wait for `go`, send, time."""
    try:
        results.put(("ok", asyncio.run(_client(addr, chunks_path, streams, ready, go))))
    except BaseException as exc:  # report anything, the parent fails loudly
        results.put(("error", f"{type(exc).__name__}: {exc}"))


async def _client(addr: str, chunks_path: str, streams: int, ready: Any, go: Any) -> dict[str, Any]:

    from llmmeter.channels import open_channel
    from llmmeter.v1 import ingest_pb2

    chunks: list[bytes] = pickle.loads(Path(chunks_path).read_bytes())  # noqa: ASYNC240 (before the clock)
    groups = [chunks[i::streams] for i in range(streams)]
    groups = [g for g in groups if g]
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with open_channel(addr, api_key(), options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        # Pre-serialized messages: no request serializer, the bytes go out as they are.
        call = channel.stream_unary(
            STREAM_METHOD, request_serializer=None,
            response_deserializer=ingest_pb2.StreamRecordsResponse.FromString,
        )

        async def messages(group: list[bytes]) -> Any:
            for message in group:
                yield message

        ready.set()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, 120):
            raise BenchFailure("parent never said go")
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        responses = await asyncio.gather(*(call(messages(g)) for g in groups))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {
        "elapsed": elapsed,
        "client_cpu": cpu,
        "accepted": sum(r.accepted_count for r in responses),
        "duplicates": sum(r.duplicate_count for r in responses),
        "rejections": sum(len(r.rejections) for r in responses),
        "first_rejection": next((str(r.rejections[0]) for r in responses if r.rejections), ""),
        "streams": len(groups),
    }
