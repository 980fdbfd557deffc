"""What the benchmarks share: machine facts, log lines, and service processes they start and stop.

Both benchmarks start real services as separate processes (so client and server do not share a
Python interpreter) and must never leave one behind, even when the benchmark itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class BenchFailure(RuntimeError):
    """The benchmark could not produce a valid measurement."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gb = round(int(first.split()[1]) / 1024 / 1024, 1)
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    import asyncpg
    import grpc
    from google.protobuf import __version__ as pb_version

    return {
        "cores": os.cpu_count(), "usable_cores": usable, "cpu": cpu_model or platform.processor(),
        "mem_gb": mem_gb, "python": platform.python_version(), "grpcio": grpc.__version__,
        "asyncpg": asyncpg.__version__, "protobuf": pb_version, "platform": platform.platform(),
    }


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphan service if the bench is killed


def start_module(module: str, env_extra: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", **env_extra})
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def wait_serving(proc: subprocess.Popen[bytes], addr: str, log_path: Path, timeout: float = 90) -> None:
    """Poll grpc.health.v1 until the service reports SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise BenchFailure(f"service exited with {proc.returncode}:\n{tail(log_path)}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise BenchFailure(f"service not SERVING after {timeout}s:\n{tail(log_path)}")
            time.sleep(0.2)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_main(main: Callable[[], int]) -> None:
    """Exit with main()'s status; a BenchFailure is one line and status 1, Ctrl-C status 130
    (main cleans up what it started in its own finally blocks)."""
    try:
        sys.exit(main())
    except BenchFailure as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr, flush=True)
        sys.exit(130)
