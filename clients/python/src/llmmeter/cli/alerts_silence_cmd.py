"""`llmmeter alerts silence`: mute the notifications of matching alerts for a while.

A silence is how an operator says "I know" during a deploy or an incident:
alerts keep being evaluated and shown, but matching ones notify nobody until
the silence ends or is deleted.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from llmmeter.cli.alerts_render import print_document, print_silences
from llmmeter.cli.subcommands import AddCommand, SubParsers, add_group
from llmmeter.client import AlertsClient
from llmmeter.config import ClientConfig
from llmmeter.errors import LlmmeterError
from llmmeter.timeparse import parse_span, timestamp
from llmmeter.v1 import alerts_pb2

_SILENCE_EPILOG = """\
examples:
  llmmeter alerts silence create --match rule=payments-error-rate --duration 2h --comment deploy
  llmmeter alerts silence create --match owner=payments --match 'group=~gpt-4.*' --until 2025-06-01T18:00:00Z
  llmmeter alerts silence list --all
  llmmeter alerts silence delete 3
"""


def register(sub: SubParsers, add: AddCommand) -> None:
    """Adds the `silence` group to the `alerts` group of the `llmmeter` parser."""
    ssub = add_group(
        sub,
        "silence",
        help_="mute notifications: create, list, delete",
        description="Silences mute the notifications of matching alerts for a time.",
        epilog=_SILENCE_EPILOG,
    )
    screate = add(ssub, "create", "create a silence", _SILENCE_EPILOG)
    screate.add_argument(
        "--match",
        action="append",
        required=True,
        metavar="NAME=VALUE",
        help="rule=NAME, group=VALUE or LABEL=VALUE; =~ for a regex (repeatable, all must match)",
    )
    end = screate.add_mutually_exclusive_group(required=True)
    end.add_argument("--duration", metavar="SPAN", help="from now, e.g. 2h")
    end.add_argument("--until", metavar="TIME", help="end, RFC 3339")
    screate.add_argument("--comment", default="", help="why")
    screate.set_defaults(handler=run_silence_create)
    slist = add(ssub, "list", "list silences", _SILENCE_EPILOG)
    slist.add_argument("--all", action="store_true", help="include ended silences")
    slist.set_defaults(handler=run_silence_list)
    sdelete = add(ssub, "delete", "delete a silence", _SILENCE_EPILOG)
    sdelete.add_argument("id", help="the silence id")
    sdelete.set_defaults(handler=run_silence_delete)


def _matcher(text: str) -> alerts_pb2.Matcher:
    if "=~" in text:
        name, value = text.split("=~", 1)
        return alerts_pb2.Matcher(name=name.strip(), value=value, regex=True)
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise LlmmeterError(f"--match: {text!r} is not NAME=VALUE or NAME=~REGEX")
    return alerts_pb2.Matcher(name=name.strip(), value=value)


async def run_silence_create(args: argparse.Namespace, config: ClientConfig) -> int:
    """Creates a silence."""
    now = datetime.now(UTC)
    try:
        if args.duration:
            end = now + parse_span(args.duration)
        else:
            end = datetime.fromisoformat(args.until.replace("Z", "+00:00"))
            end = end if end.tzinfo else end.replace(tzinfo=UTC)
    except ValueError as error:
        raise LlmmeterError(f"--duration/--until: {error}") from None
    silence = alerts_pb2.Silence(matchers=[_matcher(m) for m in args.match], comment=args.comment)
    silence.end_time.CopyFrom(timestamp(end))
    async with AlertsClient(config) as client:
        response = await client.call("CreateSilence", alerts_pb2.CreateSilenceRequest(silence=silence))
    print_silences([response.silence], args.format)
    return 0


async def run_silence_list(args: argparse.Namespace, config: ClientConfig) -> int:
    """Lists silences."""
    async with AlertsClient(config) as client:
        response = await client.call(
            "ListSilences", alerts_pb2.ListSilencesRequest(show_expired=args.all, page_size=1000)
        )
    print_silences(list(response.silences), args.format)
    return 0


async def run_silence_delete(args: argparse.Namespace, config: ClientConfig) -> int:
    """Deletes a silence."""
    async with AlertsClient(config) as client:
        await client.call("DeleteSilence", alerts_pb2.DeleteSilenceRequest(id=args.id))
    if args.format == "json":
        print_document({"deleted": args.id})
    else:
        print(f"deleted silence {args.id}")
    return 0
