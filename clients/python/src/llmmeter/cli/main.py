"""Entry point of the `llmmeter` command: global flags, command dispatch and error reporting.

Each command group lives in its own module with a `register(subparsers,
parents)` function that adds its parser and sets `handler`, an async
`(args, config) -> exit code`. Adding a group (usage, logs, alerts, db) means
writing such a module and listing it in :data:`COMMANDS`; the connection
flags, the event loop and the mapping of failures to one stderr line and an
exit status are handled here once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from llmmeter.channels import TlsConfig
from llmmeter.cli import alerts_cmd, db_cmd, demo_cmd, ingest_cmd, keys_cmd, logs_cmd, prices_cmd, usage_cmd
from llmmeter.cli.common import positive_float
from llmmeter.config import (
    DEFAULT_ALERTS_ADDR,
    DEFAULT_INGEST_ADDR,
    DEFAULT_QUERY_ADDR,
    ENV_ALERTS_ADDR,
    ENV_API_KEY,
    ENV_API_KEY_FILE,
    ENV_INGEST_ADDR,
    ENV_QUERY_ADDR,
    ENV_TIMEOUT,
    ENV_TLS,
    ClientConfig,
    read_key_file,
)
from llmmeter.errors import ConfigError, LlmmeterError, one_line

Handler = Callable[[argparse.Namespace, ClientConfig], Coroutine[Any, Any, int]]

COMMANDS: tuple[ModuleType, ...] = (ingest_cmd, demo_cmd, db_cmd, usage_cmd, logs_cmd, alerts_cmd, keys_cmd,
                                     prices_cmd)
"""Modules of the command groups, in the order `--help` lists them."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_DEBUG_ENV = "LLMMETER_DEBUG"

_EPILOG = f"""\
examples:
  llmmeter demo --records 10000
  llmmeter ingest records.jsonl --format json
  llmmeter --ingest-addr ingest.internal:50051 ingest - < records.jsonl

Connection flags may also follow the command. Defaults come from
{ENV_INGEST_ADDR}, {ENV_QUERY_ADDR}, {ENV_ALERTS_ADDR} and {ENV_TIMEOUT}.
Set {_DEBUG_ENV}=1 to get a traceback on unexpected errors.
"""


def _connection_flags() -> argparse.ArgumentParser:
    """Builds the flags shared by every command; unset ones stay absent and fall back to the environment."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("connection")
    for name, env, default in (
        ("ingest", ENV_INGEST_ADDR, DEFAULT_INGEST_ADDR),
        ("query", ENV_QUERY_ADDR, DEFAULT_QUERY_ADDR),
        ("alerts", ENV_ALERTS_ADDR, DEFAULT_ALERTS_ADDR),
    ):
        group.add_argument(
            f"--{name}-addr",
            metavar="HOST:PORT",
            default=argparse.SUPPRESS,
            help=f"{name} service address (default: ${env} or {default})",
        )
    group.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help=f"deadline of each call in seconds (default: ${ENV_TIMEOUT} or 30)",
    )
    group.add_argument("--api-key-file", metavar="PATH", default=argparse.SUPPRESS,
                       help=f"read the API key from PATH (default: ${ENV_API_KEY}, ${ENV_API_KEY_FILE}, "
                            "or .llmmeter/admin.key from `make run`)")
    group.add_argument("--tls", action="store_true", default=argparse.SUPPRESS,
                       help=f"call the services over TLS (default: ${ENV_TLS})")
    group.add_argument("--ca-file", metavar="PATH", default=argparse.SUPPRESS,
                       help="PEM CA bundle of the services' certificates (implies --tls)")
    group.add_argument("--cert-file", metavar="PATH", default=argparse.SUPPRESS,
                       help="PEM client certificate for mutual TLS (with --key-file; implies --tls)")
    group.add_argument("--key-file", metavar="PATH", default=argparse.SUPPRESS,
                       help="PEM private key of --cert-file")
    return flags


def _version() -> str:
    """Returns the installed package version, for `--version`."""
    try:
        return metadata.version("llmmeter")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """Builds the full `llmmeter` argument parser with every registered command group."""
    connection = _connection_flags()
    parser = argparse.ArgumentParser(
        prog="llmmeter",
        description="Command line client of llmmeter, the LLM usage analytics backend.",
        epilog=_EPILOG,
        parents=[connection],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(subparsers, [connection])
    return parser


def _config(args: argparse.Namespace) -> ClientConfig:
    """Builds the client config: environment first, then the flags given on the command line."""
    overrides = {
        name: getattr(args, name)
        for name in ("ingest_addr", "query_addr", "alerts_addr", "timeout")
        if hasattr(args, name)
    }
    config = replace(ClientConfig.from_env(), **overrides)
    if hasattr(args, "api_key_file"):
        config = replace(config, api_key=read_key_file(args.api_key_file))
    files: dict[str, Any] = {name: Path(getattr(args, name)) for name in ("ca_file", "cert_file", "key_file")
                             if hasattr(args, name)}
    if files or getattr(args, "tls", False):
        config = replace(config, tls=replace(config.tls or TlsConfig(), **files))
    return config


def _fail(message: str) -> None:
    """Prints one error line to stderr, in argparse's `prog: error:` style."""
    print(f"llmmeter: error: {one_line(message)}", file=sys.stderr)


def _os_error_message(error: OSError) -> str:
    """Formats an OSError as `reason: path` rather than Python's `[Errno 2] ...` repr."""
    if error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Runs the `llmmeter` command line with `argv` (default: `sys.argv[1:]`) and returns the exit status.

    0 on success, 1 when the command failed or rejected input, 2 for usage or
    configuration errors, 130 when interrupted. Never raises for expected
    failures: they become one line on stderr.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version or a usage error, already printed by argparse
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        config = _config(args)
    except ConfigError as error:
        _fail(str(error))
        return EXIT_USAGE
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args, config))
    except LlmmeterError as error:
        _fail(str(error))
    except OSError as error:
        _fail(_os_error_message(error))
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get(_DEBUG_ENV):
            raise
        _fail(f"unexpected {type(error).__name__}: {error} (set {_DEBUG_ENV}=1 for a traceback)")
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
