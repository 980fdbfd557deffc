"""The caller of the RPC being served, for domain code that must scope what it reads or writes.

The auth interceptor sets it inside the handler's own task, so it is exactly the
caller of that call; domain code reads `team_scope()` and never sees gRPC.
"""

from __future__ import annotations

from contextvars import ContextVar

from llmmeter_common.auth.keys import ANONYMOUS_ADMIN, Principal

_current: ContextVar[Principal] = ContextVar("llmmeter_principal", default=ANONYMOUS_ADMIN)


def current_principal() -> Principal:
    """The caller of the current call (an unscoped admin outside any authenticated call)."""
    return _current.get()


def set_principal(principal: Principal) -> None:
    """Make `principal` the caller for the rest of the current task."""
    _current.set(principal)


def team_scope() -> str | None:
    """The only team the caller may see or write; None when it may see every team."""
    return _current.get().team
