"""Python client and CLI for llmmeter.

The clients and their configuration are importable from here::

    from llmmeter import ClientConfig, IngestClient, QueryClient, AlertsClient   # async (grpc.aio)
    from llmmeter.sync import IngestClient, QueryClient                          # blocking facades

The names are resolved on first use (PEP 562), so importing `llmmeter` or its
generated code (`llmmeter.v1`) loads no client module, and no client module
depends on this one: there is no import cycle whichever module comes first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmmeter.alerts_client import AlertsClient
    from llmmeter.channels import TlsConfig
    from llmmeter.config import ClientConfig, RetryPolicy
    from llmmeter.errors import (
        ConfigError,
        InvalidArgumentError,
        LlmmeterError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        RpcError,
        UnauthenticatedError,
        UnavailableError,
    )
    from llmmeter.ingest_client import IngestClient
    from llmmeter.keys_client import KeysClient
    from llmmeter.query_client import QueryClient

_EXPORTS = {
    "IngestClient": "llmmeter.ingest_client",
    "QueryClient": "llmmeter.query_client",
    "AlertsClient": "llmmeter.alerts_client",
    "KeysClient": "llmmeter.keys_client",
    "ClientConfig": "llmmeter.config",
    "RetryPolicy": "llmmeter.config",
    "TlsConfig": "llmmeter.channels",
    "LlmmeterError": "llmmeter.errors",
    "ConfigError": "llmmeter.errors",
    "RpcError": "llmmeter.errors",
    "InvalidArgumentError": "llmmeter.errors",
    "NotFoundError": "llmmeter.errors",
    "PermissionDeniedError": "llmmeter.errors",
    "UnauthenticatedError": "llmmeter.errors",
    "ResourceExhaustedError": "llmmeter.errors",
    "UnavailableError": "llmmeter.errors",
}

__all__ = [
    "AlertsClient", "ClientConfig", "ConfigError", "IngestClient", "InvalidArgumentError", "KeysClient",
    "LlmmeterError", "NotFoundError", "PermissionDeniedError", "QueryClient", "ResourceExhaustedError",
    "RetryPolicy", "RpcError", "TlsConfig", "UnauthenticatedError", "UnavailableError",
]


def __getattr__(name: str) -> Any:
    """Imports the module defining `name` on first access and caches the value here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmmeter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
