"""How every llmmeter client dials a service: plaintext or TLS (optionally mutual), with its API key.

The key travels as call metadata `authorization: Bearer <key>` added by one channel
interceptor, so every call (unary or streamed, from any client or stub on the
channel) carries it, and the services' own clients (the alerts service calling
the query service) dial the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from llmmeter.errors import ConfigError


@dataclass(frozen=True)
class TlsConfig:
    """TLS towards a service: the CA that signed its certificate (None: the system's roots), and a
    client certificate for mutual TLS."""

    ca_file: Path | None = None
    """PEM CA bundle trusted for the server's certificate."""

    cert_file: Path | None = None
    """PEM client certificate (mutual TLS), with `key_file`."""

    key_file: Path | None = None
    """PEM private key of `cert_file`."""

    server_name: str | None = None
    """The name to check the server's certificate against, when it differs from the address."""

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials; ConfigError naming the file that cannot be read."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("a client certificate needs both cert_file and key_file")

        def read(path: Path | None, name: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(read(self.ca_file, "ca_file"), read(self.key_file, "key_file"),
                                            read(self.cert_file, "cert_file"))


class _Metadata:
    """Adds fixed metadata to the calls it intercepts (a channel sorts interceptors by their one
    kind, so there is one subclass per kind of call)."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = tuple(pairs)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *self._pairs))

    async def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryUnary(_Metadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _UnaryStream(_Metadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _StreamUnary(_Metadata, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


class _StreamStream(_Metadata, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


def auth_interceptors(api_key: str | None) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that make a channel send `api_key` (none without a key)."""
    if not api_key:
        return []
    pairs = [("authorization", f"Bearer {api_key}")]
    return [kind(pairs) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def open_channel(address: str, api_key: str | None = None, tls: TlsConfig | None = None,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to `address` sending `api_key` with every call; TLS when `tls` is given."""
    chain = [*auth_interceptors(api_key), *interceptors]
    opts = list(options)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=chain)
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, tls.credentials(), options=opts, interceptors=chain)
