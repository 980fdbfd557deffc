"""Migrations 0006 and 0007 in both flavours, and the PostgreSQL flavour's tables once migrated.

0006 stores each histogram as one pairs array and 0007 adds packed copies of
the histograms: their PostgreSQL files alter the rollup tables, their
TimescaleDB files redefine the rollup views, and both must end with the
columns `llmmeter_common.rollups` reads and writes. The migrated database of
each test (conftest.py) must then have the columns 0002 declares as 0006 and
0007 changed them, and the histograms stored uncompressed in every partition.
"""

from __future__ import annotations

import asyncpg
import pytest
from pglast import ast, parse_sql

from llmmeter_common.rollups import HISTOGRAMS, PACK_COLUMNS, ROLLUPS, rollup_columns, table_columns

from migration_sql import (
    PACKS,
    PAIRS,
    QUEUE,
    RAW,
    RELATIONS,
    _array_columns,
    _columns,
    _declared,
    _output_names,
    _text,
)

# --- 0006 and 0007: both flavours ------------------------------------------------


def _altered_columns(migration: str) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """Columns the PostgreSQL file of a migration adds (in order) and drops, per table."""
    added: dict[str, list[str]] = {}
    dropped: dict[str, set[str]] = {}
    for raw in parse_sql(_text("postgres", migration)):
        if isinstance(raw.stmt, ast.AlterTableStmt):
            for cmd in raw.stmt.cmds:
                if cmd.subtype.name == "AT_AddColumn":
                    added.setdefault(raw.stmt.relation.relname, []).append(cmd.def_.colname)
                elif cmd.subtype.name == "AT_DropColumn":
                    dropped.setdefault(raw.stmt.relation.relname, set()).add(cmd.name)
    return added, dropped


def test_pairs_migration_swaps_the_histogram_columns_in_both_flavors() -> None:
    """0006 leaves every rollup with rollup_columns(): PostgreSQL by altering the tables, TimescaleDB
    by a view over the renamed union view of 0002 converting its arrays."""
    arrays = {f"{p}_{part}" for p, _ in HISTOGRAMS for part in ("keys", "counts")}
    added, dropped = _altered_columns(PAIRS)
    for r in ROLLUPS:
        kept = [c for c in _array_columns() if c not in dropped[r.table]]
        assert dropped[r.table] == arrays and kept + added[r.table] == rollup_columns(), r.table
    views = {raw.stmt.view.relname: raw.stmt for raw in parse_sql(_text("timescale", PAIRS))
             if isinstance(raw.stmt, ast.ViewStmt)}
    for r in ROLLUPS:
        view = views[r.table].query
        assert [f.relname for f in view.fromClause] == [f"{r.table}_arrays"], r.table
        assert _output_names(view) == rollup_columns(), r.table


def test_packs_migration_adds_the_pack_columns_in_both_flavors() -> None:
    """0007 leaves every rollup with table_columns(): PostgreSQL adds the packs to the tables,
    TimescaleDB's views gain them as NULL, keeping 0006's columns and source."""
    added, dropped = _altered_columns(PACKS)
    assert not dropped
    views = {raw.stmt.view.relname: raw.stmt for raw in parse_sql(_text("timescale", PACKS))
             if isinstance(raw.stmt, ast.ViewStmt)}
    before = {raw.stmt.view.relname: raw.stmt.query for raw in parse_sql(_text("timescale", PAIRS))
              if isinstance(raw.stmt, ast.ViewStmt)}
    for r in ROLLUPS:
        assert rollup_columns() + added[r.table] == table_columns(), r.table
        view = views[r.table]
        assert view.replace and _output_names(view.query) == table_columns(), r.table
        assert view.query.targetList[: len(rollup_columns())] == before[r.table].targetList, r.table
        assert view.query.fromClause == before[r.table].fromClause, r.table


# --- live PostgreSQL: the migrated tables ----------------------------------------


async def test_postgres_flavor_live_tables_have_the_declared_columns(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        for table in RELATIONS:
            live = await _columns(conn, table)
            if table in RAW:
                assert _declared("postgres", table) == _declared("timescale", table), table
                # 0010 (both flavours) adds the cost source to the raw rows
                added = [("cost_source", "int2")] if table == "usage_records" else []
                assert live == _declared("postgres", table) + added, table
            elif table == QUEUE:  # as declared, plus 0012's queued_at
                assert _declared("postgres", table) == _declared("timescale", table)
                assert live == [*_declared("postgres", table), ("queued_at", "timestamptz")]
            else:  # as declared, with 0006's pairs arrays in place of keys and counts, 0007's packs
                declared = dict(_declared("postgres", table))
                declared.update((f"{p}_hist", "_int8") for p, _ in HISTOGRAMS)
                declared.update((c, "bytea") for c in PACK_COLUMNS)
                assert [(n, declared[n]) for n in table_columns()] == live, table


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_postgres_histograms_are_stored_uncompressed_in_every_partition(db_pool: asyncpg.Pool) -> None:
    """Reads of long windows detoast every histogram: EXTERNAL skips decompression, on partitions
    that existed at migration time and on those created later."""
    async with db_pool.acquire() as conn:
        # 70 days span at least two monthly partitions, whatever today's date
        await conn.execute("SELECT llmmeter_ensure_partitions(now() + interval '400 days', "
                           "now() + interval '470 days')")
        rows = await conn.fetch(
            """SELECT c.relname, a.attstorage FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
               WHERE a.attname = ANY($1) AND c.relname ~ '^usage_1[mhd]'""",
            [*(f"{p}_hist" for p, _ in HISTOGRAMS), *PACK_COLUMNS])
    tables = {r["relname"] for r in rows}
    assert len(tables) >= 3 * len(ROLLUPS)  # the parents and two or more partitions of each
    assert len(rows) == len(tables) * (len(HISTOGRAMS) + len(PACK_COLUMNS))
    assert {r["attstorage"] for r in rows} == {b"e"}  # "char" comes back as bytes
