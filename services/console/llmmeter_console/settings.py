"""The console's settings: one typed object, read from the environment (`LLMMETER_CONSOLE_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    """Configuration of one console process."""

    model_config = SettingsConfigDict(env_prefix="LLMMETER_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface the HTTP server binds to (loopback by default; Kubernetes sets 0.0.0.0)."""

    port: int = 8080
    """HTTP port (0 picks a free one, for tests)."""

    query_addr: str = "localhost:50052"
    """host:port of the query service."""

    alerts_addr: str = "localhost:50053"
    """host:port of the alerts service."""

    api_key: SecretStr | None = None
    """The key every browser's calls are made with (a local `make run` passes its admin key).
    Unset: each browser signs in with its own key at /login, kept in an HttpOnly cookie, so a
    team-bound key shows that team only."""

    tls_ca_file: Path | None = None
    """PEM CA bundle of the services' certificates; set, the console calls them over TLS."""

    timeout_seconds: float = Field(30.0, gt=0)
    """Deadline of each call to the services."""

    chartjs_file: Path | None = None
    """Chart.js's `chart.umd.js`, installed by `make install` from npm into `.tools/`; unset, it is
    looked for there from the working folder upwards."""
