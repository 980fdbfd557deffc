"""`llmmeter db migrate`: apply the schema by hand, e.g. from a deployment job.

Services migrate at start; operators who run migrations as a separate step
(a Kubernetes Job before a rollout) use this. It needs the server package
(`llmmeter-services`), which owns the migrations; the client alone cannot.
"""

from __future__ import annotations

import argparse
import json
import os

from llmmeter.config import ClientConfig
from llmmeter.errors import ConfigError

_EPILOG = """\
examples:
  llmmeter db migrate
  DATABASE_URL=postgresql://llmmeter@db:5432/llmmeter llmmeter db migrate --flavor timescale

Safe to run twice, and from several processes at once.
"""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Adds the `db` command group to the `llmmeter` parser."""
    db = subparsers.add_parser("db", help="database administration", description="Database administration.")
    sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    parser = sub.add_parser(
        "migrate", parents=parents, help="apply pending schema migrations",
        description="Apply pending schema migrations to the llmmeter database.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL/TimescaleDB URL (default: $DATABASE_URL)")
    parser.add_argument("--flavor", choices=("auto", "postgres", "timescale"), default="auto",
                        help="storage flavour on a new database (default: auto, TimescaleDB when available)")
    parser.set_defaults(handler=_migrate)


async def _migrate(args: argparse.Namespace, config: ClientConfig) -> int:
    """Applies the migrations and prints what was applied."""
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("no database: pass --database-url or set DATABASE_URL")
    try:
        from llmmeter_common.migrate import migrate
    except ImportError:
        raise ConfigError("llmmeter db migrate needs the llmmeter-services package installed") from None
    applied = await migrate(url, args.flavor)
    print(json.dumps({"applied": applied}))
    return 0
