"""The request log: keyset pages newest first, and one request in full.

Pages are cut by the primary key (start_time, request_id) in descending order,
with the last row of a page as the token of the next, so page 1000 costs one
index descent like page 1 (no OFFSET). The token also pins the window and the
filter it was made for: reusing it with another filter is an error, not a
silently wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from llmmeter_common.errors import FieldViolation, InvalidArgument, NotFound
from llmmeter_common.timeutil import from_us, to_us
from llmmeter_query.filter_syntax import shown
from llmmeter_query.filters import Filter
from llmmeter_query.window import Window

#: Columns of a request-log row.
LOG_COLUMNS = (
    "request_id", "start_time", "status_code", "model", "provider", "user_name", "team",
    "input_tokens", "output_tokens", "latency_us", "ttft_us", "cost", "error_type",
    "cost_source",
)
MAX_PAGE_SIZE = 1000
#: Tokens this service makes are about 150 characters.
MAX_TOKEN_LENGTH = 1024
MIN_TIME = from_us(0)
MAX_TIME = datetime(3000, 1, 1, tzinfo=UTC)
DEFAULT_PAGE_SIZE = 50


def _bad_token(reason: str) -> InvalidArgument:
    return InvalidArgument(f"page_token: {reason}", [FieldViolation("page_token", reason)])


@dataclass(frozen=True)
class PageToken:
    """Where the next page starts, and what it was made for."""

    after_time: datetime
    after_id: str
    window: Window
    filter_hash: str

    def encode(self) -> str:
        """Opaque, URL-safe."""
        raw = json.dumps({"t": to_us(self.after_time), "i": self.after_id, "s": to_us(self.window.start),
                          "e": to_us(self.window.end), "f": self.filter_hash}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @staticmethod
    def decode(token: str) -> PageToken:
        """Parse a token; INVALID_ARGUMENT naming page_token when it is not one of ours."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise _bad_token("not a page token of this service")
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            tok = PageToken(from_us(int(raw["t"])), str(raw["i"]),
                            Window(from_us(int(raw["s"])), from_us(int(raw["e"]))), str(raw["f"]))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise _bad_token("not a page token of this service") from exc
        if "\x00" in tok.after_id or len(tok.after_id) > 256 or not all(
                MIN_TIME <= t < MAX_TIME for t in (tok.after_time, tok.window.start, tok.window.end)):
            raise _bad_token("not a page token of this service")
        return tok


def filter_hash(filt: Filter) -> str:
    """A short fingerprint of the filter text a token belongs to."""
    return hashlib.sha256(filt.text.encode()).hexdigest()[:16]


@dataclass
class Page:
    """Rows of one page and the token of the next ('' on the last)."""

    rows: list[asyncpg.Record]
    next_token: str


class RequestLog:
    """Reads the raw request table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def page(self, window: Window, filt: Filter, page_size: int, token: str,
                   window_given: bool) -> Page:
        """One page, newest first."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size: must be between 0 and {MAX_PAGE_SIZE}",
                                  [FieldViolation("page_size", f"0..{MAX_PAGE_SIZE}")])
        size = page_size or DEFAULT_PAGE_SIZE
        fh = filter_hash(filt)
        params: list[Any] = []
        if token:
            tok = PageToken.decode(token)
            if tok.filter_hash != fh:
                raise _bad_token("was made for another filter")
            if window_given and tok.window != window:
                raise _bad_token("was made for another time window")
            window = tok.window
            # The cursor is the only upper bound: the plain one lets PostgreSQL skip the newer day
            # partitions, and with the window's end beside it the backward index scan started from
            # the window's end and stepped over every index entry down to the cursor (4x the pages).
            params += [tok.after_time, tok.after_id, window.start]
            bounds = "start_time >= $3 AND start_time <= $1 AND (start_time, request_id) < ($1, $2)"
        else:
            params += [window.start, window.end]
            bounds = "start_time >= $1 AND start_time < $2"
        sql = (f"SELECT {', '.join(LOG_COLUMNS)} FROM usage_records WHERE {bounds} AND {filt.sql(params)} "
               f"ORDER BY start_time DESC, request_id DESC LIMIT {size + 1}")
        rows = list(await self._pool.fetch(sql, *params))
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_token = PageToken(last["start_time"], last["request_id"], window, fh).encode()
        return Page(rows, next_token)

    async def get(self, request_id: str, start_time: datetime | None) -> asyncpg.Record:
        """One request with its payload; NOT_FOUND when absent."""
        if not request_id:
            raise InvalidArgument("request_id is required", [FieldViolation("request_id", "required")])
        params: list[Any] = [request_id]
        when = ""
        if start_time is not None:
            params.append(start_time)
            when = " AND r.start_time = $2"
        row = await self._pool.fetchrow(
            "SELECT r.*, p.request AS payload_request, p.response AS payload_response "
            "FROM usage_records AS r LEFT JOIN usage_payloads AS p USING (start_time, request_id) "
            f"WHERE r.request_id = $1{when} ORDER BY r.start_time DESC LIMIT 1", *params)
        if row is None:
            raise NotFound(f"request {shown(request_id)} not found")
        return row
