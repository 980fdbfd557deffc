"""The one place that turns domain errors into gRPC statuses with google.rpc details.

Installed as a server interceptor on every service, in the manner of kserve's
gRPC protocol layer: handlers raise `llmmeter_common.errors` exceptions and
callers receive the matching code, a one-line message, and for bad input a
`google.rpc.BadRequest` listing the offending fields (AIP-193). A request that
does not parse is INVALID_ARGUMENT; any other exception is INTERNAL with an error
id that the log repeats, never the exception's text.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from llmmeter_common import errors

log = logging.getLogger(__name__)

_CODES: list[tuple[type[errors.LlmmeterError], int]] = [
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
]

#: Infrastructure failures that callers should see as a retryable status, not UNKNOWN.
_UNAVAILABLE = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.OperatorInterventionError,
)


def as_domain_error(exc: BaseException) -> errors.LlmmeterError | None:
    """The domain error a raised exception stands for, if any."""
    if isinstance(exc, errors.LlmmeterError):
        return exc
    if isinstance(exc, asyncpg.exceptions.QueryCanceledError):
        return errors.DeadlineExceeded(f"the query took too long: {exc}")
    if isinstance(exc, _UNAVAILABLE):
        return errors.Unavailable(f"database unavailable: {exc}")
    if isinstance(exc, TimeoutError):
        return errors.Unavailable("timed out waiting for a dependency")
    return None


def to_status(exc: errors.LlmmeterError) -> grpc.Status:
    """The rich gRPC status for a domain error."""
    code = next(c for cls, c in _CODES if isinstance(exc, cls))
    status = status_pb2.Status(code=code, message=str(exc))
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ]))
        status.details.append(detail)
    return rpc_status.to_status(status)


async def _abort(context: grpc.aio.ServicerContext, exc: errors.LlmmeterError) -> None:
    await context.abort_with_status(to_status(exc))


async def _fail(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """Abort with the status `exc` stands for; an unexpected error becomes INTERNAL with an error id
    that the log line carrying its traceback repeats, and never its text (which may name internals)."""
    if isinstance(exc, grpc.aio.AbortError):  # the handler already chose its status
        raise exc
    domain = as_domain_error(exc)
    if domain is None:
        error_id = secrets.token_hex(6)
        log.exception("unexpected error %s", error_id, extra={"error_id": error_id})
        await context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code_pb2.INTERNAL, message=f"internal error (id {error_id}); the service logged the cause")))
    else:
        await _abort(context, domain)


class Malformed:
    """What a request that does not parse (invalid UTF-8, corrupt wire format) is handed on as, so the
    handler can refuse it as INVALID_ARGUMENT instead of gRPC reporting the parser's exception."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> errors.InvalidArgument:
        """The refusal of this request."""
        message = f"the request is not a valid protobuf message: {self.reason}"
        return errors.InvalidArgument(message, [errors.FieldViolation("request", self.reason)])


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and whatever else a parser raises on hostile bytes
            reason = str(exc).rsplit(": ", 1)[-1] if ": " in str(exc) else "the bytes do not parse"
            return Malformed(reason)

    return parse


def _parsed(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise request.error()
    return request


async def _parsed_stream(requests: Any) -> Any:
    async for request in requests:
        yield _parsed(request)


Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def wrap_handler(handler: grpc.RpcMethodHandler, unary: Wrap, stream: Wrap) -> grpc.RpcMethodHandler:
    """The handler with its behaviour wrapped: `unary` for unary-response kinds, `stream` for
    streaming-response kinds (server interceptors of grpc.aio all need this dispatch)."""
    if handler.unary_unary:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.stream_unary:
        return handler._replace(stream_unary=unary(handler.stream_unary))
    if handler.unary_stream:
        return handler._replace(unary_stream=stream(handler.unary_stream))
    if handler.stream_stream:
        return handler._replace(stream_stream=stream(handler.stream_stream))
    return handler


def _request(request: Any, streaming: bool) -> Any:
    """The request as the handler sees it: parsed, or refused as INVALID_ARGUMENT (for a request
    stream, when the bad message is reached)."""
    return _parsed_stream(request) if streaming else _parsed(request)


def _wrap_unary(
    fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], streaming: bool = False,
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(_request(request, streaming), context)
        except Exception as exc:
            await _fail(context, exc)

    return handler


def _wrap_stream(fn: Callable[[Any, grpc.aio.ServicerContext], Any],
                 streaming: bool = False) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(fn):
        return _wrap_writer(fn, streaming)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(_request(request, streaming), context):
                yield item
        except Exception as exc:
            await _fail(context, exc)

    return handler


def _wrap_writer(fn: Callable[[Any, grpc.aio.ServicerContext], Any], streaming: bool) -> Callable[..., Any]:
    """A streaming handler that is a coroutine writing with `context.write` (as the aio health
    service's Watch is), or a plain function returning an async iterator."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            result = fn(_request(request, streaming), context)
            if inspect.isawaitable(result):
                await result
                return
            async for item in result:
                await context.write(item)
        except Exception as exc:
            await _fail(context, exc)

    return handler


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps `LlmmeterError` raised by any handler to its status code and details."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        streaming = bool(handler.request_streaming)
        handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        return wrap_handler(handler, lambda fn: _wrap_unary(fn, streaming),
                            lambda fn: _wrap_stream(fn, streaming))
