"""The AIP-160 filter subset: parsed once, then compiled to SQL or evaluated on a row.

Every query call and every live tail takes the same filter string, so what a
filter means lives here once (its grammar, fields and limits in
`filter_syntax`). The parse tree knows which fields it touches, which tells
the planner whether the rollups (which only keep the nine dimensions) can
answer, or the raw rows must. What the limits let through compiles to SQL
that stays far below PostgreSQL's bind-parameter limit and plans quickly (ORs
of equalities on one field become `= ANY($n)`), and evaluates on a tail's
rows in time linear in the value (`glob_match`, no regular expressions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmmeter_query.filter_syntax import (
    MAX_FILTER_LENGTH,
    PG_MAX_PARAMS,
    ROLLUP_COLUMNS,
    BoolOp,
    Comparison,
    Node,
    Not,
    Parser,
    bad,
)


@dataclass(frozen=True)
class Filter:
    """A parsed filter (or none): compiles to SQL, evaluates on rows, lists its columns."""

    root: Node | None
    text: str = ""

    def columns(self) -> set[str]:
        """The columns the filter reads."""
        out: set[str] = set()

        def walk(n: Node) -> None:
            if isinstance(n, Comparison):
                out.add(n.column)
            elif isinstance(n, Not):
                walk(n.term)
            else:
                for t in n.terms:
                    walk(t)

        if self.root is not None:
            walk(self.root)
        return out

    def rollup_compatible(self) -> bool:
        """Whether the rollups keep every column the filter reads."""
        return self.columns() <= ROLLUP_COLUMNS

    def sql(self, params: list[Any]) -> str:
        """A SQL boolean expression; values are appended to `params` as $n placeholders.

        A statement repeats the filter once per stretch of its window (a dozen at most); the
        term limit keeps that far below PostgreSQL's limit, checked here all the same so that
        no statement can fail with a driver error (UNAVAILABLE) instead of a caller's error.
        """
        sql = "TRUE" if self.root is None else _sql(self.root, params)
        if len(params) > PG_MAX_PARAMS:
            raise bad(f"too large for this window: needs {len(params)} query parameters, more "
                       f"than PostgreSQL's {PG_MAX_PARAMS}; use fewer terms")
        return sql

    def matches(self, row: dict[str, Any]) -> bool:
        """Evaluate on a row keyed by column name (for live tails), as the SQL would."""
        return True if self.root is None else _eval(self.root, row)


def parse_filter(text: str) -> Filter:
    """Parse an AIP-160 filter; INVALID_ARGUMENT naming `filter` when it does not parse."""
    if len(text) > MAX_FILTER_LENGTH:
        raise bad(f"longer than {MAX_FILTER_LENGTH} characters ({len(text)}); the limit is "
                   f"{MAX_FILTER_LENGTH}")
    if "\x00" in text:
        raise bad(f"NUL character at position {text.index(chr(0))}; not allowed in a filter")
    if not text.strip():
        return Filter(None, "")
    return Filter(Parser(text).parse(), text)


def scope_to_team(f: Filter, team: str | None) -> Filter:
    """`f` limited to one team's rows (a team-bound key's calls): an exact match that no wildcard
    or value in the team's name can widen, ANDed with whatever the caller asked for."""
    if team is None:
        return f
    pin = Comparison("team", "team", "exact", team)
    return Filter(pin if f.root is None else BoolOp("AND", (pin, f.root)), f.text)


def _param(params: list[Any], value: Any) -> str:
    params.append(value)
    return f"${len(params)}"


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")


#: A comparison as SQL: (left-hand expression, operator, the value bound to the right).
_Leaf = tuple[str, str, Any]


def _leaf(n: Comparison) -> _Leaf | None:
    """The comparison as `lhs op $value`; None for the forms that are not (team pins, classes)."""
    col, op, v = n.column, n.op, n.value
    if op in ("exact", "class", "!class"):
        return None
    if n.field.startswith("metadata."):
        if op == ":" and v == "*":
            return ("metadata", "?", n.field[len("metadata."):])
        col = f"coalesce({col}, '')"
    if op == ":":  # ILIKE, as PostgreSQL runs it in a multibyte database (both sides lowered), but
        # the row's text lowered once, not once per pattern: an OR of 500 contains terms on 20,000
        # rows took 5.4 s as ILIKE ANY, 0.25 s so
        return (f"lower({col})", "LIKE", "%" + _like(str(v).lower()) + "%")
    if isinstance(v, str) and "*" in v and op in ("=", "!="):
        return (col, "LIKE" if op == "=" else "NOT LIKE", _like(v))
    return (col, "<>" if op == "!=" else op, v)


