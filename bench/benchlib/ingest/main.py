"""The ingest benchmark's run: flags, workload, (a), (b), (c), result.

Kept apart from the measurements so the order of a run and what ends up in its result are
readable in one place; bench/bench_ingest.py calls `main` with its description.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..db import execute, fetchval
from ..harness import BenchFailure, finish, log, machine_facts, run_main
from ..sandbox import Sandbox
from .e2e import run_e2e
from .records import convert_rows, generate, serialize_chunks
from .reference import run_copy, run_store_path
from .report import evaluate, print_report


def main(description: str | None) -> None:
    """Run the benchmark with the command line's flags and exit with its status."""
    run_main(lambda: run(parse_args(description)))


def parse_args(description: str | None) -> argparse.Namespace:
    """The flags; sizes that the service would refuse are refused here, before anything starts."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=200_000, help="records to send (default 200000)")
    p.add_argument("--chunk", type=int, default=5_000, help="records per stream message (default 5000)")
    p.add_argument("--streams", type=int, default=2, help="concurrent StreamRecords calls (default 2)")
    p.add_argument("--form", choices=("columns", "records"), default="columns",
                   help="how each message carries its records: `columns` (UsageColumns, the bulk form, "
                        "default) or `records` (one UsageRecord message each)")
    p.add_argument("--warmup", type=int, default=5_000,
                   help="records sent (then truncated) before the measured run, 0 for none (default 5000)")
    p.add_argument("--window", type=float, default=300.0, metavar="SECONDS",
                   help="records start within this many seconds before now (default 300: live traffic "
                        "with a few minutes of lag; 604800 = a 7-day backfill, much less rollup "
                        "aggregation per batch)")
    p.add_argument("--rounds", type=int, default=3,
                   help="(a) then (b) this many times, alternating; the goals judge the median of the "
                        "rounds' ratios (default 3: one round's reference COPY swings by a third on a "
                        "shared 2-core VM)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="print only the JSON result line on stdout")
    p.add_argument("--no-store-path", action="store_true", help="skip the informational Store.write figure")
    p.add_argument("--check-goals", action="store_true", help="exit 2 when a goal is not met")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server log) for debugging")
    p.add_argument("--profile", metavar="FILE",
                   help="record the service with py-spy (must be installed) into FILE during (a)")
    p.add_argument("--profile-format", default="speedscope", choices=("speedscope", "flamegraph", "raw"))
    args = p.parse_args()
    if not 1 <= args.window <= 13 * 86_400:
        p.error("--window: between 1 second and 13 days (the service refuses records past retention)")
    if args.records < 1 or args.chunk < 1 or args.streams < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--records, --chunk, --streams and --rounds must be positive, --warmup not negative")
    if args.chunk > 10_000:
        p.error("--chunk: the service takes at most 10000 records per message")
    return args


def run(args: argparse.Namespace) -> int:
    """Prepare the workload, measure (a), (b) and (c) on one throwaway server, report; the exit status."""
    facts = machine_facts()
    now = datetime.now().astimezone() - timedelta(seconds=5)
    log(f"generating {args.records} records (+{args.warmup} warm-up) with llmmeter.demo, seed {args.seed}, "
        f"start times within the last {args.window:g} s")
    t = time.perf_counter()
    records = generate(args.records, args.seed, now, args.window)
    warmup = generate(args.warmup, args.seed + 1, now, args.window) if args.warmup else []
    chunks = serialize_chunks(records, args.chunk, args.form)
    warmup_chunks = serialize_chunks(warmup, args.chunk, args.form)
    rows, payloads = convert_rows(records)
    log(f"  done in {time.perf_counter() - t:.1f}s: {len(chunks)} messages, "
        f"{sum(map(len, chunks)) / args.records:.0f} bytes/record, {len(payloads)} with payloads")
    if len({(r[1], r[0]) for r in rows}) != len(rows):
        raise BenchFailure("the generator produced duplicate keys; pick another --seed")
    del records, warmup

    with Sandbox(Path(tempfile.mkdtemp(prefix="llmmeter-bench-")), keep_dir=args.keep) as box:
        cluster = box.start_postgres()
        server_dsn = cluster.dsn("postgres")
        pg_version = asyncio.run(fetchval(server_dsn, "SHOW server_version"))

        rounds = []
        for k in range(args.rounds):
            tag = f"round {k + 1}/{args.rounds}: "
            e2e = run_e2e(args, box, server_dsn, chunks, warmup_chunks, args.records, len(payloads),
                          cluster.data_dir, f"bench_e2e_{k}", profile=k == 0)  # --profile: round 1
            log(f"{tag}(a) end to end: {e2e['records_per_s']:,} records/s")
            log(f"{tag}(b) raw COPY of {len(rows)} rows in chunks of {args.chunk}")
            copy = asyncio.run(run_copy(server_dsn, rows, args.chunk, f"bench_copy_{k}"))
            log(f"{tag}(b) raw COPY: {copy['records_per_s']:,} records/s")
            for name in (f"bench_e2e_{k}", f"bench_copy_{k}"):  # each round on an empty cluster
                asyncio.run(execute(server_dsn, f"DROP DATABASE {name} WITH (FORCE)"))
            rounds.append({"e2e": e2e, "raw_copy": copy, "ratio": evaluate(e2e, copy)[0]})
        store = None if args.no_store_path else _store_path(server_dsn, rows, payloads)

    middle = sorted(rounds, key=lambda r: r["ratio"])[(len(rounds) - 1) // 2]  # the median round
    e2e, copy = middle["e2e"], middle["raw_copy"]
    ratio, goals = evaluate(e2e, copy)
    result = {
        "bench": "ingest",
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "records": args.records, "chunk": args.chunk, "streams": args.streams, "form": args.form,
        "window_s": args.window,
        "bytes_per_record": round(sum(map(len, chunks)) / args.records),
        "payload_share": round(len(payloads) / args.records, 4),
        "e2e": e2e, "raw_copy": copy, "store_write": store,
        "ratio": round(ratio, 3), "goals": goals,
        "rounds": [{"e2e_records_per_s": r["e2e"]["records_per_s"],
                    "raw_copy_records_per_s": r["raw_copy"]["records_per_s"],
                    "ratio": round(r["ratio"], 3)} for r in rounds],
        "machine": {**facts, "postgresql": pg_version},
    }
    return finish(result, args, print_report)


def _store_path(server_dsn: str, rows: list[tuple[Any, ...]],
                payloads: list[tuple[Any, ...]]) -> dict[str, Any] | None:
    """(c), informational and tied to an internal API: a failure is logged, never fails the benchmark."""
    from llmmeter_ingest.settings import IngestSettings

    group = IngestSettings().group_commit_records
    log(f"(c) Store.write of the same rows in groups of {group}")
    try:
        store = asyncio.run(run_store_path(server_dsn, rows, payloads, group))
    except Exception as exc:
        log(f"(c) skipped, Store.write failed: {type(exc).__name__}: {exc}")
        return None
    log(f"(c) Store.write: {store['records_per_s']:,} records/s")
    return store
