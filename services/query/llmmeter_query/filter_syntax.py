"""The AIP-160 filter subset's syntax: fields, limits, tokens, the parse tree and its parser.

Kept apart from what a tree is turned into (`filters`: SQL, evaluation on a row) so that the
grammar and the limits a caller's filter meets are read in one place.

Grammar (AIP-160: OR binds tighter than AND; juxtaposition means AND):
    expr    := and
    and     := or { ["AND"] or }
    or      := unary { "OR" unary }
    unary   := ["NOT" | "-"] primary
    primary := "(" expr ")" | field op value

Any caller may send any filter, so its size is bounded here, once, at parse time (the `MAX_*`
limits below).
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


def bad(message: str) -> InvalidArgument:
    """INVALID_ARGUMENT naming the `filter` field."""
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
    """One lexical token and the position it starts at (error messages name it)."""

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
            raise bad(f"unexpected character {text[pos:pos + 64].lstrip()[:1]!r} at position {pos}")
        kind = m.lastgroup or ""
        out.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


class Parser:
    """Recursive descent over the tokens; `parse()` gives the tree (see the grammar above)."""

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
            raise bad(f"nested deeper than {MAX_DEPTH} levels (parentheses and negations) at "
                       f"position {tok.pos}; the limit is {MAX_DEPTH}")

    def count(self, field_tok: Token, value: str) -> None:
        """One more comparison and its wildcards, within MAX_TERMS and the wildcard limits."""
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise bad(f"more than {MAX_TERMS} terms (comparisons); the limit is {MAX_TERMS}")
        if len(value) > MAX_VALUE_LENGTH:
            raise bad(f"the value of {shown(field_tok.text)} at position {field_tok.pos} is "
                       f"longer than {MAX_VALUE_LENGTH} characters, the limit for one value")
        stars = value.count("*")
        if stars > MAX_WILDCARDS_PER_VALUE:
            raise bad(f"the value of {shown(field_tok.text)} at position {field_tok.pos} has more "
                       f"than {MAX_WILDCARDS_PER_VALUE} wildcards (*), the limit for one value")
        self.wildcards += stars
        if self.wildcards > MAX_WILDCARDS:
            raise bad(f"more than {MAX_WILDCARDS} wildcards (*) in all; the limit for a filter "
                       f"is {MAX_WILDCARDS}")

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise bad("unexpected end of filter")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.and_()
        tok = self.peek()
        if tok is not None:
            raise bad(f"unexpected {tok.text!r} at position {tok.pos}")
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
                raise bad(f"expected ')' at position {close.pos}")
            self.depth -= 1
            return node
        if tok.kind != "word" or tok.text in ("AND", "OR", "NOT"):
            raise bad(f"expected a field name at position {tok.pos}, got {shown(tok.text)}")
        op = self.take()
        if op.kind != "op":
            raise bad(f"expected an operator after {shown(tok.text)} at position {op.pos}")
        value = self.take()
        if value.kind not in ("str", "word"):
            raise bad(f"expected a value at position {value.pos}")
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
            raise bad(f"bad metadata key {shown(key)} at position {field_tok.pos}: 1 to 64 of "
                       "A-Z a-z 0-9 _ . -")
        return Comparison(name, f"metadata->>'{key}'", op, raw)
    column = FIELDS.get(name)
    if column is None:
        raise bad(f"unknown field {shown(name)} at position {field_tok.pos}; known: "
                   f"{', '.join(FIELDS)}, metadata.<key>")
    if name == "status_code":
        cls = _STATUS_CLASS.match(raw)
        if cls and op in ("=", "!="):
            return Comparison(name, column, "class" if op == "=" else "!class", int(cls.group(1)))
        # ASCII digits only ("²" is a digit to str.isdigit, not to int), and at most 3 of them
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or op == ":":
            raise bad(f"status_code takes a number up to 999 or a class like \"5xx\", "
                       f"not {shown(raw)}")
        return Comparison(name, column, op, int(raw))
    if name in _BOOL_FIELDS:
        if raw.lower() not in ("true", "false") or op not in ("=", "!="):
            raise bad(f"{name} takes = true or = false")
        return Comparison(name, column, op, raw.lower() == "true")
    return Comparison(name, column, op, raw)
