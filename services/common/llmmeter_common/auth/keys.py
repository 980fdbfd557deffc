"""Roles and principals, free of gRPC and of the database; the key format itself is the client
package's (`llmmeter.keyformat`), so `llmmeter keys generate` and the services agree on it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from llmmeter.keyformat import NewKey, generate, hash_secret, parse

__all__ = ["ANONYMOUS_ADMIN", "NewKey", "Principal", "Role", "generate", "hash_secret", "parse",
           "secret_matches"]


class Role(StrEnum):
    """What a key may do; `admin` includes the other two."""

    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """Whether a key of this role may make a call that needs `needed`."""
        return self is Role.ADMIN or self is needed


@dataclass(frozen=True)
class Principal:
    """The caller of one RPC: the key's id, role and team scope (None: every team)."""

    key_id: str
    role: Role
    team: str | None = None


#: Who a service acts as when auth is disabled by its operator: an unscoped admin.
ANONYMOUS_ADMIN = Principal("anonymous", Role.ADMIN, None)


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
