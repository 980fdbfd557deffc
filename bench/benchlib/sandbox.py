"""Everything one benchmark run starts, torn down on the way out, whatever the way out is.

A run starts a throwaway PostgreSQL server, services and helper processes in a temp dir; a
failure, Ctrl-C or SIGTERM halfway must still stop all of them and remove the dir (or keep it
when asked), in the right order: processes before the server they use, the server before its
files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .harness import log
from .processes import start_module, stop_process, tail, wait_serving

if TYPE_CHECKING:
    from llmmeter_common.pgcluster import LocalCluster

# Set for a service wherever a benchmark starts it (the benchmarks use a plain PostgreSQL server).
_SERVICE_ENV = {"ingest": {"LLMMETER_INGEST_STORAGE_FLAVOR": "postgres"}}


class Sandbox:
    """A temp dir with a PostgreSQL server and processes in it, all stopped on exit.

    `procs` maps a name to what was started under it: services (from `start_service`, stopped
    with SIGTERM) or helpers a benchmark adds itself (killed). `keep_dir` keeps the dir,
    `keep_data` stops the server instead of destroying it, so a later run can reuse its data.
    """

    def __init__(self, tmp: Path, keep_dir: bool = False, keep_data: bool = False) -> None:
        self.tmp = tmp
        self.keep_dir = keep_dir
        self.keep_data = keep_data
        self.cluster: LocalCluster | None = None
        self.procs: dict[str, Any] = {}
        self._services: set[str] = set()

    def __enter__(self) -> Sandbox:
        """The services it starts require keys: one admin key per run, stored by the services at start
        (`LLMMETER_BOOTSTRAP_ADMIN_KEY`) and sent by every client of the run (`LLMMETER_API_KEY`),
        helper processes included (they inherit the environment)."""
        from llmmeter.keyformat import generate

        key = generate().token
        os.environ["LLMMETER_BOOTSTRAP_ADMIN_KEY"] = os.environ["LLMMETER_API_KEY"] = key
        return self

    def start_postgres(self, wipe: bool = False) -> LocalCluster:
        """Start the server on a free loopback port (data in tmp/pgdata, created unless there;
        `wipe` first removes a data dir left by a run that did not finish)."""
        from llmmeter_common.pgcluster import LocalCluster, free_port

        self.cluster = cluster = LocalCluster(self.tmp / "pgdata", free_port())
        log(f"starting PostgreSQL in {self.tmp} on port {cluster.port}")
        if wipe:
            shutil.rmtree(self.tmp / "pgdata", ignore_errors=True)
        cluster.init()
        cluster.start()
        return cluster

    def start_service(self, name: str, dsn: str, env: dict[str, str] | None = None, note: str = "") -> str:
        """Run `python -m llmmeter_<name>` on a free loopback port against `dsn`, logging into
        tmp/<name>.log; registered before it is waited for, so it is stopped even if it never
        comes up. Returns its address once it is SERVING."""
        from llmmeter_common.pgcluster import free_port

        port = free_port()
        addr = f"127.0.0.1:{port}"
        log(f"{note}starting the {name} service on {addr}")
        prefix = f"LLMMETER_{name.upper()}"
        log_path = self.tmp / f"{name}.log"
        self.procs[name] = start_module(f"llmmeter_{name}", {
            "DATABASE_URL": dsn, f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port),
            **_SERVICE_ENV.get(name, {}), **(env or {}),
        }, log_path)
        self._services.add(name)
        wait_serving(self.procs[name], addr, log_path)
        return addr

    def stop_service(self, name: str) -> None:
        """Stop a service before the run ends (its log is then no longer shown on failure)."""
        stop_process(self.procs.pop(name, None))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Helpers killed, services stopped, then the server, then the dir; on failure the services'
        log tails first, as they explain most failures."""
        if exc_type is not None:
            for name in [n for n in self.procs if n in self._services]:
                log(f"{name} service log tail:\n" + tail(self.tmp / f"{name}.log"))
        for name, proc in list(self.procs.items()):
            if name not in self._services:
                with contextlib.suppress(Exception):
                    proc.kill()
        for name, proc in list(self.procs.items()):
            if name in self._services:
                stop_process(proc)
        if self.cluster is not None and self.keep_data:
            with contextlib.suppress(Exception):
                self.cluster.stop()
            log(f"kept the loaded data in {self.tmp} for the next --data-dir run")
        elif self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.destroy()
        if self.keep_dir:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
