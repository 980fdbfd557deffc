"""The alerts service's settings: one typed object, read from the environment (`LLMMETER_ALERTS_*`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AlertsSettings(BaseSettings):
    """Configuration of one alerts service process."""

    model_config = SettingsConfigDict(env_prefix="LLMMETER_ALERTS_", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/llmmeter",
        validation_alias=AliasChoices("DATABASE_URL", "LLMMETER_ALERTS_DATABASE_URL"),
    )
    """PostgreSQL or TimescaleDB connection URL."""

    host: str = "0.0.0.0"
    """Interface the gRPC server binds to."""

    port: int = 50053
    """gRPC port (0 picks a free one, for tests)."""
