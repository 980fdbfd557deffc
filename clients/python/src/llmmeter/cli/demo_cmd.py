"""`llmmeter demo`: fill a fresh installation with realistic synthetic traffic.

Dashboards, queries and alerts cannot be tried, shown or load-tested on an
empty database; this command generates a week of plausible LLM calls (see
:mod:`llmmeter.demo`) and sends them through the real ingest API, so the
data takes the same path, and passes the same checks, as production traffic.
"""

from __future__ import annotations

import argparse
from itertools import islice

from llmmeter.cli.common import (
    IngestSummary,
    add_output_arguments,
    batches_in_thread,
    positive_float,
    positive_int,
    progress_bar,
    send_batches,
)
from llmmeter.cli.subcommands import SubParsers, add_command
from llmmeter.config import ClientConfig
from llmmeter.demo import generate_records
from llmmeter.v1 import usage_pb2

_EPILOG = """\
examples:
  llmmeter demo
  llmmeter demo --records 200000 --days 14 --seed 42
  llmmeter --ingest-addr 127.0.0.1:50051 demo --records 1000 --format json

The traffic covers several providers and models (chat, embedding, image
generation), ~40 users in 6 teams and 10 accounts, a daily rhythm, streaming,
prompt caching, reasoning tokens and a few percent of failed calls. With
--seed, the same records are generated for the same moment of invocation.
The server refuses records older than its raw retention (14 days by default).
"""


def register(subparsers: SubParsers, parents: list[argparse.ArgumentParser]) -> None:
    """Adds the `demo` command to the `llmmeter` parser."""
    parser = add_command(
        subparsers,
        "demo",
        parents=parents,
        help_="send realistic synthetic traffic to the ingest service",
        description="Generate realistic synthetic LLM usage records and send them to the ingest service.",
        epilog=_EPILOG,
    )
    parser.add_argument(
        "--records", metavar="N", type=positive_int, default=10_000, help="number of records (default: 10000)"
    )
    parser.add_argument(
        "--days",
        metavar="D",
        type=positive_float,
        default=7.0,
        help="spread them over the last D days (default: 7)",
    )
    parser.add_argument(
        "--seed", metavar="SEED", type=int, default=None, help="random seed, for reproducible traffic"
    )
    parser.add_argument(
        "--batch-size",
        metavar="N",
        type=positive_int,
        default=1000,
        help="records per stream message (default: 1000)",
    )
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, config: ClientConfig) -> int:
    """Generates the records lazily, streams them to the ingest service and prints what became of them."""
    records = generate_records(args.records, days=args.days, seed=args.seed)
    batch_size: int = args.batch_size

    def read_batch() -> list[usage_pb2.UsageRecord]:
        return list(islice(records, batch_size))

    with progress_bar(not args.quiet, args.records, "sending demo traffic") as advance:
        response = await send_batches(config, batches_in_thread(read_batch), advance)
    summary = IngestSummary.build(response, lambda index: index + 1)
    summary.print(args.format, position_label="record")
    return summary.exit_code
