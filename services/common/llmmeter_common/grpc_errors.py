"""The one place that turns domain errors into gRPC statuses with google.rpc details.

Installed as a server interceptor on every service, in the manner of kserve's
gRPC protocol layer: handlers raise `llmmeter_common.errors` exceptions and
callers receive the matching code, a one-line message, and for bad input a
`google.rpc.BadRequest` listing the offending fields (AIP-193).
"""

from __future__ import annotations

import inspect
import logging
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
    """Abort with the status `exc` stands for; anything else propagates unchanged."""
    domain = as_domain_error(exc)
    if domain is None:
        raise exc
    await _abort(context, domain)


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


def _wrap_unary(
    fn: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except Exception as exc:
            await _fail(context, exc)

    return handler


def _wrap_stream(fn: Callable[[Any, grpc.aio.ServicerContext], Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(fn):
        return _wrap_writer(fn)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(request, context):
                yield item
        except Exception as exc:
            await _fail(context, exc)

    return handler


def _wrap_writer(fn: Callable[[Any, grpc.aio.ServicerContext], Any]) -> Callable[..., Any]:
    """A streaming handler that is a coroutine writing with `context.write` (as the aio health
    service's Watch is), or a plain function returning an async iterator."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            result = fn(request, context)
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
        return handler if handler is None else wrap_handler(handler, _wrap_unary, _wrap_stream)
