"""The test session's API keys: one admin key stored in the template database (so every test's
database has it), channels that send it, and keys of other roles made per test.

Set as `LLMMETER_API_KEY` for the whole session, so the CLI, run in process or as a
subprocess, authenticates like a user's shell with the key exported.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc

from llmmeter.channels import open_channel
from llmmeter_common.auth import keys
from llmmeter_common.auth.keys import Role
from llmmeter_common.auth.keystore import KeyStore

ADMIN = keys.generate()
"""The session's admin key (`ADMIN.token` is what a client sends)."""


async def store_admin_key(db_url: str) -> None:
    """Store the session's admin key in a database (the template, before it is cloned)."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO llmmeter_api_keys (key_id, name, role, secret_hash) "
            "VALUES ($1, 'tests', 'admin', $2)",
            ADMIN.key_id, ADMIN.secret_hash)
    finally:
        await conn.close()


def keyed_channel(address: str, key: str | None = None, **kwargs: Any) -> grpc.aio.Channel:
    """A plaintext channel to a test server sending `key` (default: the session's admin key)."""
    return open_channel(address, key or ADMIN.token, **kwargs)


async def make_key(db_url: str, role: Role, team: str | None = None, name: str = "test") -> str:
    """A new key of `role` (bound to `team`) in a test's database; returns the whole key."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        return (await KeyStore(pool).create(name, role, team))[1]
    finally:
        await pool.close()
