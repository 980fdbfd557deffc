"""`llmmeter alerts list|events|watch`: the current state of alerts, their history, and live changes.

These are the read side of alerting: what is firing now (one row per rule
and group), what happened (state changes, notifications and their
deliveries, newest first), and a follow mode for a terminal or a script.
"""

from __future__ import annotations

import argparse
import json
import sys

from llmmeter.cli.alerts_render import event_row, print_alerts, print_events
from llmmeter.cli.common import positive_int
from llmmeter.cli.render import console, message_dict
from llmmeter.cli.subcommands import AddCommand, SubParsers
from llmmeter.client import AlertsClient
from llmmeter.config import ClientConfig
from llmmeter.v1 import alerts_pb2

_LIST_EPILOG = """\
examples:
  llmmeter alerts list
  llmmeter alerts list --state firing --rule payments-error-rate --format json
"""

_EVENTS_EPILOG = """\
examples:
  llmmeter alerts events
  llmmeter alerts events --rule payments-error-rate --kind delivery --limit 20
"""

_WATCH_EPILOG = """\
examples:
  llmmeter alerts watch
  llmmeter alerts watch --rule payments-error-rate --format json --max 10

Runs until Ctrl-C, or until --max changes were shown.
"""


def register(sub: SubParsers, add: AddCommand) -> None:
    """Adds `list`, `events` and `watch` to the `alerts` group of the `llmmeter` parser."""
    alist = add(sub, "list", "current alerts: state per rule and group", _LIST_EPILOG)
    alist.add_argument("--rule", help="only this rule")
    alist.add_argument("--state", choices=("ok", "pending", "firing", "resolved"), help="only this state")
    alist.set_defaults(handler=run_alerts_list)
    events = add(sub, "events", "the history: state changes, notifications, deliveries", _EVENTS_EPILOG)
    events.add_argument("--rule", help="only this rule")
    events.add_argument("--kind", choices=("state_change", "notification", "delivery", "silenced"))
    events.add_argument("--limit", type=positive_int, default=50, metavar="N", help="newest N (default 50)")
    events.set_defaults(handler=run_events)
    watch = add(sub, "watch", "follow state changes as they happen", _WATCH_EPILOG)
    watch.add_argument("--rule", help="only this rule")
    watch.add_argument("--max", dest="max_events", type=positive_int, metavar="N", help="stop after N")
    watch.set_defaults(handler=run_watch)


async def run_alerts_list(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints the current alerts."""
    terms = []
    if args.rule:
        terms.append(f"rule = {json.dumps(args.rule)}")
    if args.state:
        terms.append(f"state = {args.state}")
    alerts: list[alerts_pb2.Alert] = []
    async with AlertsClient(config) as client:
        token = ""
        while True:
            page = await client.call(
                "ListAlerts",
                alerts_pb2.ListAlertsRequest(filter=" AND ".join(terms), page_size=1000, page_token=token),
            )
            alerts.extend(page.alerts)
            token = page.next_page_token
            if not token:
                break
    print_alerts(alerts, args.format)
    return 0


async def run_events(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints the history, newest first."""
    terms = [f"rule = {json.dumps(args.rule)}"] if args.rule else []
    if args.kind:
        terms.append(f"kind = {args.kind}")
    async with AlertsClient(config) as client:
        page = await client.call(
            "ListAlertEvents",
            alerts_pb2.ListAlertEventsRequest(filter=" AND ".join(terms), page_size=min(args.limit, 1000)),
        )
    print_events(page.events, args.format)
    return 0


async def run_watch(args: argparse.Namespace, config: ClientConfig) -> int:
    """Follows state changes."""
    request = alerts_pb2.WatchAlertsRequest(filter=f"rule = {json.dumps(args.rule)}" if args.rule else "")
    shown = 0
    out = console()
    async with AlertsClient(config) as client:
        async for response in client.watch_alerts(request):
            if args.format == "json":
                sys.stdout.write(json.dumps(message_dict(response.event), ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                out.print("  ".join(event_row(response.event)))
            shown += 1
            if args.max_events is not None and shown >= args.max_events:
                break
    return 0
