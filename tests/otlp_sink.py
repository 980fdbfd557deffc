"""A real OTLP/gRPC receiver on a free loopback port, for tests of what the services export."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc


@asynccontextmanager
async def serving(servicer: Any, *adders: Callable[[Any, grpc.aio.Server], None]) -> AsyncIterator[int]:
    """Serve `servicer` under each generated `add_...Servicer_to_server`; yields the port."""
    server = grpc.aio.server()
    for add in adders:
        add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)
