"""`llmmeter alerts`: alert rules, current alerts, history, live changes and silences.

The group is put together here from its parts: the rule commands
(:mod:`llmmeter.cli.alerts_rules_cmd`, with the rule file and flag format in
:mod:`llmmeter.cli.alerts_rules`), the current alerts, history and live
changes (:mod:`llmmeter.cli.alerts_events_cmd`) and silences
(:mod:`llmmeter.cli.alerts_silence_cmd`). Every alerts command takes the
same `--format table|json`, added here once; the names the commands had when
they all lived in this module can still be imported from it.
"""

from __future__ import annotations

import argparse

from llmmeter.cli import alerts_events_cmd, alerts_rules_cmd, alerts_silence_cmd
from llmmeter.cli.alerts_events_cmd import run_alerts_list, run_events, run_watch
from llmmeter.cli.alerts_rules import RuleError, duration, load_rules_file, metric, rule_from_doc, threshold
from llmmeter.cli.alerts_rules_cmd import (
    run_apply,
    run_create,
    run_delete,
    run_rules_list,
    run_show,
    run_test,
    run_update,
)
from llmmeter.cli.alerts_silence_cmd import run_silence_create, run_silence_delete, run_silence_list
from llmmeter.cli.subcommands import SubParsers, add_command, add_group

__all__ = [
    "RuleError",
    "duration",
    "load_rules_file",
    "metric",
    "register",
    "rule_from_doc",
    "run_alerts_list",
    "run_apply",
    "run_create",
    "run_delete",
    "run_events",
    "run_rules_list",
    "run_show",
    "run_silence_create",
    "run_silence_delete",
    "run_silence_list",
    "run_test",
    "run_update",
    "run_watch",
    "threshold",
]

_GROUP_EPILOG = """\
examples:
  llmmeter alerts rules apply rules.yaml
  llmmeter alerts list --state firing
  llmmeter alerts events --rule payments-error-rate
  llmmeter alerts watch
  llmmeter alerts silence create --match rule=payments-error-rate --duration 2h --comment deploy
"""


def register(subparsers: SubParsers, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `alerts` command group to the `llmmeter` parser."""
    sub = add_group(
        subparsers,
        "alerts",
        help_="alert rules, alerts, history, silences",
        description="Alert rules on usage metrics, their current state, history and silences.",
        epilog=_GROUP_EPILOG,
    )

    def add(parent: SubParsers, name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        p = add_command(parent, name, help_=help_, epilog=epilog, parents=parents)
        p.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
        return p

    alerts_rules_cmd.register(sub, add)
    alerts_events_cmd.register(sub, add)
    alerts_silence_cmd.register(sub, add)
