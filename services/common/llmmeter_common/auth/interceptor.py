"""The one server interceptor that authenticates every call and enforces the access policy.

It runs inside the handler's task (wrapping the handler, as the error mapping does),
so the principal it sets is the one the domain code reads, and every failure leaves
as a domain error that `grpc_errors` maps to UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from llmmeter_common.auth.access import authorize, bearer_token
from llmmeter_common.auth.context import set_principal
from llmmeter_common.auth.keys import Principal
from llmmeter_common.auth.keystore import KeyStore
from llmmeter_common.auth.policy import is_open
from llmmeter_common.grpc_errors import wrap_handler

log = logging.getLogger(__name__)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a valid key of the role the method needs; `store` None means the
    operator disabled auth, and every call then runs as an unscoped admin."""

    def __init__(self, store: KeyStore | None) -> None:
        self._store = store

    async def _principal(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        token = bearer_token(context.invocation_metadata())
        return await authorize(self._store, method, token, "gRPC metadata")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or is_open(details.method):
            return handler
        method: str = details.method
        authorize = self._principal

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                set_principal(await authorize(method, context))
                return await fn(request, context)
            return checked

        def stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                set_principal(await authorize(method, context))
                result = fn(request, context)
                if inspect.isawaitable(result):  # a coroutine writing with context.write
                    await result
                    return
                async for item in result:
                    yield item
            return checked

        return wrap_handler(handler, unary, stream)
