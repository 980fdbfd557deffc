"""The AIP-160 filter subset: parsed once, then compiled to SQL or evaluated on a row.

Every query call and every live tail takes the same filter string, so the
grammar lives here once. The parse tree knows which fields it touches, which
tells the planner whether the rollups (which only keep the nine dimensions)
can answer, or the raw rows must.

Grammar (AIP-160: OR binds tighter than AND; juxtaposition means AND):
    expr    := and
    and     := or { ["AND"] or }
    or      := unary { "OR" unary }
    unary   := ["NOT" | "-"] primary
    primary := "(" expr ")" | field op value

Any caller may send any filter, so its size is bounded here, once, at parse
time (the `MAX_*` limits below): what is accepted compiles to SQL that stays
far below PostgreSQL's bind-parameter limit and plans quickly (ORs of
equalities on one field become `= ANY($n)`), and evaluates on a tail's rows
in time linear in the value (`glob_match`, no regular expressions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llmmeter_common.errors import FieldViolation, InvalidArgument

#: Filter fields and the raw column (or expression) each maps to.
FIELDS: dict[str, str] = {
    "model": "model", "model_alias": "model_alias", "provider": "provider", "user": "user_name",
    "team": "team", "account": "account", "call_type": "call_type", "status_code": "status_code",
    "error_type": "error_type", "request_id": "request_id", "streaming": "streaming",
    "cache_hit": "cache_hit", "model_id": "model_id", "response_model": "response_model",
    "api_base": "api_base",
}
#: Fields the rollups keep (as their column names).
ROLLUP_COLUMNS = frozenset(
    ("model", "model_alias", "provider", "user_name", "team", "account", "status_code", "error_type",
     "call_type")
)
_BOOL_FIELDS = frozenset(("streaming", "cache_hit"))
#: Fields whose column is not text: grouped by their text form, like every other group value.
NON_TEXT_FIELDS = _BOOL_FIELDS | {"status_code"}
_OPS = ("<=", ">=", "!=", "=", "<", ">", ":")
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<op><=|>=|!=|=|<|>|:)|(?P<paren>[()])'
    r"|(?P<word>[A-Za-z0-9_.*@/+][A-Za-z0-9_.*@/+\-]*)|(?P<neg>-))"
)
_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)
_TRAILING_SPACE = re.compile(r"\s*\Z")
#: A metadata key (filters' `metadata.<key>`, `group_by`): spliced into SQL, so nothing else.
METADATA_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

#: The limits on a filter (any caller may send one; see README, Querying usage).
MAX_FILTER_LENGTH = 32_768
"""Characters of the whole filter."""
MAX_TERMS = 500
"""Comparisons (`field op value`) in one filter."""
MAX_DEPTH = 32
"""Nesting of parentheses and negations."""
MAX_VALUE_LENGTH = 1_024
"""Characters of one value."""
MAX_WILDCARDS_PER_VALUE = 16
"""`*` in one value."""
MAX_WILDCARDS = 128
"""`*` in all values of one filter together."""
#: PostgreSQL's limit on the bind parameters of one statement (a 16-bit count).
PG_MAX_PARAMS = 32_767


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(f"filter: {message}", [FieldViolation("filter", message)])


def shown(text: str, limit: int = 40) -> str:
    """`text` quoted for an error message, cut to `limit` characters: a caller's value is echoed,
    never a megabyte of it (the message travels in the status trailer)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class Comparison:
    """`field op value`; `column` is the SQL column or expression the field maps to."""

    field: str
    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class BoolOp:
    """AND / OR of two or more terms."""

    op: str
    terms: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """Negation of a term."""

    term: Node


