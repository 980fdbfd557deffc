"""`llmmeter db migrate` against a real, empty database."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from llmmeter.cli.main import main
from llmmeter_common.migrate import Flavor, load_migrations


async def test_db_migrate_applies_once(empty_db_url: str, storage_flavor: Flavor, capsys) -> None:
    url = empty_db_url
    command = ["db", "migrate", "--database-url", url, "--flavor", storage_flavor]
    assert await asyncio.to_thread(main, command) == 0
    every = [m.version for m in load_migrations(storage_flavor)]  # TimescaleDB has some of its own
    assert json.loads(capsys.readouterr().out) == {"applied": every}
    assert await asyncio.to_thread(main, command) == 0
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