def _sql_leaf(n: Comparison, params: list[Any]) -> str:
    leaf = _leaf(n)
    if leaf is not None:
        col, op, v = leaf
        return f"{col} {op} {_param(params, v)}"
    col, v = n.column, n.value
    if n.op == "exact":
        return f"{col} = {_param(params, v)}"
    expr = f"({col} >= {v * 100} AND {col} < {v * 100 + 100})"
    return expr if n.op == "class" else f"NOT {expr}"


def _sql_bool(n: BoolOp, params: list[Any]) -> str:
    """AND / OR; the terms that compare one expression the same way share one array parameter:
    `model = ANY($1)` for `model = "a" OR model = "b" ...`, `model NOT LIKE ALL($2)` for an AND
    of `!=` wildcards (`x op ANY(a)` is the OR of `x op a[i]`, with the same NULL logic, and
    ALL the AND), metadata presence as `?|` / `?&`. One bind parameter instead of hundreds, and
    a plan PostgreSQL makes in microseconds rather than seconds."""
    items: list[str | tuple[str, str]] = []
    grouped: dict[tuple[str, str], list[Any]] = {}
    for t in n.terms:
        leaf = _leaf(t) if isinstance(t, Comparison) else None
        if leaf is None:
            items.append(_sql(t, params))
            continue
        key = (leaf[0], leaf[1])
        if key not in grouped:
            grouped[key] = []
            items.append(key)
        grouped[key].append(leaf[2])
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        (col, op), values = item, grouped[item]
        if len(values) == 1:
            out.append(f"{col} {op} {_param(params, values[0])}")
        elif op == "?":
            out.append(f"{col} {'?|' if n.op == 'OR' else '?&'} {_param(params, values)}")
        else:
            out.append(f"{col} {op} {'ANY' if n.op == 'OR' else 'ALL'}({_param(params, values)})")
    return out[0] if len(out) == 1 else "(" + f" {n.op} ".join(out) + ")"


def _sql(n: Node, params: list[Any]) -> str:
    if isinstance(n, Not):
        return f"NOT ({_sql(n.term, params)})"
    if isinstance(n, BoolOp):
        return _sql_bool(n, params)
    return _sql_leaf(n, params)


def glob_match(pattern: str, text: str) -> bool:
    """Whether `text` matches `pattern`, where `*` stands for any run of characters (none too) and
    every other character for itself: SQL `LIKE` of the pattern as `_like` writes it.

    Greedy, without regular expressions or backtracking: the part before the first `*` must
    start the text, the part after the last must end it, and each part between is taken at its
    leftmost place after the previous one (taking it further right can only leave less room for
    the rest). Every character of the text is scanned a bounded number of times, whatever the
    number of stars: no pattern can make a tail spin.
    """
    parts = pattern.split("*")
    if len(parts) == 1:
        return text == pattern
    first, last = parts[0], parts[-1]
    if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
        return False
    pos, end = len(first), len(text) - len(last)
    for part in parts[1:-1]:
        if not part:
            continue
        found = text.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


def _value_of(n: Comparison, row: dict[str, Any]) -> Any:
    if n.field.startswith("metadata."):
        meta = row.get("metadata") or {}
        return meta.get(n.field[len("metadata."):])
    return row.get(n.column)


def _eval(n: Node, row: dict[str, Any]) -> bool:
    if isinstance(n, Not):
        return not _eval(n.term, row)
    if isinstance(n, BoolOp):
        results = (_eval(t, row) for t in n.terms)
        return all(results) if n.op == "AND" else any(results)
    value, op, v = _value_of(n, row), n.op, n.value
    if op == "exact":
        return bool(value == v)
    if op in ("class", "!class"):
        inside = v * 100 <= int(value) < v * 100 + 100
        return inside if op == "class" else not inside
    if n.field.startswith("metadata."):
        if op == ":" and v == "*":
            return value is not None
        value = value or ""
    if op == ":":  # ILIKE '%v%', where a `*` in v is a wildcard too
        return glob_match("*" + str(v).lower() + "*", str(value).lower())
    if isinstance(v, str) and "*" in v and op in ("=", "!="):
        found = glob_match(v, str(value))
        return found if op == "=" else not found
    return bool({
        "=": value == v, "!=": value != v, "<": value < v, "<=": value <= v, ">": value > v,
        ">=": value >= v,
    }[op])
