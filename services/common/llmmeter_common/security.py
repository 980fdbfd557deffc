"""The security settings every service shares: auth on or off, TLS files, the bootstrap admin key.

Each service's settings class inherits these fields, so they are documented once
and read from the same environment names in every service (no per-service
prefix: one Secret or ConfigMap entry configures all three).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import AliasChoices, BaseModel, Field, SecretStr


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, f"LLMMETER_{name.upper()}")


class SecuritySettings(BaseModel):
    """Fields mixed into every service's settings (environment names `LLMMETER_<FIELD>`)."""

    auth_disabled: bool = Field(False, validation_alias=_env("auth_disabled"))
    """Serve every call without a key, as an unscoped admin. Only for a closed network or a
    developer's machine: anyone who can reach the port reads and writes everything."""

    auth_cache_seconds: float = Field(5.0, gt=0, le=300, validation_alias=_env("auth_cache_seconds"))
    """How long a key lookup is cached; a revocation takes effect on every replica within this."""

    bootstrap_admin_key: SecretStr | None = Field(None, validation_alias=_env("bootstrap_admin_key"))
    """An admin key (from `llmmeter keys generate`, kept in a Secret) stored at start unless it is
    already known, so a new deployment has a first admin; revoking it later is permanent."""

    tls_cert_file: Path | None = Field(None, validation_alias=_env("tls_cert_file"))
    """PEM certificate chain of the server; with `tls_key_file`, the gRPC port serves TLS only."""

    tls_key_file: Path | None = Field(None, validation_alias=_env("tls_key_file"))
    """PEM private key of `tls_cert_file`."""

    tls_client_ca_file: Path | None = Field(None, validation_alias=_env("tls_client_ca_file"))
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for the gRPC port, None for plaintext; ValueError naming the setting when
        only half of a pair is given."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("LLMMETER_TLS_CERT_FILE and LLMMETER_TLS_KEY_FILE go together")
        if self.tls_cert_file is None or self.tls_key_file is None:
            if self.tls_client_ca_file is not None:
                raise ValueError("LLMMETER_TLS_CLIENT_CA_FILE needs LLMMETER_TLS_CERT_FILE and _KEY_FILE")
            return None
        ca = self.tls_client_ca_file.read_bytes() if self.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.tls_key_file.read_bytes(), self.tls_cert_file.read_bytes())],
            root_certificates=ca, require_client_auth=ca is not None)
