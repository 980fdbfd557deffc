"""Exceptions raised by the llmmeter client.

Raw `grpc.aio.AioRpcError`s print as multi-line debug dumps and hide the
`google.rpc.BadRequest` the server attaches to INVALID_ARGUMENT. This module
turns them into one exception class per status code worth handling, with a
one-line message that names the service, the method and the reason, and the
field violations as plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_MAX_VIOLATIONS_IN_MESSAGE = 3


class LlmmeterError(Exception):
    """Base of every error the llmmeter client raises on purpose.

    `str(error)` is a single line fit for a CLI's stderr.
    """


class ConfigError(LlmmeterError):
    """A client setting (argument or `LLMMETER_*` variable) has an unusable value."""


@dataclass(frozen=True)
class FieldViolation:
    """One entry of a `google.rpc.BadRequest`: which field of the request is wrong and why."""

    field: str
    """Path of the offending field, e.g. `records[3].end_time`."""

    description: str
    """Why the value was refused."""


class RpcError(LlmmeterError):
    """A call to an llmmeter service failed with a non-OK gRPC status."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        details: str,
        service: str,
        target: str,
        method: str,
        attempts: int = 1,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        """Keeps the parts of the failure so callers can act on them, not parse the message."""
        super().__init__(message)
        self.code = code
        self.details = details
        self.service = service
        self.target = target
        self.method = method
        self.attempts = attempts
        self.violations = violations


class InvalidArgumentError(RpcError):
    """The request was refused as invalid; `violations` says which fields and why."""


class NotFoundError(RpcError):
    """The thing the request names does not exist."""


class AlreadyExistsError(RpcError):
    """The thing the request creates exists already."""


class FailedPreconditionError(RpcError):
    """The system is not in a state where the request can run."""


class PermissionDeniedError(RpcError):
    """The caller may not do this."""


class UnauthenticatedError(RpcError):
    """The call carried no valid credentials."""


class ResourceExhaustedError(RpcError):
    """The server's queue is full (or a message is too large); retries did not help."""


class UnavailableError(RpcError):
    """The service or its database could not be reached; retries did not help."""


class DeadlineExceededError(RpcError):
    """The call did not finish within the configured timeout."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def one_line(text: str) -> str:
    """Collapses whitespace and newlines so a message from anywhere fits on one stderr line."""
    return " ".join(text.split())


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """Returns the `google.rpc.Status` the server attached to `error`, if any.

    `rpc_status.from_call` insists that the status proto repeats the call's code
    and message exactly; a server that words them differently still sent useful
    details, so on a mismatch the trailer is decoded directly.
    """
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
        return status
    except ValueError:
        pass
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == _STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def field_violations(error: grpc.RpcError) -> tuple[FieldViolation, ...]:
    """Extracts the `google.rpc.BadRequest` field violations from a failed call's status details."""
    status = _rich_status(error)
    if status is None:
        return ()
    violations: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(field=v.field, description=v.description) for v in bad_request.field_violations
            )
    return tuple(violations)


def is_message_too_large(error: grpc.RpcError) -> bool:
    """Tells a "message larger than max" RESOURCE_EXHAUSTED (retrying cannot help) from a full queue."""
    return "larger than max" in (error.details() or "")


def error_from_rpc(
    error: grpc.RpcError, *, service: str, target: str, method: str, attempts: int = 1
) -> RpcError:
    """Converts a failed gRPC call into the matching :class:`RpcError` subclass with a one-line message.

    `service` is a human name ("ingest service"), `target` the address dialled
    and `method` the RPC name; `attempts` is mentioned when retries gave up.
    """
    code: grpc.StatusCode = error.code()
    details = one_line(error.details() or "")
    violations = field_violations(error)
    parts = [f"{method} on the {service} at {target} failed: {code.name}"]
    if details:
        parts.append(f": {details}")
    if violations:
        shown = "; ".join(f"{v.field}: {v.description}" for v in violations[:_MAX_VIOLATIONS_IN_MESSAGE])
        more = len(violations) - _MAX_VIOLATIONS_IN_MESSAGE
        parts.append(f" [{shown}" + (f"; and {more} more]" if more > 0 else "]"))
    if attempts > 1:
        parts.append(f" (gave up after {attempts} attempts)")
    if code == grpc.StatusCode.UNAVAILABLE:
        parts.append(f" - is the {service} running at {target}?")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        parts.append(" - set LLMMETER_API_KEY (or LLMMETER_API_KEY_FILE), or run from the project folder "
                     "of a `make run` stack")
    cls = _ERROR_CLASSES.get(code, RpcError)
    return cls(
        one_line("".join(parts)),
        code=code,
        details=details,
        service=service,
        target=target,
        method=method,
        attempts=attempts,
        violations=violations,
    )
