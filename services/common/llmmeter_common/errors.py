"""Domain errors, free of gRPC, that one interceptor maps to status codes.

Domain code raises these; servicers stay thin and never build statuses by
hand, so every service reports the same failure the same way (AIP-193).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: `field` is a path such as `records[3].end_time`."""

    field: str
    description: str


class LlmmeterError(Exception):
    """Base of the errors a caller is meant to see."""


class InvalidArgument(LlmmeterError):
    """The request itself is wrong; retrying it unchanged cannot help."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []


class Unauthenticated(LlmmeterError):
    """The call carries no valid API key."""


class PermissionDenied(LlmmeterError):
    """The caller's key may not make this call (its role or team scope)."""


class NotFound(LlmmeterError):
    """The named resource does not exist."""


class Unavailable(LlmmeterError):
    """A dependency (the database) is unreachable; retrying later is safe."""


class ResourceExhausted(LlmmeterError):
    """The service is saturated (a full queue); retry with backoff."""


class DeadlineExceeded(LlmmeterError):
    """The work took longer than allowed (e.g. a statement timeout); narrow the request or retry."""
