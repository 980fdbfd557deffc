"""The ingest service's settings: one typed object, read from the environment.

Every knob an operator may turn lives here with its default and its reason,
so the README, the Kubernetes ConfigMap and the code cannot disagree. Names are
`LLMMETER_INGEST_<FIELD>`, except the database URL, which all services share
as `DATABASE_URL`.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmmeter_common.security import SecuritySettings


class IngestSettings(BaseSettings, SecuritySettings):
    """Configuration of one ingest service process."""

    model_config = SettingsConfigDict(env_prefix="LLMMETER_INGEST_", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/llmmeter",
        validation_alias=AliasChoices("DATABASE_URL", "LLMMETER_INGEST_DATABASE_URL"),
    )
    """PostgreSQL or TimescaleDB connection URL."""

    host: str = "127.0.0.1"
    """Interface the gRPC server binds to (loopback by default; Kubernetes sets 0.0.0.0)."""

    port: int = 50051
    """gRPC port of IngestService (0 picks a free one, for tests)."""

    max_batch_records: int = 10_000
    """Most records one WriteRecords call or one stream message may carry."""

    queue_max_records: int = 200_000
    """Records validated but not yet committed, beyond which calls get RESOURCE_EXHAUSTED."""

    stream_queue_wait_seconds: float = 10.0
    """How long a stream waits for queue space before RESOURCE_EXHAUSTED (streams get backpressure)."""

    stream_inflight_chunks: int = 8
    """Chunks of one stream being written while the next ones are read (the queue still bounds
    them all; 8 beat 4 in four alternating `make bench-ingest` runs, medians 41-48% of COPY
    against 36-42%, together with 3 writers)."""

    writers: int = 3
    """Concurrent write transactions (each on its own connection; see `stream_inflight_chunks`)."""

    group_commit_records: int = 20_000
    """Most records coalesced from queued calls into one transaction."""

    pool_max_size: int = 8
    """Database connections of the pool."""

    db_command_timeout_seconds: float = 60.0
    """A database statement running longer than this fails the batch (UNAVAILABLE)."""

    rollup_chunk_records: int = 200_000
    """Most queued rows the rollup worker adds to the rollups in one transaction."""

    rollup_compact_over: int = 4096
    """Histogram arrays of a rollup row longer than this have their repeated keys folded together
    after a chunk (upserts append; about 2,600 distinct keys cover latencies up to a day)."""

    rollup_idle_seconds: float = 1.0
    """Pause of the rollup worker once it has caught up (the rollups' usual lag)."""

    raw_retention_days: int = 14
    """Raw records are kept this long; older records are refused."""

    payload_retention_days: int = 14
    """Request and response bodies are kept this long."""

    minute_retention_days: int = 16
    """The minute rollup is kept this long: about as long as raw rows, which answer what it does
    not keep (rollups.ROLLUPS). Two days past raw, so that on TimescaleDB the hour level's
    refresh window (15 days) still finds the minutes it re-reads."""

    rollup_retention_days: int = 400
    """Hour and day rollups are kept this long."""

    retention_interval_seconds: float = 3600.0
    """How often expired partitions are dropped."""

    prices_refresh_seconds: float = 5.0
    """How often the operator's price overrides (PricesService) are re-read: a change prices records
    ingested from then on, within this time on every replica (one statement per refresh)."""

    storage_check_interval_seconds: float = 30.0
    """How often the storage's background work is checked (metrics, log, health name `storage`)."""

    storage_job_stale_seconds: float = 3600.0
    """TimescaleDB: a scheduled job whose next start is this far in the past is reported."""

    rollup_pending_max_age_seconds: float = 600.0
    """PostgreSQL: the rollup queue's oldest row waiting longer than this is reported."""

    max_future_seconds: float = 300.0
    """Clock skew tolerated: records ending further in the future are refused."""

    max_payload_bytes: int = 1_048_576
    """Largest request+response payload stored with a record."""

    redact_client_ip: bool = True
    """Store client IPs as their /24 (IPv4) or /48 (IPv6) network."""

    migrate_on_start: bool = True
    """Apply pending schema migrations at start."""

    storage_flavor: str = "auto"
    """`auto` (TimescaleDB when available), `postgres` or `timescale`."""

    shutdown_grace_seconds: float = 15.0
    """On SIGTERM, in-flight calls get this long to finish."""

    otlp_receiver: bool = True
    """Serve the OTLP trace receiver (TraceService/Export) on the gRPC port: GenAI spans become records."""

    otlp_http_port: int = 4318
    """Port of the OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf or JSON) on `host`, with the
    same API keys as the gRPC port (0 = not served; needs `otlp_receiver`)."""

    otlp_endpoint: str = Field("", validation_alias=AliasChoices(
        "otlp_endpoint", "LLMMETER_INGEST_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    """OTLP/gRPC collector (`http://host:4317` plaintext, `https://` TLS), also read from the standard
    `OTEL_EXPORTER_OTLP_ENDPOINT`; empty = export nothing. When set, every stored record is
    exported as a GenAI span plus the GenAI histograms."""

    otlp_export_queue_records: int = 100_000
    """Stored records waiting to be exported; beyond this they are dropped (and counted), never
    slowing ingest."""

    otlp_metrics_interval_seconds: float = 60.0
    """How often the GenAI histograms are exported."""

    metrics_port: int = 9464
    """HTTP port serving Prometheus metrics at `/metrics` (0 = not served)."""

    health_probe_interval_seconds: float = 2.0
    """How often the database is probed (`SELECT 1`); health is NOT_SERVING while it fails."""

    health_probe_timeout_seconds: float = 1.0
    """A probe not answered within this long counts as the database being unreachable."""
