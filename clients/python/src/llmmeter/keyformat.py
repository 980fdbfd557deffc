"""The llmmeter API key format, shared by the CLI (`llmmeter keys generate`) and the services.

A key is `llmm_<key id>_<secret>`: the id (12 hex digits) is public and names the
key in listings and logs; the secret (256 random bits, URL-safe base64) is shown
once and stored by the services only as its SHA-256. A fast hash is enough for a
secret of that much entropy; what matters is that the table alone lets nobody in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

PREFIX = "llmm_"
_KEY = re.compile(r"^llmm_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")


def hash_secret(secret: str) -> bytes:
    """What a service stores of a key's secret."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: the whole key (to show once) and what is stored of it."""

    key_id: str
    secret: str

    @property
    def token(self) -> str:
        """The whole key, as sent in `authorization: Bearer <token>`."""
        return f"{PREFIX}{self.key_id}_{self.secret}"

    @property
    def secret_hash(self) -> bytes:
        """What the services store."""
        return hash_secret(self.secret)


def generate() -> NewKey:
    """A new random key."""
    return NewKey(secrets.token_hex(6), secrets.token_urlsafe(32))


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, None otherwise (never raises on hostile input)."""
    m = _KEY.match(token.strip()) if len(token) < 200 else None
    return (m.group(1), m.group(2)) if m else None
