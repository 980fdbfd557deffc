"""Service processes a benchmark starts, waits for and stops, and the log they leave.

The services run as separate processes so that client and server do not share a Python
interpreter, the way they run in production; none may outlive the benchmark, even when the
benchmark itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .harness import BenchFailure


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphan service if the bench is killed


def start_module(module: str, env_extra: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m module` with its output in log_path, terminated by the kernel if the bench dies."""
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", **env_extra})
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def wait_serving(proc: subprocess.Popen[bytes], addr: str, log_path: Path, timeout: float = 90) -> None:
    """Poll grpc.health.v1 until the service reports SERVING, so no start-up time is measured;
    a service that exits or never gets there fails the benchmark with its log."""
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
    """SIGTERM first so the service shuts down as in production; kill it if it does not."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def tail(path: Path, lines: int = 30) -> str:
    """The end of a service log, what explains a failure without flooding the terminal."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
