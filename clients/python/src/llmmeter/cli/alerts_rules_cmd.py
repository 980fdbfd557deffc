"""`llmmeter alerts rules`: create, list, show, update, delete, test and apply alert rules.

Rules are named, and every command that takes a rule takes its name. `apply`
makes the service hold the rules of a YAML file (creating or updating each),
so a repository of rule files can be applied again and again with the same
result; `create` and `update` take the same keys as flags.
"""

from __future__ import annotations

import argparse
import json

from llmmeter.cli.alerts_render import print_document, print_rules, print_test_results
from llmmeter.cli.alerts_rules import (
    RuleError,
    add_rule_flags,
    doc_from_flags,
    load_rules_file,
    rule_from_doc,
)
from llmmeter.cli.render import console, message_dict, print_json
from llmmeter.cli.subcommands import AddCommand, SubParsers, add_group
from llmmeter.client import AlertsClient
from llmmeter.config import ClientConfig
from llmmeter.errors import LlmmeterError
from llmmeter.v1 import alerts_pb2

_RULES_EPILOG = """\
examples:
  llmmeter alerts rules apply rules.yaml
  llmmeter alerts rules list
  llmmeter alerts rules show payments-error-rate --format json
  llmmeter alerts rules test payments-error-rate
"""

_CREATE_EPILOG = """\
examples:
  llmmeter alerts rules create payments-error-rate --metric error_rate --filter 'team = "payments"' \\
      --group-by model --window 5m --for 2m --warning '> 0.05' --critical '> 0.2' \\
      --webhook https://hooks.example.com/llm --webhook-secret-env LLMMETER_WEBHOOK_SECRET_HOOK
  llmmeter alerts rules create daily-budget --budget day:100 --budget-at 80,100 \\
      --filter 'team = "search"' --slack https://hooks.slack.com/services/T/B/X

Metrics: error_rate, failures, requests, requests_per_second, successes,
success_rate, latency_avg, latency_p50/p75/p90/p95/p99, ttft_avg,
ttft_p50/p75/p90/p95/p99, itl, tpot, cost, input_tokens, output_tokens,
total_tokens, cache_read_tokens, cache_write_tokens, tokens_per_minute.
"""

_UPDATE_EPILOG = """\
examples:
  llmmeter alerts rules update payments-error-rate --window 10m --critical '> 0.3'
  llmmeter alerts rules update payments-error-rate --no-data keep

Only the fields given are changed.
"""

_APPLY_EPILOG = """\
examples:
  llmmeter alerts rules apply rules.yaml
  llmmeter alerts rules apply rules.yaml --format json

Rules of the file are created, or updated in full when one of that name
exists; rules not in the file are left alone. Running it twice changes nothing.
"""

_SHOW_EPILOG = """\
examples:
  llmmeter alerts rules show payments-error-rate
  llmmeter alerts rules show payments-error-rate --format json
"""

_DELETE_EPILOG = """\
examples:
  llmmeter alerts rules delete payments-error-rate
"""

_TEST_EPILOG = """\
examples:
  llmmeter alerts rules test payments-error-rate
  llmmeter alerts rules test payments-error-rate --format json

Evaluates the rule once against current data: no notification, no state change.
"""


