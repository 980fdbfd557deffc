"""Versioned schema migrations, safe to run twice and from several processes at once.

Every service applies them at start (and `llmmeter db migrate` does it by
hand), so several replicas starting together must not race: a session-level
advisory lock serialises them and each migration runs in its own transaction
with its version recorded in the same transaction. A migration file is either
`NNNN_name.sql` (both flavours) or `NNNN_name.<flavour>.sql`, where the flavour
is `timescale` when the TimescaleDB extension is available and `postgres`
otherwise; the flavour chosen first is recorded and kept.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import asyncpg

log = logging.getLogger(__name__)

Flavor = Literal["postgres", "timescale"]
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(postgres|timescale))?\.sql$")
_LOCK_KEY = 0x6C6C6D6D  # "llmm": one advisory lock for all llmmeter migrations


@dataclass(frozen=True)
class Migration:
    """One schema step for one flavour."""

    version: int
    name: str
    sql: str


def load_migrations(flavor: Flavor) -> list[Migration]:
    """The migrations of one flavour, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("llmmeter_common.migrations").iterdir():
        m = _FILE.match(entry.name)
        if not m or (m.group(3) not in (None, flavor)):
            continue
        version = int(m.group(1))
        if version in found:
            raise RuntimeError(f"two migrations with version {version}")
        found[version] = Migration(version, m.group(2), entry.read_text())
    return [found[v] for v in sorted(found)]


async def detect_flavor(conn: asyncpg.Connection, requested: str = "auto") -> Flavor:
    """The flavour already recorded, else TimescaleDB when available (unless told otherwise)."""
    recorded = await conn.fetchval(
        "SELECT flavor FROM llmmeter_schema_migrations ORDER BY version LIMIT 1"
    )
    if recorded:
        return "timescale" if recorded == "timescale" else "postgres"
    if requested in ("postgres", "timescale"):
        return "timescale" if requested == "timescale" else "postgres"
    available = await conn.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    return "timescale" if available else "postgres"


async def migrate(dsn: str, flavor: str = "auto") -> list[int]:
    """Apply every pending migration; returns the versions applied by this call."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS llmmeter_schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       flavor text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            chosen = await detect_flavor(conn, flavor)
            if chosen == "timescale":
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            done = {r[0] for r in await conn.fetch("SELECT version FROM llmmeter_schema_migrations")}
            applied = []
            for mig in load_migrations(chosen):
                if mig.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO llmmeter_schema_migrations (version, name, flavor) VALUES ($1, $2, $3)",
                        mig.version, mig.name, chosen,
                    )
                log.info("applied migration %04d_%s (%s)", mig.version, mig.name, chosen)
                applied.append(mig.version)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
