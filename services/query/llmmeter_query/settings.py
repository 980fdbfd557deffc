"""The query service's settings: one typed object, read from the environment (`LLMMETER_QUERY_*`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmmeter_common.security import SecuritySettings


class QuerySettings(BaseSettings, SecuritySettings):
    """Configuration of one query service process."""

    model_config = SettingsConfigDict(env_prefix="LLMMETER_QUERY_", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/llmmeter",
        validation_alias=AliasChoices("DATABASE_URL", "LLMMETER_QUERY_DATABASE_URL"),
    )
    """PostgreSQL or TimescaleDB connection URL."""

    host: str = "127.0.0.1"
    """Interface the gRPC server binds to (loopback by default; Kubernetes sets 0.0.0.0)."""

    port: int = 50052
    """gRPC port (0 picks a free one, for tests)."""

    pool_max_size: int = 10
    """Database connections of the pool."""

    keep_heap_bytes: int = 256 << 20
    """Freed blocks up to this size stay in the process heap instead of going back to the kernel
    (glibc mallopt), so big per-call buffers are reused rather than page-faulted in again;
    0 leaves the C library's defaults."""

    read_lanes: int = Field(2, ge=1)
    """Connections one long-window aggregation may read histograms on at once (sharing one
    snapshot; extra ones only when the pool has them free). 1 reads on one connection; more
    than the database server's cores gains nothing."""

    exact_window_seconds: float = 3600.0
    """Windows up to this long are answered from raw rows, with exact percentiles."""

    tail_queue_size: int = 10_000
    """Rows a live-tail watcher may fall behind before it is disconnected."""

    statement_timeout_seconds: float = 30.0
    """A query running longer than this fails (DEADLINE_EXCEEDED for the caller)."""

    shutdown_grace_seconds: float = 10.0
    """On SIGTERM, in-flight calls get this long to finish."""

    otlp_endpoint: str = Field("", validation_alias=AliasChoices(
        "otlp_endpoint", "LLMMETER_QUERY_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    """OTLP/gRPC collector for the service's own traces (RPC and database spans); empty = none."""

    metrics_port: int = 9465
    """HTTP port serving Prometheus metrics at `/metrics` (0 = not served)."""

    health_probe_interval_seconds: float = 2.0
    """How often the database is probed (`SELECT 1`); health is NOT_SERVING while it fails."""

    health_probe_timeout_seconds: float = 1.0
    """A probe not answered within this long counts as the database being unreachable."""
