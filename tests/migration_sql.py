"""The migration files' SQL as the schema tests read it: parsed with pglast, the PostgreSQL parser.

Shared by test_schema_flavor_parity.py, test_schema_timescale_rollups.py and
test_schema_migrations.py: the text and parse trees of a migration file, the
relations migration 0002 creates, the columns a CREATE TABLE declares (types
spelt as information_schema.columns.udt_name spells them) and the columns a
live table has, so that declared and live columns compare directly.
"""

from __future__ import annotations

from importlib import resources

import asyncpg
from pglast import ast, parse_sql
from pglast.stream import RawStream

from llmmeter_common.rollups import HISTOGRAMS, rollup_columns

RELATIONS = ("usage_records", "usage_payloads", "usage_rollup_pending", "usage_1m", "usage_1h", "usage_1d")
RAW = ("usage_records", "usage_payloads")
QUEUE = "usage_rollup_pending"  # plain table in both flavours (empty on TimescaleDB)


def _text(flavor: str, name: str = "0002_tables") -> str:
    return resources.files("llmmeter_common.migrations").joinpath(f"{name}.{flavor}.sql").read_text()


#: Migration 0006: histograms as one pairs array per prefix instead of keys and counts.
PAIRS = "0006_hist_pairs_columns"
#: Migration 0007: packed copies of the histograms.
PACKS = "0007_hist_packs"


def _array_columns() -> list[str]:
    """The rollup columns as migration 0002 declared them (keys and counts arrays per histogram)."""
    arrays = [f"{p}_{part}" for p, _ in HISTOGRAMS for part in ("keys", "counts")]
    return [*rollup_columns()[: -len(HISTOGRAMS)], *arrays]


def _parse(flavor: str) -> list[ast.RawStmt]:
    return list(parse_sql(_text(flavor)))


def _stmts(flavor: str) -> list[ast.Node]:
    return [raw.stmt for raw in _parse(flavor)]


def _sql(node: ast.Node) -> str:
    return RawStream()(node)


def _type(tn: ast.TypeName) -> str:
    """A type as information_schema.columns.udt_name spells it: int8, _int4, timestamptz."""
    name = tn.names[-1].sval
    return f"_{name}" if tn.arrayBounds else name


def _tables(flavor: str) -> dict[str, ast.CreateStmt]:
    return {s.relation.relname: s for s in _stmts(flavor) if isinstance(s, ast.CreateStmt)}


def _column_defs(flavor: str, table: str) -> list[ast.ColumnDef]:
    """The column definitions of a CREATE TABLE, following `LIKE other` within the same file."""
    out: list[ast.ColumnDef] = []
    for elt in _tables(flavor)[table].tableElts:
        if isinstance(elt, ast.ColumnDef):
            out.append(elt)
        elif isinstance(elt, ast.TableLikeClause):
            out += _column_defs(flavor, elt.relation.relname)
    return out


def _declared(flavor: str, table: str) -> list[tuple[str, str]]:
    """(column, udt_name) of a table in declaration order."""
    return [(c.colname, _type(c.typeName)) for c in _column_defs(flavor, table)]


def _output_names(select: ast.SelectStmt) -> list[str]:
    return [t.name or t.val.fields[-1].sval for t in select.targetList]


def _calls(stmts: list[ast.Node], func: str) -> list[tuple[str, dict[str, str]]]:
    """Top-level `SELECT func('relation', name => value...)`: (relation, {arg name: SQL})."""
    out = []
    for s in stmts:
        if not isinstance(s, ast.SelectStmt) or s.fromClause or len(s.targetList) != 1:
            continue
        call = s.targetList[0].val
        if isinstance(call, ast.FuncCall) and call.funcname[-1].sval == func:
            first, *rest = call.args
            named = {a.name: _sql(a.arg) for a in rest if isinstance(a, ast.NamedArgExpr)}
            out.append((first.val.sval, named))
    return out


async def _columns(conn: asyncpg.Connection, table: str, schema: str = "public") -> list[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT column_name, udt_name FROM information_schema.columns
           WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position""",
        schema, table,
    )
    return [(r[0], r[1]) for r in rows]
