"""The plumbing every llmmeter service client shares: channel lifetime, deadlines and retried unary calls.

The ingest, query and alerts clients differ only in their stubs and in how
they stream; keeping the channel ownership, the `async with` protocol and
the retried unary call in one base class means a fix to any of them (a
leaked channel, a missing deadline) reaches every client at once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import grpc

from llmmeter.channels import open_channel
from llmmeter.config import ClientConfig
from llmmeter.retry import Retrier


class ServiceClient:
    """What every llmmeter client shares: its channel, retry policy and `async with` use."""

    SERVICE = ""
    """The service's name in error messages."""

    _stub: Any
    """The generated stub of the service, set by the subclass once the channel exists."""

    def __init__(self, address: str, config: ClientConfig, channel: grpc.aio.Channel | None) -> None:
        """Dials `address` (with the config's key and TLS) unless a `channel` is given, which is then
        used as it is (it must carry its own key) and not closed."""
        self._config = config
        self._owns_channel = channel is None
        self._channel = channel or open_channel(address, config.api_key, config.tls)
        self._retrier = Retrier(config.retry, service=self.SERVICE, target=address)

    async def __aenter__(self) -> Self:
        """Returns the client itself; the channel is already usable."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Closes the channel when the client created it."""
        await self.close()

    async def close(self) -> None:
        """Closes the channel when the client created it, cancelling calls still in flight."""
        if self._owns_channel:
            await self._channel.close()

    async def _unary(self, method: str, request: Any) -> Any:
        """Calls one unary method of the stub by name, under the configured deadline and retry policy."""
        rpc = getattr(self._stub, method)
        return await self._retrier.call(method, lambda: rpc(request, timeout=self._config.timeout))
