"""A service that is up (health, reflection, migrated database) before it has any RPCs.

The query and alerts services start as this until their own issues fill them
in, so `make run`, health probes and deployment can be built and tested now.
"""

from __future__ import annotations

import logging

from llmmeter_common.migrate import migrate
from llmmeter_common.serving import GrpcServer, wait_for_database

log = logging.getLogger(__name__)


class PlaceholderServer:
    """Health-checked gRPC server on `port` over a migrated database."""

    def __init__(self, name: str, database_url: str, host: str, port: int, grace: float = 5.0) -> None:
        self.name = name
        self._url = database_url
        self._host = host
        self._port = port
        self._grace = grace
        self._grpc: GrpcServer | None = None

    async def start(self) -> int:
        """Wait for the database, migrate, serve health and reflection."""
        await wait_for_database(self._url, 120.0)
        await migrate(self._url)
        self._grpc = GrpcServer([])
        port = await self._grpc.start(self._host, self._port)
        log.info("%s service listening on %s:%d (health and reflection only)", self.name, self._host, port)
        return port

    async def stop(self) -> None:
        """Stop serving."""
        if self._grpc is not None:
            await self._grpc.stop(self._grace)
