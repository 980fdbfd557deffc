"""KeysService over gRPC: admins create, list and revoke API keys (the key store does the work).

Served by the alerts service, the home of the other admin resources (rules and
silences); every service checks keys against the same table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from llmmeter.v1 import keys_pb2, keys_pb2_grpc
from llmmeter_alerts.store import decode_token, encode_token, page_size
from llmmeter_common.auth.keys import Role
from llmmeter_common.auth.keystore import KeyInfo, KeyStore
from llmmeter_common.errors import FieldViolation, InvalidArgument

_ROLES = {keys_pb2.ROLE_INGEST: Role.INGEST, keys_pb2.ROLE_READ: Role.READ, keys_pb2.ROLE_ADMIN: Role.ADMIN}
_PROTO_ROLES = {v: k for k, v in _ROLES.items()}


def _ts(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def _key(info: KeyInfo) -> keys_pb2.ApiKey:
    extra: dict[str, Any] = {"revoke_time": _ts(info.revoked_at)} if info.revoked_at else {}
    return keys_pb2.ApiKey(key_id=info.key_id, name=info.name, role=_PROTO_ROLES[info.role],
                           team=info.team or "", create_time=_ts(info.created_at), **extra)


def _after(token: str) -> tuple[datetime, str] | None:
    position = decode_token(token)
    if position is None:
        return None
    try:
        at, key_id = position
        return datetime.fromisoformat(at), str(key_id)
    except (TypeError, ValueError):
        raise InvalidArgument("page_token: not a token of this list",
                              [FieldViolation("page_token", "use next_page_token as returned")]) from None


class KeysServicer(keys_pb2_grpc.KeysServiceServicer):
    """The gRPC face of the key store."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def CreateKey(self, request: keys_pb2.CreateKeyRequest,
                        context: grpc.aio.ServicerContext) -> keys_pb2.CreateKeyResponse:
        """A new key; its secret is in this response only."""
        role = _ROLES.get(request.role)
        if role is None:
            raise InvalidArgument("role: one of ROLE_INGEST, ROLE_READ, ROLE_ADMIN",
                                  [FieldViolation("role", "ROLE_INGEST, ROLE_READ or ROLE_ADMIN")])
        info, token = await self._store.create(request.name, role, request.team or None)
        return keys_pb2.CreateKeyResponse(api_key=_key(info), secret=token)

    async def ListKeys(self, request: keys_pb2.ListKeysRequest,
                       context: grpc.aio.ServicerContext) -> keys_pb2.ListKeysResponse:
        """Keys without their secrets, newest first."""
        size = page_size(request.page_size)
        found = await self._store.list(size + 1, _after(request.page_token), request.show_revoked)
        page = found[:size]
        token = (encode_token([page[-1].created_at.isoformat(), page[-1].key_id])
                 if len(found) > size else "")
        return keys_pb2.ListKeysResponse(keys=[_key(k) for k in page], next_page_token=token)

    async def RevokeKey(self, request: keys_pb2.RevokeKeyRequest,
                        context: grpc.aio.ServicerContext) -> keys_pb2.RevokeKeyResponse:
        """Revoke a key; every replica refuses it once its key cache expires."""
        if not request.key_id:
            raise InvalidArgument("key_id: required", [FieldViolation("key_id", "the key's public id")])
        return keys_pb2.RevokeKeyResponse(api_key=_key(await self._store.revoke(request.key_id)))
