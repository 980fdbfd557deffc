"""The query service's settings: one typed object, read from the environment (`LLMMETER_QUERY_*`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class QuerySettings(BaseSettings):
    """Configuration of one query service process."""

    model_config = SettingsConfigDict(env_prefix="LLMMETER_QUERY_", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/llmmeter",
        validation_alias=AliasChoices("DATABASE_URL", "LLMMETER_QUERY_DATABASE_URL"),
    )
    """PostgreSQL or TimescaleDB connection URL."""

    host: str = "0.0.0.0"
    """Interface the gRPC server binds to."""

    port: int = 50052
    """gRPC port (0 picks a free one, for tests)."""
