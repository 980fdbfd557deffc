"""The query benchmark's run: flags, data (loaded or reused), measurements, result.

Kept apart from the measurements so the order of a run and what ends up in its result are
readable in one place; bench/bench_query.py calls `main` with its description.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..db import connection, create_migrated_db, execute, fetchval, with_db
from ..harness import BenchFailure, finish, log, machine_facts, run_main
from ..sandbox import Sandbox
from .calls import measure
from .explain import explain_aggregates
from .load import compact_closed, load, storage
from .load_timescale import load_timescale, storage_timescale
from .report import evaluate, print_report
from .tail import measure_tail

DISK_BYTES_PER_RECORD = 3000


def main(description: str | None) -> None:
    """Run the benchmark with the command line's flags and exit with its status."""
    run_main(lambda: run(parse_args(description)))


def parse_args(description: str | None) -> argparse.Namespace:
    """The flags; sizes the measurements cannot work with are refused before anything starts."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000_000, help="records to load (default 10000000)")
    p.add_argument("--days", type=int, default=30, help="days of data ending now (default 30)")
    p.add_argument("--chunk", type=int, default=500_000,
                   help="queued rows per rollup materialisation (default 500000)")
    p.add_argument("--rollup-workers", type=int, default=2,
                   help="1: MATERIALIZE_SQL verbatim on one connection; N > 1: the same rollup CTEs on N "
                        "connections, one 24-hour slice of the queue each (default 2)")
    p.add_argument("--reps", type=int, default=20, help="timed calls per service query (default 20)")
    p.add_argument("--warmups", type=int, default=2, help="untimed calls before them (default 2)")
    p.add_argument("--baseline-reps", type=int, default=3,
                   help="timed runs of each full-scan SQL baseline, after one warm-up (default 3)")
    p.add_argument("--page", type=int, default=1000, help="the deep log page to time (default 1000)")
    p.add_argument("--page-size", type=int, default=50)
    p.add_argument("--tail-reps", type=int, default=10, help="live-tail round trips (default 10)")
    p.add_argument("--explain", metavar="FILE",
                   help="also profile the service's aggregate statements; EXPLAIN ANALYZE plans into FILE")
    p.add_argument("--no-tail", action="store_true", help="skip the live-tail measurement")
    p.add_argument("--seed", type=float, default=0.42, help="setseed() of the generator, -1..1")
    p.add_argument("--json", action="store_true", help="print only the JSON result line on stdout")
    p.add_argument("--check-goals", action="store_true", help="exit 2 when a goal is not met")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for debugging")
    p.add_argument("--data-dir", metavar="DIR",
                   help="load into DIR and keep it; a later run with the same DIR, --records, --days and "
                        "--seed reuses the loaded data instead of loading again")
    p.add_argument("--database-url", metavar="URL",
                   help="use this running server instead of a throwaway one: the benchmark creates a "
                        "database of its own there (bench_query, kept for later runs, with --data-dir)")
    p.add_argument("--flavor", choices=("postgres", "timescale"), default="postgres",
                   help="schema flavour; timescale needs --database-url to a server with TimescaleDB")
    args = p.parse_args()
    if args.flavor == "timescale" and not args.database_url:
        p.error("--flavor timescale needs --database-url (no embedded server has TimescaleDB)")
    if args.records < 1 or args.days < 8 or args.reps < 1 or args.warmups < 0 or args.baseline_reps < 1:
        p.error("--records, --reps, --baseline-reps must be positive, --days at least 8")
    if args.page < 2 or not 1 <= args.page_size <= 1000:
        p.error("--page >= 2, --page-size 1..1000")
    return args


def run(args: argparse.Namespace) -> int:
    """Load (or reuse) the month, measure every call through the service, report; the exit status."""
    facts = machine_facts()
    reuse = Path(args.data_dir).resolve() if args.data_dir else None
    tmp = reuse or Path(tempfile.mkdtemp(prefix="llmmeter-bench-query-"))
    kept = _loaded_before(args, tmp, reuse)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1) + timedelta(microseconds=123_457)
    with Sandbox(tmp, keep_dir=args.keep or reuse is not None, keep_data=reuse is not None) as box:
        if args.database_url:
            server_dsn = args.database_url
        else:  # wipe: a load that did not finish
            server_dsn = box.start_postgres(wipe=kept is None and reuse is not None).dsn("postgres")
        pg_version = asyncio.run(fetchval(server_dsn, "SHOW server_version"))
        dsn = with_db(server_dsn, _db_name(args))
        if kept is not None:
            end = datetime.fromisoformat(kept["end"])
            loaded = kept["load"]
            log(f"reusing the {args.records:,} records loaded in {tmp} (ending {end:%Y-%m-%d %H:%M:%S} UTC)")
            _bring_up_to_date(dsn, end, args.days, args.flavor)
            # as stored now (migrations change it)
            loaded = {**loaded, **asyncio.run(_stored(dsn, args.flavor))}
        else:
            loaded = _load(args, server_dsn, dsn, end)
            if reuse is not None:
                (tmp / "loaded.json").write_text(json.dumps(
                    {"records": args.records, "days": args.days, "seed": args.seed, "end": end.isoformat(),
                     "load": loaded}, default=str))

        try:
            result = _measure(args, box, dsn, end, loaded)
        finally:
            if args.database_url and reuse is None:
                asyncio.run(execute(server_dsn, f"DROP DATABASE IF EXISTS {_db_name(args)} WITH (FORCE)"))
    result["machine"] = {**facts, "postgresql": pg_version}
    result["goals"] = evaluate(result)
    return finish(result, args, print_report)


def _measure(args: argparse.Namespace, box: Sandbox, dsn: str, end: datetime,
             loaded: dict[str, Any]) -> dict[str, Any]:
    """Every call through the query service (and the live tail through the ingest service)."""
    qaddr = box.start_service("query", dsn)
    measured = measure(qaddr, dsn, end, args.days, args)
    profile = _profile(args, dsn, end, measured)
    tail_res = None
    if not args.no_tail:
        iaddr = box.start_service("ingest", dsn, note="live tail: ", env={
            "LLMMETER_INGEST_STORAGE_FLAVOR": args.flavor,
            # the month must survive the service's retention run at start (default 14 days)
            "LLMMETER_INGEST_RAW_RETENTION_DAYS": "400", "LLMMETER_INGEST_PAYLOAD_RETENTION_DAYS": "400",
            "LLMMETER_INGEST_MINUTE_RETENTION_DAYS": "400",
        })
        tail_res = asyncio.run(measure_tail(qaddr, iaddr, args.tail_reps, end - timedelta(seconds=1)))
    result: dict[str, Any] = {
        "bench": "query",
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "records": args.records, "days": args.days, "reps": args.reps, "warmups": args.warmups,
        "baseline_reps": args.baseline_reps, "page": args.page, "page_size": args.page_size,
        "flavor": args.flavor, "load": loaded, **measured, "tail": tail_res, "profile": profile,
    }
    return result


def _db_name(args: argparse.Namespace) -> str:
    """The benchmark's database: `bench_query` when `--data-dir` keeps it for later runs, else one
    of this run's own, so a throwaway run on a shared `--database-url` never touches a kept load."""
    return "bench_query" if args.data_dir else f"bench_query_{os.getpid()}"


