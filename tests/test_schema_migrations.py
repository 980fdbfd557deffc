"""Migrations 0006, 0007 and 0014 in both flavours, and the PostgreSQL flavour's tables once migrated.

0006 stored each histogram as one pairs array, 0007 added packed copies of
the histograms, and 0014 drops the packs and stores the histograms in
0013's one format (bytea): their PostgreSQL files alter the rollup tables,
their TimescaleDB files redefine the rollup views. The migrated database of
each test (conftest.py) must then have the columns 0002 declares as those
migrations changed them, `llmmeter_common.rollups.rollup_columns()`, and the
histograms stored uncompressed in every partition.
"""

from __future__ import annotations

import asyncpg
import pytest
from pglast import ast, parse_sql

from llmmeter_common.rollups import HISTOGRAMS, ROLLUPS, rollup_columns

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

#: The packed copies 0007 added and 0014 dropped.
PACK_COLUMNS = [f"{p}_pack" for p, _ in HISTOGRAMS]
#: Migration 0014: the rollup sets per level, the one histogram format, no packs.
SETS = "0014_rollup_sets"

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


def test_packs_migration_adds_the_pack_columns_and_0014_drops_them() -> None:
    """0007 added the packs after rollup_columns(): PostgreSQL to the tables, TimescaleDB's views
    as NULL, keeping 0006's columns and source; 0014 drops them again from the tables."""
    added, dropped = _altered_columns(PACKS)
    assert not dropped
    assert not _altered_columns(SETS)[0]
    assert all(_altered_columns(SETS)[1][r.table] == set(PACK_COLUMNS) for r in ROLLUPS)
    views = {raw.stmt.view.relname: raw.stmt for raw in parse_sql(_text("timescale", PACKS))
             if isinstance(raw.stmt, ast.ViewStmt)}
    before = {raw.stmt.view.relname: raw.stmt.query for raw in parse_sql(_text("timescale", PAIRS))
              if isinstance(raw.stmt, ast.ViewStmt)}
    for r in ROLLUPS:
        assert added[r.table] == PACK_COLUMNS, r.table
        view = views[r.table]
        assert view.replace and _output_names(view.query) == rollup_columns() + PACK_COLUMNS, r.table
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
            else:  # as declared, with 0014's histograms in place of 0002's keys and counts
                declared = dict(_declared("postgres", table))
                declared.update((f"{p}_hist", "bytea") for p, _ in HISTOGRAMS)
                assert [(n, declared[n]) for n in rollup_columns()] == live, table


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
               WHERE a.attname = ANY($1) AND c.relname ~ '^usage_1[mhd]'
                 AND c.relkind IN ('r', 'p')""",  # tables and partitions, not the sets' views (0016)
            [f"{p}_hist" for p, _ in HISTOGRAMS])
    tables = {r["relname"] for r in rows}
    assert len(tables) >= 3 * len(ROLLUPS)  # the parents and two or more partitions of each
    assert len(rows) == len(tables) * len(HISTOGRAMS)
    assert {r["attstorage"] for r in rows} == {b"e"}  # "char" comes back as bytes
