"""Flags shared by the read commands (`usage`, `logs`): the time window and the filter.

Every QueryService call takes `[start_time, end_time)` and an AIP-160 filter;
declaring the flags once keeps their names, defaults and help identical on
every command.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from llmmeter.errors import ConfigError
from llmmeter.timeparse import TimePoint, Window, parse_span, parse_time, resolve_window, timestamp

FILTER_HELP = (
    "AIP-160 filter, e.g. 'team = \"payments\" AND status_code >= 500'; fields: model, model_alias, "
    'provider, user, team, account, call_type, status_code (or "5xx"), error_type, request_id, '
    "streaming, cache_hit, metadata.KEY"
)


def _span(text: str) -> Any:
    try:
        return parse_span(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def time_point(text: str) -> TimePoint:
    """argparse type: an RFC 3339 time or a time ago like `2h` (usage error when it is neither)."""
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def filter_flags() -> argparse.ArgumentParser:
    """A parent parser with `--filter`."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--filter", default="", metavar="EXPR", help=FILTER_HELP)
    return flags


def window_flags() -> argparse.ArgumentParser:
    """A parent parser with `--since`, `--from`, `--to` and `--filter`."""
    flags = filter_flags()
    since_or_from = flags.add_mutually_exclusive_group()
    since_or_from.add_argument(
        "--since",
        type=_span,
        metavar="SPAN",
        help="the last SPAN: 30s, 15m, 24h, 7d, 2w or e.g. 1h30m (default: 24h)",
    )
    since_or_from.add_argument(
        "--from",
        dest="from_",
        type=time_point,
        metavar="TIME",
        help="window start: RFC 3339 (2025-06-01T12:00:00Z; no offset means UTC) or a time ago like 2h",
    )
    flags.add_argument(
        "--to",
        type=time_point,
        metavar="TIME",
        help="window end, exclusive, in the same forms (default: now); with --since the span ends here",
    )
    return flags


def window(args: argparse.Namespace, now: datetime | None = None) -> Window:
    """The window of the window flags; ConfigError when it is empty."""
    try:
        return resolve_window(args.since, args.from_, args.to, now)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def window_is_fixed(args: argparse.Namespace) -> bool:
    """Whether window flags were given and name the same window whenever the command runs."""
    points = [p for p in (args.from_, args.to) if p is not None]
    return args.since is None and bool(points) and all(p.absolute is not None for p in points)


def set_window(request: Any, span: Window | None) -> Any:
    """Fills `start_time`/`end_time` of a request from a window (None ends stay unset); returns it."""
    if span is not None:
        if span.start is not None:
            request.start_time.CopyFrom(timestamp(span.start))
        if span.end is not None:
            request.end_time.CopyFrom(timestamp(span.end))
    return request
