"""The OTLP/HTTP trace receiver: `POST /v1/traces` on its own port (4318 by convention).

For exporters that speak OTLP over HTTP (LiteLLM's `otel` callback by default,
`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` or `http/json`, browsers, Collectors
configured so). The body is an `ExportTraceServiceRequest`, binary protobuf
(`application/x-protobuf`) or OTLP/JSON (`application/json`: lowerCamelCase
names, hex trace and span ids); gzip bodies are accepted. The export itself is
`otlp_servicer.export`, exactly what the gRPC receiver runs.

Answers follow the OTLP/HTTP specification: 200 with an
`ExportTraceServiceResponse` (with `partial_success` for refused spans) in the
request's encoding; a `google.rpc.Status` body otherwise: 400 for a body that
does not decode, 401 without a valid API key (`authorization: Bearer <key>`,
the same keys and access policy as the gRPC port: the ingest role), 403 for a
key whose role may not write, 415 for another content type, 413 for a body
over 64 MiB, 429 when the ingest queue is full and 503 while the database is
unreachable, both with `Retry-After`.

Served by aiohttp in the service's own event loop: nothing here blocks it.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from llmmeter_common.auth.access import authorize, bearer_token
from llmmeter_common.auth.context import set_principal
from llmmeter_common.auth.keys import Principal
from llmmeter_common.auth.keystore import KeyStore
from llmmeter_common.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable
from llmmeter_common.metrics import ServiceMetrics
from llmmeter_common.security import SecuritySettings
from llmmeter_common.serving import MAX_MESSAGE_BYTES
from llmmeter_ingest.ingestor import Ingestor
from llmmeter_ingest.otlp_servicer import EXPORT_METHOD, RejectionLog, export

log = logging.getLogger(__name__)

PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RETRY_AFTER_SECONDS = 2


class BadBody(Exception):
    """The body is not an ExportTraceServiceRequest in the declared encoding."""


def _hex_to_b64(value: Any, name: str) -> Any:
    if not isinstance(value, str) or value == "":
        return value
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise BadBody(f"{name} {value[:40]!r} is not hex (OTLP/JSON ids are hex strings)") from exc
    return base64.b64encode(raw).decode()


def _ids_to_b64(body: Any) -> None:
    """OTLP/JSON carries trace and span ids as hex, where the protobuf JSON mapping expects base64."""
    if not isinstance(body, dict):
        raise BadBody("the body is not a JSON object")
    for rs in body.get("resourceSpans") or body.get("resource_spans") or ():
        for ss in (rs or {}).get("scopeSpans") or (rs or {}).get("scope_spans") or ():
            for span in (ss or {}).get("spans") or ():
                if not isinstance(span, dict):
                    continue
                for key in ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"):
                    if key in span:
                        span[key] = _hex_to_b64(span[key], key)
                for link in span.get("links") or ():
                    if isinstance(link, dict):
                        for key in ("traceId", "trace_id", "spanId", "span_id"):
                            if key in link:
                                link[key] = _hex_to_b64(link[key], key)


def decode(body: bytes, content_type: str) -> trace_service_pb2.ExportTraceServiceRequest:
    """The export request of a body in `content_type` (`BadBody` when it does not decode)."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise BadBody(f"the body is not a binary ExportTraceServiceRequest: {exc}") from exc
        return request
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBody(f"the body is not JSON: {exc}") from exc
    _ids_to_b64(parsed)
    try:
        json_format.ParseDict(parsed, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise BadBody(f"the body is not an OTLP/JSON ExportTraceServiceRequest: {exc}") from exc
    return request


def _encode(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


def ssl_context(settings: SecuritySettings) -> ssl.SSLContext | None:
    """The service's TLS certificate (and client CA for mutual TLS) for the HTTP port, as the gRPC
    port uses them; None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:
        ctx.load_verify_locations(settings.tls_client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class OtlpHttpReceiver:
    """`POST /v1/traces` on an aiohttp server in the running event loop."""

    def __init__(self, ingestor: Ingestor, keys: KeyStore | None, rejections: RejectionLog,
                 metrics: ServiceMetrics | None = None) -> None:
        """`keys` None: the operator disabled auth, every export runs as an unscoped admin."""
        self._ingestor = ingestor
        self._keys = keys
        self._rejections = rejections
        self._requests = None if metrics is None else metrics.counter(
            "llmmeter_otlp_http_requests_total", "OTLP/HTTP export requests, by HTTP status.", ["code"])
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None,
                    shutdown_grace: float = 15.0) -> int:
        """Listen on host:port; returns the bound port."""
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_post(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_grace)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop listening; in-flight exports finish within the shutdown grace."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _principal(self, request: web.Request) -> Principal:
        token = bearer_token([("authorization", v) for v in request.headers.getall("Authorization", [])])
        return await authorize(self._keys, EXPORT_METHOD, token, "the header")

    def _answer(self, status: int, message: Message, content_type: str,
                headers: dict[str, str] | None = None) -> web.Response:
        if self._requests is not None:
            self._requests.labels(str(status)).inc()
        encoding = JSON if content_type == JSON else PROTOBUF
        return web.Response(status=status, body=_encode(message, encoding), content_type=encoding,
                            headers=headers)

    def _error(self, status: int, code: int, message: str, content_type: str,
               headers: dict[str, str] | None = None) -> web.Response:
        return self._answer(status, status_pb2.Status(code=code, message=message), content_type, headers)

    async def _handle(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        try:
            set_principal(await self._principal(request))
        except Unauthenticated as exc:
            return self._error(401, code_pb2.UNAUTHENTICATED, str(exc), content_type,
                               {"WWW-Authenticate": 'Bearer realm="llmmeter"'})
        except PermissionDenied as exc:
            return self._error(403, code_pb2.PERMISSION_DENIED, str(exc), content_type)
        if content_type not in (PROTOBUF, JSON):
            return self._error(415, code_pb2.INVALID_ARGUMENT,
                               f"unsupported content type {content_type!r}: send {PROTOBUF} or {JSON}",
                               PROTOBUF)
        try:
            body = await request.read()
            export_request = decode(body, content_type)
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, code_pb2.INVALID_ARGUMENT,
                               f"the body is larger than {MAX_MESSAGE_BYTES} bytes", content_type)
        except BadBody as exc:
            return self._error(400, code_pb2.INVALID_ARGUMENT, str(exc), content_type)
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        try:
            response = await export(self._ingestor, export_request, self._rejections)
        except ResourceExhausted as exc:
            return self._error(429, code_pb2.RESOURCE_EXHAUSTED, str(exc), content_type, retry)
        except Unavailable as exc:
            return self._error(503, code_pb2.UNAVAILABLE, str(exc), content_type, retry)
        except Exception:
            log.exception("OTLP/HTTP export failed")
            return self._error(500, code_pb2.INTERNAL, "internal error", content_type)
        return self._answer(200, response, content_type)

