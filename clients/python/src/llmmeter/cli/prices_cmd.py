"""`llmmeter prices set|list|delete|import`: the operator's per-model price overrides.

A record sent without a cost is priced at ingest by the override of its model in effect at its
start time, else by the built-in price table (genai-prices), else it stays unpriced (cost 0,
counted as "unpriced" in `usage summary` and `usage breakdown`). Needs an admin key.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from llmmeter.cli.render import console, print_json
from llmmeter.cli.subcommands import SubParsers, add_command, add_group
from llmmeter.config import ClientConfig
from llmmeter.prices_client import PricesClient
from llmmeter.v1 import prices_pb2

_EPILOG = """\
examples:
  llmmeter prices set gpt-4o --from 2025-01-01 --input 2.5 --output 10 --cache-read 1.25
  llmmeter prices set my-finetune --from 2025-06-01T00:00:00Z --input 3 --output 12
  llmmeter prices list
  llmmeter prices delete gpt-4o --from 2025-01-01
  llmmeter prices import prices.yaml

Rates are USD per million tokens (per image, per audio second). Unset cache rates are the input
rate, an unset reasoning rate the output rate. prices.yaml is a list (or `prices:` list) of
{model, effective_from, input_per_mtok, output_per_mtok, cache_read_per_mtok,
cache_write_per_mtok, reasoning_per_mtok, per_image, per_audio_second}.
"""

#: (YAML key and proto field, CLI flag)
RATES: tuple[tuple[str, str], ...] = (
    ("input_per_mtok", "--input"), ("output_per_mtok", "--output"),
    ("cache_read_per_mtok", "--cache-read"), ("cache_write_per_mtok", "--cache-write"),
    ("reasoning_per_mtok", "--reasoning"), ("per_image", "--per-image"),
    ("per_audio_second", "--per-audio-second"),
)
_KEYS = {"model", "effective_from", *(k for k, _ in RATES)}


class PriceFileError(ValueError):
    """A price file that cannot be imported (says where)."""


def effective_time(value: Any) -> Timestamp:
    """A date (UTC midnight) or an RFC 3339 time, as text or as YAML gives it."""
    if isinstance(value, datetime):
        at = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        at = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a date or RFC 3339 time: {value!r}") from None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
    else:
        raise ValueError(f"not a date or RFC 3339 time: {value!r}")
    out = Timestamp()
    out.FromDatetime(at.astimezone(UTC))
    return out


def price_of(entry: Any, where: str) -> prices_pb2.ModelPrice:
    """One YAML entry as a ModelPrice."""
    if not isinstance(entry, dict):
        raise PriceFileError(f"{where}: a mapping with model, effective_from and rates")
    unknown = sorted(set(map(str, entry)) - _KEYS)
    if unknown:
        raise PriceFileError(f"{where}: unknown keys {', '.join(unknown)}")
    for key in ("model", "effective_from", "input_per_mtok", "output_per_mtok"):
        if entry.get(key) is None:
            raise PriceFileError(f"{where}: {key} is required")
    try:
        price = prices_pb2.ModelPrice(model=str(entry["model"]),
                                      effective_from=effective_time(entry["effective_from"]))
        for key, _ in RATES:
            if entry.get(key) is not None:
                setattr(price, key, float(entry[key]))
    except (TypeError, ValueError) as e:
        raise PriceFileError(f"{where}: {e}") from None
    return price


def load_file(path: Path) -> list[prices_pb2.ModelPrice]:
    """The overrides of a YAML price file."""
    doc = yaml.safe_load(path.read_text())
    entries = doc.get("prices") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise PriceFileError(f"{path}: a list of prices (or a `prices:` list)")
    return [price_of(e, f"{path}: prices[{i}]") for i, e in enumerate(entries)]


def register(subparsers: SubParsers, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `prices` command group to the `llmmeter` parser."""
    sub = add_group(subparsers, "prices", help_="per-model price overrides: set, list, delete, import",
                    description="Prices for records sent without a cost (admin only).", epilog=_EPILOG)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = add_command(sub, name, help_=help_, epilog=_EPILOG, parents=parents)
        p.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")
        return p

    set_ = add("set", "create or replace a model's prices from a date on")
    set_.add_argument("model", help="the model, as records name it")
    set_.add_argument("--from", dest="effective_from", required=True,
                      help="from when: a date (UTC midnight) or an RFC 3339 time")
    for key, flag in RATES:
        unit = "per million tokens" if key.endswith("mtok") else key.replace("_", " ")
        set_.add_argument(flag, dest=key, type=float, required=flag in ("--input", "--output"),
                          help=f"USD {unit}")
    set_.set_defaults(handler=_set)
    listing = add("list", "list the overrides")
    listing.add_argument("--model", default="", help="only this model's")
    listing.set_defaults(handler=_list)
    delete = add("delete", "delete one override")
    delete.add_argument("model")
    delete.add_argument("--from", dest="effective_from", required=True, help="its effective_from")
    delete.set_defaults(handler=_delete)
    imp = add("import", "set every override of a YAML file")
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=_import)


def _rate(p: prices_pb2.ModelPrice, key: str) -> str:
    return f"{getattr(p, key):g}" if p.HasField(key) else "-"  # type: ignore[arg-type]


def _print(found: list[prices_pb2.ModelPrice]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("model", "effective from", "input", "output", "cache read", "cache write",
                   "reasoning", "per image", "per audio s"):
        table.add_column(column)
    for p in found:
        table.add_row(p.model, p.effective_from.ToDatetime(UTC).isoformat(timespec="seconds"),
                      *(_rate(p, k) for k, _ in RATES))
    console().print(table)


async def _set(args: argparse.Namespace, config: ClientConfig) -> int:
    price = prices_pb2.ModelPrice(model=args.model, effective_from=effective_time(args.effective_from))
    for key, _ in RATES:
        if getattr(args, key) is not None:
            setattr(price, key, getattr(args, key))
    async with PricesClient(config) as client:
        stored = await client.set_price(price)
    if args.format == "json":
        print_json(prices_pb2.SetPriceResponse(price=stored))
    else:
        _print([stored])
    return 0


async def _list(args: argparse.Namespace, config: ClientConfig) -> int:
    async with PricesClient(config) as client:
        found = await client.list_prices(args.model)
    if args.format == "json":
        print_json(prices_pb2.ListPricesResponse(prices=found))
    else:
        _print(found)
    return 0


async def _delete(args: argparse.Namespace, config: ClientConfig) -> int:
    async with PricesClient(config) as client:
        gone = await client.delete_price(args.model, effective_time(args.effective_from))
    if args.format == "json":
        print_json(prices_pb2.DeletePriceResponse(price=gone))
    else:
        print(f"deleted the prices of {gone.model} from "
              f"{gone.effective_from.ToDatetime(UTC).isoformat(timespec='seconds')}")
    return 0


async def _import(args: argparse.Namespace, config: ClientConfig) -> int:
    try:
        prices = load_file(args.file)
    except (OSError, yaml.YAMLError, PriceFileError) as e:
        print(f"llmmeter: {e}", file=sys.stderr)
        return 2
    stored = []
    async with PricesClient(config) as client:
        for p in prices:
            stored.append(await client.set_price(p))
    if args.format == "json":
        print_json(prices_pb2.ListPricesResponse(prices=stored))
    else:
        _print(stored)
        print(f"{len(stored)} price overrides set", file=sys.stderr)
    return 0
