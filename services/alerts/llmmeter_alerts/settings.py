"""The alerts service's settings: one typed object, read from the environment (`LLMMETER_ALERTS_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmmeter_alerts.targets import parse_allow
from llmmeter_common.security import SecuritySettings


class AlertsSettings(BaseSettings, SecuritySettings):
    """Configuration of one alerts service process."""

    model_config = SettingsConfigDict(env_prefix="LLMMETER_ALERTS_", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/llmmeter",
        validation_alias=AliasChoices("DATABASE_URL", "LLMMETER_ALERTS_DATABASE_URL"),
    )
    """PostgreSQL or TimescaleDB connection URL."""

    host: str = "127.0.0.1"
    """Interface the gRPC server binds to (loopback by default; Kubernetes sets 0.0.0.0)."""

    port: int = 50053
    """gRPC port (0 picks a free one, for tests)."""

    query_addr: str = "localhost:50052"
    """host:port of the query service, where rule values come from."""

    query_api_key: SecretStr | None = None
    """The key the service calls the query service with (a read or admin key for every team);
    unset: the bootstrap admin key."""

    query_tls_ca_file: Path | None = None
    """PEM CA bundle of the query service's certificate; set, the service calls it over TLS."""

    query_timeout_seconds: float = 10.0
    """Deadline of each call to the query service."""

    pool_max_size: int = 10
    """Database connections of the pool."""

    evaluate: bool = True
    """Run the evaluation and delivery loops (tests drive them by hand with a fake clock)."""

    poll_seconds: float = 1.0
    """Longest sleep of the evaluation and delivery loops (also how soon a replica notices it may lead)."""

    concurrency: int = 32
    """Rules evaluated at the same time."""

    webhook_timeout_seconds: float = 10.0
    """A webhook or Slack target must answer within this long."""

    webhook_allow_hosts: str = ""
    """Comma-separated host names, addresses or CIDR ranges that notifications may reach although
    they are loopback, private, link-local or metadata addresses (refused otherwise), e.g.
    `alertmanager.internal,10.20.0.0/16`."""

    webhook_secret_env_prefix: str = "LLMMETER_WEBHOOK_SECRET_"
    """A webhook's `secret_env` must name an environment variable starting with this (or one of
    `webhook_secret_envs`), so a rule cannot sign with another secret of the service
    (DATABASE_URL, keys). Empty: no variable by prefix."""

    webhook_secret_envs: str = ""
    """Comma-separated names of further environment variables a webhook's `secret_env` may name."""

    webhook_resolve_timeout_seconds: float = 5.0
    """How long a notification host name may take to resolve (when a rule is saved: a name not
    resolved by then is checked at send time only)."""

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: str) -> str:
        parse_allow(value)  # a malformed entry stops the service at start, naming it
        return value

    webhook_max_attempts: int = 5
    """Delivery attempts of one notification before giving up."""

    webhook_initial_backoff_seconds: float = 5.0
    """Wait after the first failed attempt; doubles after each, up to the maximum."""

    webhook_max_backoff_seconds: float = 300.0
    """Longest wait between two attempts."""

    history_retention_days: float = 90.0
    """Alert events and finished deliveries older than this are deleted (by the leader, hourly);
    pending deliveries are kept."""

    shutdown_grace_seconds: float = 5.0
    """On SIGTERM, in-flight calls get this long to finish."""

    health_probe_interval_seconds: float = 2.0
    """How often the database is probed (`SELECT 1`); health is NOT_SERVING while it fails."""

    health_probe_timeout_seconds: float = 1.0
    """A probe not answered within this long counts as the database being unreachable."""

    otlp_endpoint: str = Field("", validation_alias=AliasChoices(
        "otlp_endpoint", "LLMMETER_ALERTS_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    """OTLP/gRPC collector for the service's own traces (RPC spans, calls to the query service)."""

    metrics_port: int = 9466
    """HTTP port serving Prometheus metrics at `/metrics` (0 = not served)."""
