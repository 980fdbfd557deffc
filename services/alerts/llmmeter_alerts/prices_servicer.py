"""PricesService over gRPC: admins set, list and delete per-model price overrides.

Served by the alerts service, the home of the other admin resources; the ingest service reads
the table (`llmmeter_model_prices`, migration 0010) every few seconds and prices records sent
without a cost with it (`llmmeter_ingest.pricing`).
"""

from __future__ import annotations

import math
from datetime import UTC
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from llmmeter.v1 import prices_pb2, prices_pb2_grpc
from llmmeter_common.errors import FieldViolation, InvalidArgument, NotFound

#: Rates (USD) an override may set, each at most this: far above any real price, low enough that
#: a mistyped rate cannot make sums of computed costs meaningless.
MAX_RATE = 100_000.0
RATES = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok",
         "reasoning_per_mtok", "per_image", "per_audio_second")
REQUIRED = ("input_per_mtok", "output_per_mtok")
_COLUMNS = ("model", "effective_from", *RATES, "updated_at")


def _bad(field: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {reason}", [FieldViolation(field, reason)])


def _ts(at: Any) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def _model(name: str, field: str) -> str:
    if not name or len(name) > 256 or "\x00" in name:
        raise _bad(field, "1..256 characters, no NUL")
    return name


def to_proto(r: asyncpg.Record) -> prices_pb2.ModelPrice:
    """A stored override as a message (unset rates stay unset)."""
    rates = {k: float(r[k]) for k in RATES if r[k] is not None}
    return prices_pb2.ModelPrice(model=r["model"], effective_from=_ts(r["effective_from"]),
                                 update_time=_ts(r["updated_at"]), **rates)


def _values(p: prices_pb2.ModelPrice) -> list[Any]:
    model = _model(p.model, "price.model")
    if not p.HasField("effective_from"):
        raise _bad("price.effective_from", "required")
    values: list[Any] = [model, p.effective_from.ToDatetime(tzinfo=UTC)]
    for name in RATES:
        if not p.HasField(name):  # type: ignore[arg-type]
            if name in REQUIRED:
                raise _bad(f"price.{name}", "required (0 allowed)")
            values.append(None)
            continue
        v = getattr(p, name)
        if not math.isfinite(v) or v < 0 or v > MAX_RATE:
            raise _bad(f"price.{name}", f"a number from 0 to {MAX_RATE:g}")
        values.append(Decimal(repr(v)))
    return values


class PricesServicer(prices_pb2_grpc.PricesServiceServicer):
    """The gRPC face of `llmmeter_model_prices`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def SetPrice(self, request: prices_pb2.SetPriceRequest,
                       context: grpc.aio.ServicerContext) -> prices_pb2.SetPriceResponse:
        """Create or replace the override of (model, effective_from)."""
        values = _values(request.price)
        cols = ", ".join(_COLUMNS[:-1])
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in RATES)
        row = await self._pool.fetchrow(
            f"INSERT INTO llmmeter_model_prices ({cols}) VALUES ({marks}) "
            f"ON CONFLICT (model, effective_from) DO UPDATE SET {updates}, updated_at = now() "
            f"RETURNING {', '.join(_COLUMNS)}", *values)
        assert row is not None
        return prices_pb2.SetPriceResponse(price=to_proto(row))

    async def ListPrices(self, request: prices_pb2.ListPricesRequest,
                         context: grpc.aio.ServicerContext) -> prices_pb2.ListPricesResponse:
        """Every override (of one model), by model then effective_from."""
        rows = await self._pool.fetch(
            f"SELECT {', '.join(_COLUMNS)} FROM llmmeter_model_prices "
            "WHERE $1 = '' OR model = $1 ORDER BY model, effective_from", request.model)
        return prices_pb2.ListPricesResponse(prices=[to_proto(r) for r in rows])

    async def DeletePrice(self, request: prices_pb2.DeletePriceRequest,
                          context: grpc.aio.ServicerContext) -> prices_pb2.DeletePriceResponse:
        """Delete one override; NOT_FOUND when absent."""
        model = _model(request.model, "model")
        if not request.HasField("effective_from"):
            raise _bad("effective_from", "required")
        row = await self._pool.fetchrow(
            "DELETE FROM llmmeter_model_prices WHERE model = $1 AND effective_from = $2 "
            f"RETURNING {', '.join(_COLUMNS)}", model, request.effective_from.ToDatetime(tzinfo=UTC))
        if row is None:
            raise NotFound(f"no price override for model {model[:40]!r} from that time")
        return prices_pb2.DeletePriceResponse(price=to_proto(row))
