"""The API key format, roles and principals, free of gRPC and of the database.

A key is `llmm_<key id>_<secret>`: the id (12 hex digits) is public and names
the key in listings and logs; the secret (256 random bits) is shown once and
stored only as its SHA-256. A fast hash is enough for a secret of that much
entropy (as GitHub and Stripe tokens do); what matters is that the table alone
never lets anyone call the services.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "llmm_"
_KEY = re.compile(r"^llmm_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")


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


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: the whole key (to show once) and what is stored of it."""

    key_id: str
    secret: str
    secret_hash: bytes

    @property
    def token(self) -> str:
        """The whole key, as sent in `authorization: Bearer <token>`."""
        return f"{PREFIX}{self.key_id}_{self.secret}"


def hash_secret(secret: str) -> bytes:
    """What the database keeps of a secret."""
    return hashlib.sha256(secret.encode()).digest()


def generate() -> NewKey:
    """A new random key."""
    secret = secrets.token_urlsafe(32)
    return NewKey(secrets.token_hex(6), secret, hash_secret(secret))


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, None otherwise (never raises on hostile input)."""
    m = _KEY.match(token.strip()) if len(token) < 200 else None
    return (m.group(1), m.group(2)) if m else None


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
