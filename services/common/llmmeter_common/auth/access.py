"""Who a presented key is and whether it may make a call: the one decision every front door uses.

The gRPC interceptor and the OTLP/HTTP receiver differ only in where the key travels (call
metadata or an HTTP header); both hand it here, so a rule of access is written once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmmeter_common.auth.keys import ANONYMOUS_ADMIN, Principal
from llmmeter_common.auth.keystore import KeyStore
from llmmeter_common.auth.policy import requirement
from llmmeter_common.errors import PermissionDenied, Unauthenticated


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key of an `authorization: Bearer <key>` pair (the scheme is case-insensitive)."""
    for name, value in metadata or ():
        if name.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


async def authorize(store: KeyStore | None, method: str, token: str | None, send_as: str) -> Principal:
    """The caller of `method` presenting `token`; UNAUTHENTICATED or PERMISSION_DENIED otherwise.
    `store` None means the operator disabled auth (every call is an unscoped admin); `send_as`
    tells a caller without a key how to send one."""
    if store is None:
        return ANONYMOUS_ADMIN
    need = requirement(method)
    if need is None:
        raise PermissionDenied(f"{method} is not open to any key")
    if token is None:
        raise Unauthenticated(f"an API key is required: send {send_as} 'authorization: Bearer <key>'")
    principal = await store.authenticate(token)
    if principal is None:
        raise Unauthenticated("the API key is not valid (malformed, unknown or revoked)")
    if not principal.role.allows(need.role):
        raise PermissionDenied(f"key {principal.key_id} has role {principal.role}; {method} needs "
                               f"{need.role}")
    if principal.team is not None and not need.team_scoped:
        raise PermissionDenied(f"key {principal.key_id} is bound to a team; {method} needs a key "
                               "for every team")
    return principal