Node = Comparison | BoolOp | Not


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[Token]:
    out, pos = [], 0
    while pos < len(text):
        if _TRAILING_SPACE.match(text, pos):  # not text[pos:].strip(): a copy per token is quadratic
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _bad(f"unexpected character {text[pos:pos + 64].lstrip()[:1]!r} at position {pos}")
        kind = m.lastgroup or ""
        out.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.terms = 0
        self.wildcards = 0

    def nest(self, tok: Token) -> None:
        """One level deeper (a parenthesis or a negation), within MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _bad(f"nested deeper than {MAX_DEPTH} levels (parentheses and negations) at "
                       f"position {tok.pos}; the limit is {MAX_DEPTH}")

    def count(self, field_tok: Token, value: str) -> None:
        """One more comparison and its wildcards, within MAX_TERMS and the wildcard limits."""
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _bad(f"more than {MAX_TERMS} terms (comparisons); the limit is {MAX_TERMS}")
        if len(value) > MAX_VALUE_LENGTH:
            raise _bad(f"the value of {shown(field_tok.text)} at position {field_tok.pos} is "
                       f"longer than {MAX_VALUE_LENGTH} characters, the limit for one value")
        stars = value.count("*")
        if stars > MAX_WILDCARDS_PER_VALUE:
            raise _bad(f"the value of {shown(field_tok.text)} at position {field_tok.pos} has more "
                       f"than {MAX_WILDCARDS_PER_VALUE} wildcards (*), the limit for one value")
        self.wildcards += stars
        if self.wildcards > MAX_WILDCARDS:
            raise _bad(f"more than {MAX_WILDCARDS} wildcards (*) in all; the limit for a filter "
                       f"is {MAX_WILDCARDS}")

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise _bad("unexpected end of filter")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.and_()
        tok = self.peek()
        if tok is not None:
            raise _bad(f"unexpected {tok.text!r} at position {tok.pos}")
        return node

    def and_(self) -> Node:
        terms = [self.or_()]
        while (tok := self.peek()) is not None and tok.text != ")":
            if tok.kind == "word" and tok.text == "AND":
                self.take()
            terms.append(self.or_())
        return terms[0] if len(terms) == 1 else BoolOp("AND", tuple(terms))

    def or_(self) -> Node:
        terms = [self.unary()]
        while (tok := self.peek()) is not None and tok.kind == "word" and tok.text == "OR":
            self.take()
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else BoolOp("OR", tuple(terms))

    def unary(self) -> Node:
        tok = self.peek()
        if tok is not None and (tok.kind == "neg" or (tok.kind == "word" and tok.text == "NOT")):
            self.take()
            self.nest(tok)
            node = Not(self.primary())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.text == "(":
            self.nest(tok)
            node = self.and_()
            close = self.take()
            if close.text != ")":
                raise _bad(f"expected ')' at position {close.pos}")
            self.depth -= 1
            return node
        if tok.kind != "word" or tok.text in ("AND", "OR", "NOT"):
            raise _bad(f"expected a field name at position {tok.pos}, got {shown(tok.text)}")
        op = self.take()
        if op.kind != "op":
            raise _bad(f"expected an operator after {shown(tok.text)} at position {op.pos}")
        value = self.take()
        if value.kind not in ("str", "word"):
            raise _bad(f"expected a value at position {value.pos}")
        self.count(tok, _unquote(value))
        return _comparison(tok, op.text, value)


def _unquote(tok: Token) -> str:
    if tok.kind == "str":
        return re.sub(r"\\(.)", r"\1", tok.text[1:-1])
    return tok.text


def _comparison(field_tok: Token, op: str, value_tok: Token) -> Comparison:
    name, raw = field_tok.text, _unquote(value_tok)
    if name.startswith("metadata."):
        key = name[len("metadata."):]
        if not METADATA_KEY.fullmatch(key):
            raise _bad(f"bad metadata key {shown(key)} at position {field_tok.pos}: 1 to 64 of "
                       "A-Z a-z 0-9 _ . -")
        return Comparison(name, f"metadata->>'{key}'", op, raw)
    column = FIELDS.get(name)
    if column is None:
        raise _bad(f"unknown field {shown(name)} at position {field_tok.pos}; known: "
                   f"{', '.join(FIELDS)}, metadata.<key>")
    if name == "status_code":
        cls = _STATUS_CLASS.match(raw)
        if cls and op in ("=", "!="):
            return Comparison(name, column, "class" if op == "=" else "!class", int(cls.group(1)))
        # ASCII digits only ("²" is a digit to str.isdigit, not to int), and at most 3 of them
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or op == ":":
            raise _bad(f"status_code takes a number up to 999 or a class like \"5xx\", "
                       f"not {shown(raw)}")
        return Comparison(name, column, op, int(raw))
    if name in _BOOL_FIELDS:
        if raw.lower() not in ("true", "false") or op not in ("=", "!="):
            raise _bad(f"{name} takes = true or = false")
        return Comparison(name, column, op, raw.lower() == "true")
    return Comparison(name, column, op, raw)


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
            raise _bad(f"too large for this window: needs {len(params)} query parameters, more "
                       f"than PostgreSQL's {PG_MAX_PARAMS}; use fewer terms")
        return sql

    def matches(self, row: dict[str, Any]) -> bool:
        """Evaluate on a row keyed by column name (for live tails), as the SQL would."""
        return True if self.root is None else _eval(self.root, row)


def parse_filter(text: str) -> Filter:
    """Parse an AIP-160 filter; INVALID_ARGUMENT naming `filter` when it does not parse."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _bad(f"longer than {MAX_FILTER_LENGTH} characters ({len(text)}); the limit is "
                   f"{MAX_FILTER_LENGTH}")
    if "\x00" in text:
        raise _bad(f"NUL character at position {text.index(chr(0))}; not allowed in a filter")
    if not text.strip():
        return Filter(None, "")
    return Filter(_Parser(text).parse(), text)


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