def register(sub: SubParsers, add: AddCommand) -> None:
    """Adds the `rules` group to the `alerts` group of the `llmmeter` parser."""
    rsub = add_group(
        sub,
        "rules",
        help_="create, list, show, update, delete, test and apply rules",
        description="Alert rules, by name.",
        epilog=_RULES_EPILOG,
    )
    create = add(rsub, "create", "create a rule", _CREATE_EPILOG)
    create.add_argument("name", help="the rule's unique name")
    add_rule_flags(create)
    create.set_defaults(handler=run_create)
    lst = add(rsub, "list", "list rules", _RULES_EPILOG)
    lst.set_defaults(handler=run_rules_list)
    show = add(rsub, "show", "show one rule", _SHOW_EPILOG)
    show.add_argument("name", help="the rule's name")
    show.set_defaults(handler=run_show)
    update = add(rsub, "update", "change fields of a rule", _UPDATE_EPILOG)
    update.add_argument("name", help="the rule's name")
    add_rule_flags(update)
    update.set_defaults(handler=run_update)
    delete = add(rsub, "delete", "delete a rule, its alerts and history", _DELETE_EPILOG)
    delete.add_argument("name", help="the rule's name")
    delete.set_defaults(handler=run_delete)
    test = add(rsub, "test", "evaluate a rule once against current data, without notifying", _TEST_EPILOG)
    test.add_argument("name", help="the rule's name")
    test.set_defaults(handler=run_test)
    apply = add(rsub, "apply", "create or update the rules of a YAML file", _APPLY_EPILOG)
    apply.add_argument("file", metavar="FILE", help="rules file (YAML), or - for stdin")
    apply.set_defaults(handler=run_apply)


def _rule_from_flags(args: argparse.Namespace) -> tuple[alerts_pb2.Rule, list[str]]:
    """The rule the flags describe and the fields they set; a bad flag is a one-line error."""
    try:
        return rule_from_doc(doc_from_flags(args))
    except RuleError as error:
        raise LlmmeterError(str(error)) from None


async def run_create(args: argparse.Namespace, config: ClientConfig) -> int:
    """Creates a rule from flags."""
    rule, _ = _rule_from_flags(args)
    async with AlertsClient(config) as client:
        created = await client.create_rule(rule)
    print_rules([created], args.format)
    return 0


async def run_update(args: argparse.Namespace, config: ClientConfig) -> int:
    """Changes the fields given as flags."""
    rule, paths = _rule_from_flags(args)
    if not paths:
        raise LlmmeterError("nothing to update: give at least one rule flag")
    async with AlertsClient(config) as client:
        updated = await client.update_rule(rule, paths)
    print_rules([updated], args.format)
    return 0


async def run_rules_list(args: argparse.Namespace, config: ClientConfig) -> int:
    """Lists every rule."""
    async with AlertsClient(config) as client:
        rules = await client.list_rules()
    print_rules(rules, args.format)
    return 0


async def run_show(args: argparse.Namespace, config: ClientConfig) -> int:
    """Prints one rule in full."""
    async with AlertsClient(config) as client:
        rule = await client.get_rule(args.name)
    if args.format == "json":
        print_json(rule)
    else:
        console().print_json(json.dumps(message_dict(rule)))
    return 0


async def run_delete(args: argparse.Namespace, config: ClientConfig) -> int:
    """Deletes a rule."""
    async with AlertsClient(config) as client:
        await client.delete_rule(args.name)
    if args.format == "json":
        print_document({"deleted": args.name})
    else:
        print(f"deleted rule {args.name}")
    return 0


async def run_test(args: argparse.Namespace, config: ClientConfig) -> int:
    """Evaluates a rule once."""
    async with AlertsClient(config) as client:
        response = await client.test_rule(name=args.name)
    if args.format == "json":
        print_json(response)
    else:
        print_test_results(response)
    return 0


async def run_apply(args: argparse.Namespace, config: ClientConfig) -> int:
    """Creates or updates the rules of a file."""
    try:
        rules = load_rules_file(args.file)
    except RuleError as error:
        raise LlmmeterError(str(error)) from None
    outcome: list[tuple[str, str]] = []
    async with AlertsClient(config) as client:
        existing = {r.name for r in await client.list_rules()}
        for rule in rules:
            if rule.name in existing:
                await client.update_rule(rule)
                outcome.append((rule.name, "updated"))
            else:
                await client.create_rule(rule)
                outcome.append((rule.name, "created"))
    if args.format == "json":
        print_document({"rules": [{"name": n, "action": a} for n, a in outcome]})
    else:
        for name, action in outcome:
            print(f"{action} {name}")
    return 0
