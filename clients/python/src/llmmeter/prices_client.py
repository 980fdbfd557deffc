"""Async client of the llmmeter PricesService (served by the alerts service): per-model price overrides."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from llmmeter.config import ClientConfig
from llmmeter.service_client import ServiceClient
from llmmeter.v1 import prices_pb2, prices_pb2_grpc


class PricesClient(ServiceClient):
    """Set, list and delete price overrides; needs an admin key. Use it as an `async with` context manager."""

    SERVICE = "alerts service"

    def __init__(
        self, config: ClientConfig | None = None, *, channel: grpc.aio.Channel | None = None
    ) -> None:
        """Dials `config.alerts_addr` unless a `channel` is given, which is then not closed."""
        config = config or ClientConfig.from_env()
        super().__init__(config.alerts_addr, config, channel)
        self._stub = prices_pb2_grpc.PricesServiceStub(self._channel)

    async def set_price(self, price: prices_pb2.ModelPrice) -> prices_pb2.ModelPrice:
        """Create or replace the override of (model, effective_from)."""
        response: prices_pb2.SetPriceResponse = await self._unary(
            "SetPrice", prices_pb2.SetPriceRequest(price=price))
        return response.price

    async def list_prices(self, model: str = "") -> list[prices_pb2.ModelPrice]:
        """Every override (of one model), by model then effective_from."""
        response: prices_pb2.ListPricesResponse = await self._unary(
            "ListPrices", prices_pb2.ListPricesRequest(model=model))
        return list(response.prices)

    async def delete_price(self, model: str, effective_from: Timestamp) -> prices_pb2.ModelPrice:
        """Delete one override."""
        response: prices_pb2.DeletePriceResponse = await self._unary(
            "DeletePrice", prices_pb2.DeletePriceRequest(model=model, effective_from=effective_from))
        return response.price