def _loaded_before(args: argparse.Namespace, tmp: Path, reuse: Path | None) -> dict[str, Any] | None:
    """What a previous --data-dir run loaded into tmp (None: load now). Refuses a dir loaded with
    other flags, and a load the disk cannot hold (about 3 GB per million records)."""
    tmp.mkdir(parents=True, exist_ok=True)
    marker = tmp / "loaded.json"
    kept: dict[str, Any] | None = json.loads(marker.read_text()) if marker.exists() else None
    wanted = (args.records, args.days, args.seed)
    if kept is not None and (kept["records"], kept["days"], kept["seed"]) != wanted:
        raise BenchFailure(f"{tmp} holds {kept['records']:,} records over {kept['days']} days (seed "
                           f"{kept['seed']}); pass the same --records/--days/--seed or another --data-dir")
    need = args.records * DISK_BYTES_PER_RECORD + (2 << 30)
    free = shutil.disk_usage(tmp).free
    if kept is None and free < need:
        if reuse is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise BenchFailure(f"{tmp.parent}: {free / 2**30:.1f} GB free, about {need / 2**30:.1f} GB needed")
    return kept


def _bring_up_to_date(dsn: str, end: datetime, days: int, flavor: str) -> None:
    """A reused load meets the current code: its new migrations and, when there were any, its
    closed rows compacted again as the rollup worker leaves them (a migration may rewrite them;
    otherwise they are compacted already, and folding them again only costs minutes)."""
    from llmmeter_common.migrate import migrate

    if asyncio.run(migrate(dsn, flavor)) and flavor == "postgres":
        asyncio.run(compact_closed(dsn, end - timedelta(days=days + 1), end))


async def _stored(dsn: str, flavor: str) -> dict[str, Any]:
    async with connection(dsn) as conn:
        return await (storage_timescale(conn) if flavor == "timescale" else storage(conn))


def _load(args: argparse.Namespace, server_dsn: str, dsn: str, end: datetime) -> dict[str, Any]:
    """A fresh database with the month loaded and its rollups built; the load's figures."""
    if args.database_url:  # what a load that did not finish left
        asyncio.run(execute(server_dsn, f"DROP DATABASE IF EXISTS {_db_name(args)} WITH (FORCE)"))
    asyncio.run(create_migrated_db(server_dsn, _db_name(args), args.flavor))
    if args.flavor == "timescale":
        log(f"loading {args.records:,} records over {args.days} days ending {end:%Y-%m-%d %H:%M:%S} UTC "
            "(SQL generate_series into the usage_records hypertable; every continuous aggregate refreshed; "
            "raw chunks older than 2 days compressed)")
        loaded = asyncio.run(load_timescale(dsn, args.records, args.days, end, args.seed))
        log(f"loaded in {loaded['seconds']:.0f}s ({loaded['records_per_s']:,} records/s)")
        return loaded
    log(f"loading {args.records:,} records over {args.days} days ending {end:%Y-%m-%d %H:%M:%S} UTC "
        "(SQL generate_series into usage_records + usage_rollup_pending; rollups by MATERIALIZE_SQL "
        f"in chunks of {args.chunk:,})")
    loaded = asyncio.run(load(dsn, args.records, args.days, end, args.chunk, args.seed, args.rollup_workers))
    log(f"loaded in {loaded['seconds']:.0f}s ({loaded['records_per_s']:,} records/s)")
    return loaded


def _profile(args: argparse.Namespace, dsn: str, end: datetime, measured: dict[str, Any]) -> Any:
    """--explain: the aggregate statements' profile for the result, every plan into the file.
    Informational, so a failure is logged and never fails the benchmark."""
    profile = None
    if args.explain:
        log(f"profiling the aggregate statements (EXPLAIN ANALYZE -> {args.explain})")
        try:
            profile, plans = asyncio.run(explain_aggregates(dsn, end, args.days))
            Path(args.explain).write_text(plans + "\n" + "\n".join(measured.pop("_plans", [])))
        except Exception as exc:
            log(f"profiling failed: {type(exc).__name__}: {exc}")
    measured.pop("_plans", None)
    return profile
