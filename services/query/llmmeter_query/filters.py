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


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(f"filter: {message}", [FieldViolation("filter", message)])


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
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _bad(f"unexpected character {text[pos:].lstrip()[:1]!r} at position {pos}")
        kind = m.lastgroup or ""
        out.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

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
            return Not(self.primary())
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.text == "(":
            node = self.and_()
            close = self.take()
            if close.text != ")":
                raise _bad(f"expected ')' at position {close.pos}")
            return node
        if tok.kind != "word" or tok.text in ("AND", "OR", "NOT"):
            raise _bad(f"expected a field name at position {tok.pos}, got {tok.text!r}")
        op = self.take()
        if op.kind != "op":
            raise _bad(f"expected an operator after {tok.text!r} at position {op.pos}")
        value = self.take()
        if value.kind not in ("str", "word"):
            raise _bad(f"expected a value at position {value.pos}")
        return _comparison(tok, op.text, value)


def _unquote(tok: Token) -> str:
    if tok.kind == "str":
        return re.sub(r"\\(.)", r"\1", tok.text[1:-1])
    return tok.text


def _comparison(field_tok: Token, op: str, value_tok: Token) -> Comparison:
    name, raw = field_tok.text, _unquote(value_tok)
    if name.startswith("metadata."):
        key = name[len("metadata."):]
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", key):
            raise _bad(f"bad metadata key {key!r} at position {field_tok.pos}")
        return Comparison(name, f"metadata->>'{key}'", op, raw)
    column = FIELDS.get(name)
    if column is None:
        raise _bad(f"unknown field {name!r} at position {field_tok.pos}; known: "
                   f"{', '.join(FIELDS)}, metadata.<key>")
    if name == "status_code":
        cls = _STATUS_CLASS.match(raw)
        if cls and op in ("=", "!="):
            return Comparison(name, column, "class" if op == "=" else "!class", int(cls.group(1)))
        if not raw.isdigit() or op == ":":
            raise _bad(f"status_code takes a number or a class like \"5xx\", not {raw!r}")
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
        """A SQL boolean expression; values are appended to `params` as $n placeholders."""
        return "TRUE" if self.root is None else _sql(self.root, params)

    def matches(self, row: dict[str, Any]) -> bool:
        """Evaluate on a row keyed by column name (for live tails), as the SQL would."""
        return True if self.root is None else _eval(self.root, row)


def parse_filter(text: str) -> Filter:
    """Parse an AIP-160 filter; INVALID_ARGUMENT naming `filter` when it does not parse."""
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


def _sql(n: Node, params: list[Any]) -> str:
    if isinstance(n, Not):
        return f"NOT ({_sql(n.term, params)})"
    if isinstance(n, BoolOp):
        return "(" + f" {n.op} ".join(_sql(t, params) for t in n.terms) + ")"
    col, op, v = n.column, n.op, n.value
    if op == "exact":
        return f"{col} = {_param(params, v)}"
    if op in ("class", "!class"):
        expr = f"({col} >= {v * 100} AND {col} < {v * 100 + 100})"
        return expr if op == "class" else f"NOT {expr}"
    if n.field.startswith("metadata."):
        if op == ":" and v == "*":
            return f"metadata ? {_param(params, n.field[len('metadata.'):])}"
        col = f"coalesce({col}, '')"
    if op == ":":
        return f"{col} ILIKE {_param(params, '%' + _like(str(v)) + '%')}"
    if isinstance(v, str) and "*" in v and op in ("=", "!="):
        neg = "NOT " if op == "!=" else ""
        return f"{neg}{col} LIKE {_param(params, _like(v))}"
    sql_op = "<>" if op == "!=" else op
    return f"{col} {sql_op} {_param(params, v)}"


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
    if op == ":":
        return str(v).lower() in str(value).lower()
    if isinstance(v, str) and "*" in v and op in ("=", "!="):
        pattern = "^" + ".*".join(re.escape(p) for p in v.split("*")) + "$"
        found = re.match(pattern, str(value), re.S) is not None
        return found if op == "=" else not found
    return bool({
        "=": value == v, "!=": value != v, "<": value < v, "<=": value <= v, ">": value > v,
        ">=": value >= v,
    }[op])
