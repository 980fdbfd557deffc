"""(a) The ingest write path end to end: client process -> gRPC service -> committed and rolled up.

This is the figure the ingest goals are about. The clock runs from the first send until every
stream was answered and the service's rollup worker has emptied its queue, and the run only
counts once the database holds every record once; a warm-up pass (then truncated) keeps
start-up costs out of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..db import create_migrated_db, execute
from ..harness import BenchFailure, log
from ..processes import tail
from ..sandbox import Sandbox
from .client import client_process
from .cpu import cpu_snapshot, postmaster_pid
from .database import truncate_all, verify_e2e, wait_rollups_drained


def run_e2e(
    args: argparse.Namespace, box: Sandbox, server_dsn: str, chunks: list[bytes], warmup_chunks: list[bytes],
    n: int, n_payloads: int, pg_data: Path, db_name: str = "bench_e2e", profile: bool = True,
) -> dict[str, Any]:
    """Start the service on a new database `db_name`, send the warm-up and then the measured
    chunks, verify, stop the service; with `profile` (and --profile), py-spy records the pass."""
    dsn = asyncio.run(create_migrated_db(server_dsn, db_name))
    addr = box.start_service("ingest", dsn, note="(a) ")
    service = box.procs["ingest"]
    ctx = mp.get_context("spawn")

    def one_pass(payload: list[bytes], label: str) -> tuple[dict[str, Any], dict[str, float]]:
        """Send `payload` from a fresh client process and wait for the rollups; its timings and CPU."""
        path = box.tmp / f"chunks-{label}.pickle"
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
        client = ctx.Process(target=client_process, args=(addr, str(path), args.streams, ready, go, results),
                             name=f"bench-client-{label}", daemon=True)
        client.start()
        box.procs["client"] = client
        deadline = time.monotonic() + 120
        while not ready.wait(0.5):
            if not client.is_alive() or time.monotonic() > deadline:
                raise BenchFailure(f"client process did not get ready (exit code {client.exitcode})")
        pg_pid = postmaster_pid(pg_data)
        cpu0 = cpu_snapshot(service.pid, client.pid, pg_pid)
        go.set()
        while True:
            try:
                status, result = results.get(timeout=1)
                break
            except Exception:  # queue.Empty
                if service.poll() is not None:
                    raise BenchFailure(
                        f"ingest service died during the run:\n{tail(box.tmp / 'ingest.log')}") from None
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
        box.procs.pop("client", None)
        path.unlink(missing_ok=True)
        if status != "ok":
            raise BenchFailure(f"client failed: {result}\nservice log:\n{tail(box.tmp / 'ingest.log')}")
        return result, {k: cpu1[k] - cpu0[k] for k in cpu0}

    if warmup_chunks:
        log(f"(a) warm-up: {sum(1 for _ in warmup_chunks)} message(s), then TRUNCATE")
        one_pass(warmup_chunks, "warmup")
        asyncio.run(truncate_all(dsn))
    asyncio.run(execute(server_dsn, "CHECKPOINT"))

    profile = profile and bool(args.profile)
    if profile:
        _start_profiler(args, box, service.pid)
    log(f"(a) sending {n} records in {len(chunks)} messages over {args.streams} stream(s)")
    result, cpu = one_pass(chunks, "measured")
    if profile:
        _stop_profiler(args, box)

    if result["accepted"] != n or result["duplicates"] or result["rejections"]:
        raise BenchFailure(
            f"stream responses: accepted {result['accepted']} of {n}, duplicates {result['duplicates']}, "
            f"rejections {result['rejections']} (first: {result['first_rejection']!r})"
        )
    counts = asyncio.run(verify_e2e(dsn, n, n_payloads))
    log(f"(a) verified: {counts}")
    box.stop_service("ingest")
    elapsed = result["elapsed"]
    return {
        "seconds": round(elapsed, 3),
        "records_per_s": round(n / elapsed),
        "acknowledged_records_per_s": round(n / result["ack_elapsed"]),
        "rollup_lag_s": round(result["rollup_lag"], 3),
        "cpu_seconds": {k: round(v, 2) for k, v in {**cpu, "client": result["client_cpu"]}.items()},
        "verified": counts,
    }


def _start_profiler(args: argparse.Namespace, box: Sandbox, pid: int) -> None:
    """--profile: py-spy records the service during the measured pass (the sandbox kills it on failure)."""
    log("(a) profiling the service with py-spy while the run goes")
    box.procs["profiler"] = subprocess.Popen(
        [shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record",
         "--pid", str(pid), "--rate", "200", "--format", args.profile_format,
         "--output", args.profile, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)


def _stop_profiler(args: argparse.Namespace, box: Sandbox) -> None:
    """SIGINT makes py-spy write its file; wait for it."""
    prof = box.procs.pop("profiler")
    prof.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        prof.wait(60)
    log(f"(a) profile written to {args.profile}")
