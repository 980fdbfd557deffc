"""`llmmeter keys create|list|revoke|generate`: API keys with a role and an optional team scope.

Every call to the services needs a key. `create`, `list` and `revoke` need an
admin key; `generate` makes a key offline, for an operator to put in a Secret
as the deployment's bootstrap admin key (`LLMMETER_BOOTSTRAP_ADMIN_KEY`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from llmmeter import keyformat
from llmmeter.cli.render import console, print_json
from llmmeter.cli.subcommands import SubParsers, add_command, add_group
from llmmeter.config import ClientConfig
from llmmeter.keys_client import KeysClient
from llmmeter.v1 import keys_pb2

_EPILOG = """\
examples:
  llmmeter keys create --name gateway-prod --role ingest
  llmmeter keys create --name payments-dashboard --role read --team payments
  llmmeter keys list --all
  llmmeter keys revoke 3f9a0c12b7de
  llmmeter keys generate          # offline, for LLMMETER_BOOTSTRAP_ADMIN_KEY

Roles: ingest (write records), read (query; read alert rules), admin (everything).
A read or ingest key bound to --team sees and writes only that team's data.
The whole key is printed once, by `create`; keep it in a secret store.
"""

_ROLES = {"ingest": keys_pb2.ROLE_INGEST, "read": keys_pb2.ROLE_READ, "admin": keys_pb2.ROLE_ADMIN}


def register(subparsers: SubParsers, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `keys` command group to the `llmmeter` parser."""
    sub = add_group(subparsers, "keys", help_="API keys: create, list, revoke, generate",
                    description="API keys with a role and an optional team scope (admin only).",
                    epilog=_EPILOG)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = add_command(sub, name, help_=help_, epilog=_EPILOG, parents=parents)
        p.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
        return p

    create = add("create", "create a key and print it once")
    create.add_argument("--name", required=True, help="a label, e.g. gateway-prod")
    create.add_argument("--role", required=True, choices=tuple(_ROLES), help="what the key may do")
    create.add_argument("--team", default="", help="bind a read or ingest key to one team")
    create.set_defaults(handler=_create)
    listing = add("list", "list keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(handler=_list)
    revoke = add("revoke", "revoke a key by its id")
    revoke.add_argument("key_id", help="the key's id (the 12 hex digits after llmm_)")
    revoke.set_defaults(handler=_revoke)
    generate = add("generate", "print a new random key without storing it (for a bootstrap Secret)")
    generate.set_defaults(handler=_generate)


def _role_name(role: int) -> str:
    return keys_pb2.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def _time(stamp: Timestamp) -> str:
    return stamp.ToDatetime(UTC).isoformat(timespec="seconds")


def _print_keys(found: list[keys_pb2.ApiKey]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("key id", "name", "role", "team", "created", "revoked"):
        table.add_column(column)
    for k in found:
        revoked = _time(k.revoke_time) if k.HasField("revoke_time") else ""
        table.add_row(k.key_id, k.name, _role_name(k.role), k.team or "(every team)",
                      _time(k.create_time), revoked)
    console().print(table)


async def _create(args: argparse.Namespace, config: ClientConfig) -> int:
    """Creates a key; the whole key goes to stdout, alone on its line, so it can be captured."""
    async with KeysClient(config) as client:
        response = await client.create_key(args.name, _ROLES[args.role], args.team)
    if args.format == "json":
        print_json(response)
        return 0
    print(response.secret)
    scope = f"team {response.api_key.team}" if response.api_key.team else "every team"
    print(f"key {response.api_key.key_id} ({args.role}, {scope}) created; this is the only time it is "
          "shown", file=sys.stderr)
    return 0


async def _list(args: argparse.Namespace, config: ClientConfig) -> int:
    async with KeysClient(config) as client:
        found = await client.list_keys(args.all)
    if args.format == "json":
        print_json(keys_pb2.ListKeysResponse(keys=found))
    else:
        _print_keys(found)
    return 0


async def _revoke(args: argparse.Namespace, config: ClientConfig) -> int:
    async with KeysClient(config) as client:
        key = await client.revoke_key(args.key_id)
    if args.format == "json":
        print_json(keys_pb2.RevokeKeyResponse(api_key=key))
    else:
        print(f"revoked key {key.key_id} ({key.name}); services refuse it within seconds")
    return 0


async def _generate(args: argparse.Namespace, config: ClientConfig) -> int:
    token = keyformat.generate().token
    if args.format == "json":
        print(json.dumps({"secret": token}))
    else:
        print(token)
    return 0

