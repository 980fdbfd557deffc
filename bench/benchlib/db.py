"""Short-lived PostgreSQL connections of the benchmarks' own set-up, checks and baselines.

Each benchmark step opens its own connection and must close it whatever happens, so the
connect/close pairing and the one-statement calls live here once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any


@contextlib.asynccontextmanager
async def connection(dsn: str, **kwargs: Any) -> AsyncIterator[Any]:
    """An asyncpg connection closed on exit, also when the step fails."""
    import asyncpg

    conn = await asyncpg.connect(dsn, **kwargs)
    try:
        yield conn
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str) -> Any:
    """One value on a connection of its own (e.g. `SHOW server_version` for the report)."""
    async with connection(dsn) as conn:
        return await conn.fetchval(sql)


async def execute(dsn: str, sql: str) -> None:
    """One statement on a connection of its own (CREATE DATABASE, CHECKPOINT, TRUNCATE)."""
    async with connection(dsn) as conn:
        await conn.execute(sql)


def with_db(dsn: str, name: str) -> str:
    """The same server's URL for another database."""
    return dsn.rpartition("/")[0] + "/" + name


async def create_migrated_db(server_dsn: str, name: str, flavor: str = "postgres") -> str:
    """A new database with the production schema (every migration of `flavor`), so each
    measurement starts from the tables the services use; returns its URL."""
    from llmmeter_common.migrate import migrate

    await execute(server_dsn, f"CREATE DATABASE {name}")
    dsn = with_db(server_dsn, name)
    await migrate(dsn, flavor)
    return dsn
