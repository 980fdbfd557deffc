"""The console's connections to the query and alerts services: one pair of clients per API key.

The console is a consumer of the gRPC API like any other: it dials the services with the
client package, sending the key of the browser session (or the operator's configured key),
so a team-bound key shows that team's data only, enforced by the services.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from llmmeter.alerts_client import AlertsClient
from llmmeter.channels import TlsConfig
from llmmeter.config import ClientConfig
from llmmeter.query_client import QueryClient
from llmmeter_console.settings import ConsoleSettings

_MAX_SESSIONS = 64


@dataclass
class Backend:
    """The clients one key calls the services with."""

    query: QueryClient
    alerts: AlertsClient

    async def close(self) -> None:
        """Close both channels."""
        await self.query.close()
        await self.alerts.close()


def client_config(settings: ConsoleSettings, api_key: str) -> ClientConfig:
    """The one place the console's client configuration is made."""
    return replace(ClientConfig(), query_addr=settings.query_addr, alerts_addr=settings.alerts_addr,
                   timeout=settings.timeout_seconds, api_key=api_key,
                   tls=TlsConfig(settings.tls_ca_file) if settings.tls_ca_file else None)


class Backends:
    """Clients per key, the least recently used closed beyond a few dozen keys."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings
        self._by_key: OrderedDict[str, Backend] = OrderedDict()

    async def get(self, api_key: str) -> Backend:
        """The clients of `api_key` (dialled on first use)."""
        found = self._by_key.get(api_key)
        if found is not None:
            self._by_key.move_to_end(api_key)
            return found
        config = client_config(self._settings, api_key)
        backend = Backend(QueryClient(config), AlertsClient(config))
        self._by_key[api_key] = backend
        while len(self._by_key) > _MAX_SESSIONS:
            _, old = self._by_key.popitem(last=False)
            await old.close()
        return backend

    async def close(self) -> None:
        """Close every channel."""
        for backend in self._by_key.values():
            await backend.close()
        self._by_key.clear()
