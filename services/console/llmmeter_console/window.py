"""The time window and filters a page shows, from its query string, so every view is a URL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from llmmeter.timeparse import parse_span, timestamp

#: The window dropdown, as the product pages offer it.
CHOICES = ("1h", "24h", "7d", "30d")


@dataclass(frozen=True)
class View:
    """What a page shows: a window (`since` or a custom from/to), a filter, a grouping."""

    start: datetime
    end: datetime
    since: str
    custom_from: str
    custom_to: str
    filter: str
    group: str

    def window(self) -> dict[str, object]:
        """The request fields every query call takes."""
        return {"start_time": timestamp(self.start), "end_time": timestamp(self.end), "filter": self.filter}

    def url(self, path: str, **changes: str) -> str:
        """This view's URL on `path`, with some parameters changed (an empty value drops it)."""
        params = {"since": self.since, "from": self.custom_from, "to": self.custom_to,
                  "filter": self.filter, "group": self.group}
        params.update(changes)
        kept = {k: v for k, v in params.items() if v}
        return f"{path}?{urlencode(kept)}" if kept else path

    def page_url(self, path: str, page_token: str) -> str:
        """The URL of a further page: the window pinned to this page's start and end, so the page
        token (bound to its window by the query service) stays valid as time moves on."""
        return self.url(path, page_token=page_token, since="", **{
            "from": self.start.isoformat().replace("+00:00", "Z"),
            "to": self.end.isoformat().replace("+00:00", "Z")})

    @property
    def hours(self) -> float:
        """The window's length in hours."""
        return (self.end - self.start).total_seconds() / 3600


def _when(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_view(params: dict[str, str], default_group: str = "model",
               now: datetime | None = None) -> View:
    """A view from query parameters; ValueError naming the parameter when one is wrong."""
    now = now or datetime.now(UTC)
    since = params.get("since", "").strip()
    custom_from, custom_to = params.get("from", "").strip(), params.get("to", "").strip()
    if custom_from:
        try:
            start = _when(custom_from)
            end = _when(custom_to) if custom_to else now
        except ValueError:
            raise ValueError("from/to: RFC 3339 times, e.g. 2026-12-01T00:00:00Z") from None
        if end <= start:
            raise ValueError("from/to: 'to' must be after 'from'")
        since = ""
    else:
        since = since or "24h"
        try:
            span = parse_span(since)
        except ValueError as exc:
            raise ValueError(f"since: {exc}") from None
        if span <= timedelta(0) or span > timedelta(days=400):
            raise ValueError("since: between 1 minute and 400 days")
        start, end = now - span, now
    group = params.get("group", "").strip() or default_group
    return View(start, end, since, custom_from, custom_to, params.get("filter", "").strip(), group)
