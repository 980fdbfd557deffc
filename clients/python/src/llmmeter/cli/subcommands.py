"""Building the `llmmeter` sub-parsers: command groups and the commands inside them.

Every command and group is declared with the same help formatter (epilogs
keep their line breaks), the same `COMMAND` metavar, and a description that
by default is its help text as a sentence; declaring that once keeps `--help`
of every command in the same shape.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers` returns: where commands are added."""

AddCommand: TypeAlias = Callable[[SubParsers, str, str, str], argparse.ArgumentParser]
"""A group's own way to add a command (to, name, help, epilog), with its parents and common flags bound."""


def add_group(subparsers: SubParsers, name: str, *, help_: str, description: str, epilog: str) -> SubParsers:
    """Adds a command group (`usage`, `alerts rules`, ...) and returns where its commands go.

    The chosen command is stored as `<name>_command` and one is required.
    """
    group = subparsers.add_parser(
        name,
        help=help_,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def add_command(
    subparsers: SubParsers,
    name: str,
    *,
    help_: str,
    epilog: str,
    parents: list[argparse.ArgumentParser],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Adds one command; its description defaults to `help_` written as a sentence."""
    return subparsers.add_parser(
        name,
        parents=parents,
        help=help_,
        description=description if description is not None else help_[0].upper() + help_[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
