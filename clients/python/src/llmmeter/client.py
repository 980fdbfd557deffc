"""Thin async clients of the llmmeter ingest, query and alerts services, and the errors they raise.

They add to the generated `grpc.aio` stubs only what every caller would
otherwise rewrite: channel lifetime, deadlines, bounded retries of "try again
later" statuses, one-line exceptions (see :mod:`llmmeter.errors`), and for
ingest streams a split into re-sendable windows so a retry never needs the
whole input in memory. Each client lives in its own module; this one is the
single import callers need.
"""

from __future__ import annotations

from llmmeter.alerts_client import AlertsClient
from llmmeter.errors import (
    AlreadyExistsError,
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
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
from llmmeter.ingest_client import OnSent as OnSent  # progress callback type, importable here as before
from llmmeter.query_client import QueryClient

__all__ = [
    "AlertsClient",
    "AlreadyExistsError",
    "ConfigError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "IngestClient",
    "InvalidArgumentError",
    "LlmmeterError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueryClient",
    "ResourceExhaustedError",
    "RpcError",
    "UnauthenticatedError",
    "UnavailableError",
]
