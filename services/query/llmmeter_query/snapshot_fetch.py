"""Runs several read statements of one call at once, on extra connections sharing its snapshot.

A long-window series reads half a million histogram pairs; PostgreSQL turns
them into bytes on one backend, one core, while the other core waits. Cut
into parts (see `window.split`), the statements run on two backends at once.
Every extra connection imports the calling transaction's exported snapshot
(`pg_export_snapshot`, `SET TRANSACTION SNAPSHOT`), so all parts see exactly
the rows the call's other statements saw: a row the rollup worker moves in
between is still counted once.

An extra connection is only taken when the pool can hand one over without
waiting: calls that each hold one connection and wait for a second could
otherwise starve each other. Without one, the parts run one after the other
on the calling connection, with the same result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

Statement = tuple[str, Sequence[Any]]
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def _spare(pool: asyncpg.Pool) -> bool:
    """Whether `acquire` can return at once: an idle connection, or room to open one."""
    return pool.get_idle_size() > 0 or pool.get_size() < pool.get_max_size()


async def fetch_all(pool: asyncpg.Pool, conn: Connection, statements: Sequence[Statement],
                    lanes: int = 2) -> list[list[asyncpg.Record]]:
    """The rows of every statement, in order; `conn` must be in a REPEATABLE READ transaction.

    Up to `lanes - 1` more connections of `pool` take statements off a shared list, in the same
    snapshot; the calling connection runs whatever they do not take.
    """
    if lanes < 2 or len(statements) < 2 or not _spare(pool):
        return [list(await conn.fetch(sql, *params)) for sql, params in statements]
    snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
    results: list[list[asyncpg.Record]] = [[] for _ in statements]
    todo = list(range(len(statements)))

    async def work(c: Connection) -> None:
        while todo:
            i = todo.pop(0)
            sql, params = statements[i]
            results[i] = list(await c.fetch(sql, *params))

    async def borrowed() -> None:
        if not todo or not _spare(pool):
            return
        async with pool.acquire() as c, c.transaction(isolation="repeatable_read", readonly=True):
            await c.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            await work(c)

    helpers = [asyncio.ensure_future(borrowed()) for _ in range(min(lanes, len(statements)) - 1)]
    try:
        await work(conn)
    finally:
        outcomes = await asyncio.gather(*helpers, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return results
