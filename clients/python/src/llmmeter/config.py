"""Typed configuration of the llmmeter client.

One dataclass holds everything a client needs to reach the three services, so
the CLI, scripts and tests configure a client the same way: defaults for a
local `make run`, overridable from the environment (for containers and CI) and
then from explicit arguments (for the CLI flags).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmmeter.channels import TlsConfig
from llmmeter.errors import ConfigError

DEFAULT_INGEST_ADDR = "localhost:50051"
DEFAULT_QUERY_ADDR = "localhost:50052"
DEFAULT_ALERTS_ADDR = "localhost:50053"

ENV_INGEST_ADDR = "LLMMETER_INGEST_ADDR"
ENV_QUERY_ADDR = "LLMMETER_QUERY_ADDR"
ENV_ALERTS_ADDR = "LLMMETER_ALERTS_ADDR"
ENV_TIMEOUT = "LLMMETER_TIMEOUT"
ENV_API_KEY = "LLMMETER_API_KEY"
ENV_API_KEY_FILE = "LLMMETER_API_KEY_FILE"
ENV_TLS = "LLMMETER_TLS"
ENV_TLS_CA_FILE = "LLMMETER_TLS_CA_FILE"
ENV_TLS_CERT_FILE = "LLMMETER_TLS_CERT_FILE"
ENV_TLS_KEY_FILE = "LLMMETER_TLS_KEY_FILE"
ENV_TLS_SERVER_NAME = "LLMMETER_TLS_SERVER_NAME"

#: Where `make run` writes its local admin key, relative to the project root; clients started
#: anywhere inside the project find it without being told.
LOCAL_KEY_FILE = Path(".llmmeter") / "admin.key"


def find_local_key(start: Path | None = None) -> str | None:
    """The key `make run` left in `.llmmeter/admin.key` of this folder or a parent, if any."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / LOCAL_KEY_FILE
        if candidate.is_file():
            try:
                return candidate.read_text().strip() or None
            except OSError:
                return None
    return None


def read_key_file(path: str) -> str:
    """The key kept in a file (a mounted Secret); ConfigError naming the file when unreadable."""
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{ENV_API_KEY_FILE}: cannot read {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"{ENV_API_KEY_FILE}: {path} is empty")
    return key


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries calls the server asks it to try again later.

    Only RESOURCE_EXHAUSTED (the server's queue is full) and UNAVAILABLE (the
    server or its database is down) are retried. Re-sending records is safe
    because the server deduplicates on (`request_id`, `start_time`).
    """

    max_attempts: int = 5
    """Total number of attempts, including the first one. 1 disables retries."""

    initial_backoff: float = 0.2
    """Seconds to wait before the first retry."""

    max_backoff: float = 5.0
    """Upper bound, in seconds, of the wait between two attempts."""

    multiplier: float = 2.0
    """Factor by which the wait grows after each failed attempt."""

    jitter: float = 0.5
    """Fraction of each wait that is randomised (0 = none, 1 = full jitter), so
    that many clients rejected at once do not all come back at once."""

    def __post_init__(self) -> None:
        """Rejects policies that would never try or never stop waiting."""
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ConfigError("backoff must satisfy 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ConfigError(f"multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter must be between 0 and 1, got {self.jitter}")

    def backoff(self, attempt: int) -> float:
        """Returns the un-jittered wait in seconds after failed attempt number `attempt` (from 1)."""
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))


@dataclass(frozen=True)
class ClientConfig:
    """Where the llmmeter services are and how to call them.

    Build it with :meth:`from_env` to honour the `LLMMETER_*` environment
    variables, then :func:`dataclasses.replace` to apply explicit overrides.
    """

    ingest_addr: str = DEFAULT_INGEST_ADDR
    """`host:port` of the ingest service. Environment: `LLMMETER_INGEST_ADDR`."""

    query_addr: str = DEFAULT_QUERY_ADDR
    """`host:port` of the query service. Environment: `LLMMETER_QUERY_ADDR`."""

    alerts_addr: str = DEFAULT_ALERTS_ADDR
    """`host:port` of the alerts service. Environment: `LLMMETER_ALERTS_ADDR`."""

    timeout: float = 30.0
    """Deadline in seconds of each RPC attempt (a streamed window counts as one
    RPC). Environment: `LLMMETER_TIMEOUT`."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Retries of RESOURCE_EXHAUSTED and UNAVAILABLE failures."""

    api_key: str | None = field(default=None, repr=False)
    """The API key sent with every call (`authorization: Bearer <key>`). Environment:
    `LLMMETER_API_KEY`, else the file named by `LLMMETER_API_KEY_FILE`, else the local key
    `make run` wrote (`.llmmeter/admin.key` in this folder or a parent). Never printed."""

    tls: TlsConfig | None = None
    """TLS towards the services; None for plaintext. Environment: `LLMMETER_TLS=true`, or any of
    `LLMMETER_TLS_CA_FILE`, `LLMMETER_TLS_CERT_FILE`/`_KEY_FILE`, `LLMMETER_TLS_SERVER_NAME`."""

    stream_window_records: int = 20_000
    """Records sent per StreamRecords call when streaming. A long stream is cut
    into calls of about this many records so that a failed call can be re-sent
    from memory without holding the whole input."""

    stream_as_columns: bool = True
    """Whether streamed batches travel as `UsageColumns` (the bulk form, about a third less of the
    ingest service's CPU per record to convert; a batch with a record columns cannot carry goes as records) or
    as record messages."""

    def __post_init__(self) -> None:
        """Rejects values that cannot work, so the error names the setting instead of a failed call."""
        for name in ("ingest_addr", "query_addr", "alerts_addr"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name} must not be empty")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout}")
        if self.stream_window_records < 1:
            raise ConfigError(f"stream_window_records must be at least 1, got {self.stream_window_records}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientConfig:
        """Builds a config from the `LLMMETER_*` variables of `env` (default: the process environment).

        Unset or empty variables keep the defaults, so a bare environment gives
        the addresses of a local `make run`.
        """
        source = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            value = source.get(name, "").strip()
            return value or default

        timeout_text = get(ENV_TIMEOUT, "")
        timeout = cls.timeout
        if timeout_text:
            try:
                timeout = float(timeout_text)
            except ValueError:
                raise ConfigError(
                    f"{ENV_TIMEOUT} must be a number of seconds, got {timeout_text!r}"
                ) from None
        key_file = get(ENV_API_KEY_FILE, "")
        api_key = get(ENV_API_KEY, "") or (read_key_file(key_file) if key_file else find_local_key())
        ca, cert, key, name = (get(n, "") for n in (ENV_TLS_CA_FILE, ENV_TLS_CERT_FILE, ENV_TLS_KEY_FILE,
                                                     ENV_TLS_SERVER_NAME))
        tls = None
        if get(ENV_TLS, "").lower() in ("1", "true", "yes") or ca or cert or key or name:
            tls = TlsConfig(Path(ca) if ca else None, Path(cert) if cert else None,
                            Path(key) if key else None, name or None)
        return cls(
            api_key=api_key,
            tls=tls,
            ingest_addr=get(ENV_INGEST_ADDR, DEFAULT_INGEST_ADDR),
            query_addr=get(ENV_QUERY_ADDR, DEFAULT_QUERY_ADDR),
            alerts_addr=get(ENV_ALERTS_ADDR, DEFAULT_ALERTS_ADDR),
            timeout=timeout,
        )
