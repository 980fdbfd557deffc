"""Async client of the llmmeter alerts service.

Rules, alerts, history and silences are all plain unary calls, so most of
the work is the shared plumbing of :mod:`llmmeter.service_client`; this
module adds typed helpers for the rule calls, paging for `list_rules`, and
the live `watch_alerts` stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import grpc

from llmmeter.config import ClientConfig
from llmmeter.service_client import ServiceClient
from llmmeter.v1 import alerts_pb2, alerts_pb2_grpc


class AlertsClient(ServiceClient):
    """Async client of `llmmeter.v1.AlertsService`; use it as an `async with` context manager.

    Unary calls get the configured deadline; reads, deletes and updates (which
    replace fields) are retried like the query client's. `watch_alerts` streams
    until the caller stops iterating.
    """

    SERVICE = "alerts service"

    def __init__(
        self, config: ClientConfig | None = None, *, channel: grpc.aio.Channel | None = None
    ) -> None:
        """Dials `config.alerts_addr` (plaintext) unless a `channel` is given, which is then not closed."""
        config = config or ClientConfig.from_env()
        super().__init__(config.alerts_addr, config, channel)
        self._stub = alerts_pb2_grpc.AlertsServiceStub(self._channel)

    async def call(self, method: str, request: Any) -> Any:
        """Calls one unary method of AlertsService by name (`CreateRule`, `ListAlerts`, ...)."""
        return await self._unary(method, request)

    async def create_rule(self, rule: alerts_pb2.Rule) -> alerts_pb2.Rule:
        """Stores a new rule; :class:`InvalidArgumentError` names the bad fields (`rule.window`, ...)."""
        response: alerts_pb2.CreateRuleResponse = await self.call(
            "CreateRule", alerts_pb2.CreateRuleRequest(rule=rule)
        )
        return response.rule

    async def get_rule(self, name: str) -> alerts_pb2.Rule:
        """One rule by name; :class:`NotFoundError` when absent."""
        response: alerts_pb2.GetRuleResponse = await self.call(
            "GetRule", alerts_pb2.GetRuleRequest(name=name)
        )
        return response.rule

    async def list_rules(self) -> list[alerts_pb2.Rule]:
        """Every rule, by name (all pages)."""
        out: list[alerts_pb2.Rule] = []
        token = ""
        while True:
            page: alerts_pb2.ListRulesResponse = await self.call(
                "ListRules", alerts_pb2.ListRulesRequest(page_size=1000, page_token=token)
            )
            out.extend(page.rules)
            token = page.next_page_token
            if not token:
                return out

    async def update_rule(self, rule: alerts_pb2.Rule, paths: Sequence[str] = ()) -> alerts_pb2.Rule:
        """Replaces the fields `paths` (all when empty) of the rule named `rule.name`."""
        request = alerts_pb2.UpdateRuleRequest(rule=rule)
        request.update_mask.paths.extend(paths)
        response: alerts_pb2.UpdateRuleResponse = await self.call("UpdateRule", request)
        return response.rule

    async def delete_rule(self, name: str) -> None:
        """Deletes a rule with its alerts and history."""
        await self.call("DeleteRule", alerts_pb2.DeleteRuleRequest(name=name))

    async def test_rule(
        self, name: str = "", rule: alerts_pb2.Rule | None = None
    ) -> alerts_pb2.TestRuleResponse:
        """Evaluates a stored rule (by name) or a given one once, without notifying."""
        request = alerts_pb2.TestRuleRequest(name=name)
        if rule is not None:
            request.rule.CopyFrom(rule)
        response: alerts_pb2.TestRuleResponse = await self.call("TestRule", request)
        return response

    def watch_alerts(
        self, request: alerts_pb2.WatchAlertsRequest, *, on_live: Callable[[], None] | None = None
    ) -> AsyncGenerator[alerts_pb2.WatchAlertsResponse, None]:
        """State changes as they happen, until the caller stops iterating."""
        return self._watch(request, on_live)

    async def _watch(
        self, request: alerts_pb2.WatchAlertsRequest, on_live: Callable[[], None] | None
    ) -> AsyncGenerator[alerts_pb2.WatchAlertsResponse, None]:
        call = self._stub.WatchAlerts(request)
        try:
            await call.initial_metadata()
            if on_live is not None and not call.done():
                on_live()
            async for response in call:
                yield response
        except grpc.RpcError as error:
            raise self._retrier.to_error(error, "WatchAlerts") from None
        finally:
            call.cancel()
