"""API keys in the database: create, list, revoke, and look up on every call behind a short cache.

Every service checks keys against the shared `llmmeter_api_keys` table. A lookup
is cached for `cache_seconds` (found or not), so a busy service makes at most one
query per key per period, and a revocation reaches every replica within that
period without any messaging between them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from llmmeter_common.auth import keys
from llmmeter_common.auth.keys import Principal, Role
from llmmeter_common.errors import FieldViolation, InvalidArgument, NotFound

_MAX_CACHED = 10_000
_COLUMNS = "key_id, name, role, team, created_at, revoked_at"


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: everything but its secret."""

    key_id: str
    name: str
    role: Role
    team: str | None
    created_at: datetime
    revoked_at: datetime | None


def _info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(row["key_id"], row["name"], Role(row["role"]), row["team"], row["created_at"],
                   row["revoked_at"])


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", [FieldViolation(field, message)])


def check_new_key(name: str, role: Role | None, team: str | None) -> None:
    """INVALID_ARGUMENT naming the field when a key could not be created as asked."""
    if not 1 <= len(name.strip()) <= 100 or "\x00" in name:
        raise _bad("name", "1 to 100 characters, no NUL")
    if role is None:
        raise _bad("role", "one of ingest, read, admin")
    if team is not None and (not 1 <= len(team) <= 200 or "\x00" in team):
        raise _bad("team", "1 to 200 characters, no NUL")
    if team is not None and role is Role.ADMIN:
        raise _bad("team", "admin keys cannot be bound to a team")


class KeyStore:
    """The keys table behind a per-process cache of lookups."""

    def __init__(self, pool: asyncpg.Pool, cache_seconds: float = 5.0) -> None:
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, asyncpg.Record | None]] = {}

    async def authenticate(self, token: str) -> Principal | None:
        """The principal a presented key stands for; None for a malformed, unknown or revoked key."""
        parsed = keys.parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = await self._lookup(key_id)
        if row is None or row["revoked_at"] is not None:
            return None
        if not keys.secret_matches(secret, row["secret_hash"]):
            return None
        return Principal(key_id, Role(row["role"]), row["team"])

    async def _lookup(self, key_id: str) -> asyncpg.Record | None:
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await self._pool.fetchrow(
            "SELECT role, team, secret_hash, revoked_at FROM llmmeter_api_keys WHERE key_id = $1", key_id)
        if len(self._cache) >= _MAX_CACHED:  # unknown ids must not grow memory without bound
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
        self._cache[key_id] = (now + self._cache_seconds, row)
        return row

    async def create(self, name: str, role: Role, team: str | None) -> tuple[KeyInfo, str]:
        """A new key: what is listed of it, and the whole key (shown once)."""
        check_new_key(name, role, team)
        new = keys.generate()
        row = await self._pool.fetchrow(
            f"""INSERT INTO llmmeter_api_keys (key_id, name, role, team, secret_hash)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
            new.key_id, name.strip(), role.value, team, new.secret_hash)
        assert row is not None  # INSERT ... RETURNING of one row
        return _info(row), new.token

    async def ensure(self, token: str, name: str, role: Role = Role.ADMIN) -> bool:
        """Store a key generated elsewhere (an operator's bootstrap key from a Secret) unless stored;
        True when it was added. A revoked key stays revoked."""
        parsed = keys.parse(token)
        if parsed is None:
            raise ValueError("not an llmmeter key (expected llmm_<12 hex>_<43 characters>)")
        key_id, secret = parsed
        status: str = await self._pool.execute(
            """INSERT INTO llmmeter_api_keys (key_id, name, role, secret_hash) VALUES ($1, $2, $3, $4)
               ON CONFLICT (key_id) DO NOTHING""", key_id, name, role.value, keys.hash_secret(secret))
        return status.endswith(" 1")

    async def list(self, page_size: int, after: tuple[datetime, str] | None,
                   show_revoked: bool) -> list[KeyInfo]:
        """Newest first, from after the (created_at, key_id) of the previous page's last key."""
        rows = await self._pool.fetch(
            f"""SELECT {_COLUMNS} FROM llmmeter_api_keys
                WHERE ($1 OR revoked_at IS NULL)
                  AND ($2::timestamptz IS NULL OR (created_at, key_id) < ($2, $3))
                ORDER BY created_at DESC, key_id DESC LIMIT $4""",
            show_revoked, after[0] if after else None, after[1] if after else "", page_size)
        return [_info(r) for r in rows]

    async def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (a revoked key keeps its first revocation time); NOT_FOUND when absent."""
        row = await self._pool.fetchrow(
            f"""UPDATE llmmeter_api_keys SET revoked_at = coalesce(revoked_at, now())
                WHERE key_id = $1 RETURNING {_COLUMNS}""", key_id)
        if row is None:
            raise NotFound(f"no key {key_id!r}")
        self._cache.pop(key_id, None)
        return _info(row)
