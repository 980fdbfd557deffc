"""Async client of the llmmeter KeysService (served by the alerts service): admins manage API keys."""

from __future__ import annotations

import grpc

from llmmeter.config import ClientConfig
from llmmeter.service_client import ServiceClient
from llmmeter.v1 import keys_pb2, keys_pb2_grpc


class KeysClient(ServiceClient):
    """Create, list and revoke API keys; needs an admin key. Use it as an `async with` context manager."""

    SERVICE = "alerts service"

    def __init__(
        self, config: ClientConfig | None = None, *, channel: grpc.aio.Channel | None = None
    ) -> None:
        """Dials `config.alerts_addr` unless a `channel` is given, which is then not closed."""
        config = config or ClientConfig.from_env()
        super().__init__(config.alerts_addr, config, channel)
        self._stub = keys_pb2_grpc.KeysServiceStub(self._channel)

    async def create_key(self, name: str, role: keys_pb2.Role.ValueType,
                         team: str = "") -> keys_pb2.CreateKeyResponse:
        """A new key; the response's `secret` is the only time the whole key is shown."""
        response: keys_pb2.CreateKeyResponse = await self._unary(
            "CreateKey", keys_pb2.CreateKeyRequest(name=name, role=role, team=team))
        return response

    async def list_keys(self, show_revoked: bool = False) -> list[keys_pb2.ApiKey]:
        """Every key (all pages), newest first, never their secrets."""
        out: list[keys_pb2.ApiKey] = []
        token = ""
        while True:
            response: keys_pb2.ListKeysResponse = await self._unary("ListKeys", keys_pb2.ListKeysRequest(
                page_size=1000, page_token=token, show_revoked=show_revoked))
            out.extend(response.keys)
            token = response.next_page_token
            if not token:
                return out

    async def revoke_key(self, key_id: str) -> keys_pb2.ApiKey:
        """Revoke a key; the services refuse it within their key cache time."""
        response: keys_pb2.RevokeKeyResponse = await self._unary(
            "RevokeKey", keys_pb2.RevokeKeyRequest(key_id=key_id))
        return response.api_key
