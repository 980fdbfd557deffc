"""`llmmeter db migrate` against a real, empty database."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from llmmeter.cli.main import main
from llmmeter_common.migrate import load_migrations

from conftest import create_database

ALL_VERSIONS = [m.version for m in load_migrations("postgres")]


async def test_db_migrate_applies_once(pg_server_url: str, capsys) -> None:
    url = await create_database(pg_server_url, template=None)
    assert await asyncio.to_thread(main, ["db", "migrate", "--database-url", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"applied": ALL_VERSIONS}
    assert await asyncio.to_thread(main, ["db", "migrate", "--database-url", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"applied": []}
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('usage_1d') IS NOT NULL")
    finally:
        await conn.close()


async def test_db_migrate_without_a_database_is_one_line_error(monkeypatch, capsys) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert await asyncio.to_thread(main, ["db", "migrate"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DATABASE_URL" in err
