"""Prices a record sent without a cost: the operator's override, else the built-in price table.

Built-in prices come from `genai-prices` (pydantic's maintained price data for the major
providers, with historic prices by date and tiered and cache prices): the model is looked up
once per (provider, model) and the lookup kept, so a record costs one price calculation.
Overrides (`llmmeter_model_prices`, PricesService) are read by `Pricer.refresh` every few
seconds into memory, never per row, and win over the built-in prices.
"""

from __future__ import annotations

import bisect
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import genai_prices
from genai_prices import data_snapshot

from llmmeter.v1 import usage_pb2

log = logging.getLogger(__name__)

REPORTED: int = usage_pb2.COST_SOURCE_REPORTED
COMPUTED: int = usage_pb2.COST_SOURCE_COMPUTED
UNPRICED: int = usage_pb2.COST_SOURCE_UNPRICED

_MTOK = Decimal(1_000_000)
_ZERO = Decimal(0)
#: A computed cost above the validation bound of reported costs stays unpriced (a wrong override
#: must not put a sum past what the rollups are sized for).
MAX_COMPUTED_USD = Decimal(100_000)

_SELECT = """SELECT model, effective_from, input_per_mtok, output_per_mtok, cache_read_per_mtok,
       cache_write_per_mtok, reasoning_per_mtok, per_image, per_audio_second
FROM llmmeter_model_prices ORDER BY model, effective_from"""


@dataclass(frozen=True)
class Override:
    """One row of `llmmeter_model_prices` (USD)."""

    model: str
    effective_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    per_image: Decimal | None = None
    per_audio_second: Decimal | None = None

    def cost(self, rec: usage_pb2.UsageRecord) -> dict[str, Decimal]:
        """The record's cost components under these prices."""
        cached_in = rec.cache_read_tokens + rec.cache_write_tokens
        read_rate = _or(self.cache_read_per_mtok, self.input_per_mtok)
        write_rate = _or(self.cache_write_per_mtok, self.input_per_mtok)
        parts = {
            "input": (rec.input_tokens - cached_in) * self.input_per_mtok / _MTOK,
            "cache_read": rec.cache_read_tokens * read_rate / _MTOK,
            "cache_write": rec.cache_write_tokens * write_rate / _MTOK,
            "output": (rec.output_tokens - rec.reasoning_tokens) * self.output_per_mtok / _MTOK,
            "reasoning": rec.reasoning_tokens * _or(self.reasoning_per_mtok, self.output_per_mtok) / _MTOK,
            "images": rec.media.images * (self.per_image or _ZERO),
            "audio": Decimal(repr(rec.media.audio_seconds)) * (self.per_audio_second or _ZERO),
        }
        return {k: v for k, v in parts.items() if v}


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


def builtin_usage(rec: usage_pb2.UsageRecord) -> genai_prices.Usage:
    """The record's usage as genai-prices counts it (input includes cache reads and writes, output
    includes reasoning: the same conventions as a UsageRecord)."""
    values: dict[str, Any] = {
        "input_tokens": rec.input_tokens, "output_tokens": rec.output_tokens,
        "cache_read_tokens": rec.cache_read_tokens, "cache_write_tokens": rec.cache_write_tokens,
    }
    if rec.reasoning_tokens:
        values["output_reasoning_tokens"] = rec.reasoning_tokens
    if rec.media.audio_seconds:
        values["audio_seconds"] = rec.media.audio_seconds
    return genai_prices.Usage(**values)


class Builtin:
    """The genai-prices table, with lookups (hits and misses) kept per (provider, model)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[Any, Any] | None] = {}

    def _lookup(self, provider: str, model: str) -> tuple[Any, Any] | None:
        key = (provider, model)
        if key in self._found:
            return self._found[key]
        snapshot = data_snapshot.get_snapshot()
        found = None
        refs = [model] + ([model.split("/", 1)[1]] if "/" in model else [])
        for ref in refs:
            for provider_id in ([provider] if provider else []) + [None]:
                try:
                    found = snapshot.find_provider_model(ref, None, provider_id, None)
                except LookupError:
                    continue
                break
            if found is not None:
                break
        if len(self._found) > 100_000:  # hostile model names: keep the memory bounded
            self._found.clear()
        self._found[key] = found
        return found

    def cost(self, rec: usage_pb2.UsageRecord, at: datetime) -> dict[str, Decimal] | None:
        """Cost components from the built-in table; None when the model is not in it."""
        found = None
        for model in dict.fromkeys(m for m in (rec.model, rec.response_model) if m):
            found = self._lookup(rec.provider.lower(), model)
            if found is not None:
                break
        if found is None:
            return None
        provider, model_info = found
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            price = model_info.calc_price(builtin_usage(rec), provider, genai_request_timestamp=at)
        parts = {"input": price.input_price, "output": price.output_price}
        other = price.total_price - price.input_price - price.output_price
        if other:
            parts["other"] = other
        return {k: v for k, v in parts.items() if v}


class Pricer:
    """Cost of records sent without one. `refresh` loads the overrides (call it every few seconds);
    `price` is synchronous and reads only memory."""

    def __init__(self, builtin: Builtin | None = None) -> None:
        self._builtin = builtin or Builtin()
        self._overrides: dict[str, tuple[list[datetime], list[Override]]] = {}

    def set_overrides(self, overrides: list[Override]) -> None:
        """Replace the overrides (sorted by model, then effective_from)."""
        table: dict[str, tuple[list[datetime], list[Override]]] = {}
        for o in sorted(overrides, key=lambda o: (o.model, o.effective_from)):
            starts, rows = table.setdefault(o.model, ([], []))
            starts.append(o.effective_from)
            rows.append(o)
        self._overrides = table

    async def refresh(self, pool: asyncpg.Pool) -> None:
        """Reload the overrides: one statement for the whole table."""
        rows = await pool.fetch(_SELECT)
        self.set_overrides([Override(*r) for r in rows])

    def _override(self, rec: usage_pb2.UsageRecord, at: datetime) -> Override | None:
        for model in (rec.model, rec.response_model):
            entry = self._overrides.get(model) if model else None
            if entry is None:
                continue
            i = bisect.bisect_right(entry[0], at)
            if i:
                return entry[1][i - 1]
        return None

    def price(self, rec: usage_pb2.UsageRecord, at: datetime) -> tuple[Decimal, dict[str, float], int]:
        """(cost, cost breakdown, CostSource) of a record sent without a cost, starting at `at`."""
        override = self._override(rec, at)
        try:
            parts = override.cost(rec) if override is not None else self._builtin.cost(rec, at)
        except Exception:  # a price table oddity must not refuse the record: it stays unpriced
            log.warning("pricing %r failed", rec.model, exc_info=True)
            parts = None
        if parts is None:
            return _ZERO, {}, UNPRICED
        total = sum(parts.values(), _ZERO)
        if total > MAX_COMPUTED_USD:
            return _ZERO, {}, UNPRICED
        return total, {k: float(v) for k, v in parts.items()}, COMPUTED


#: Built-in prices only; what conversions use when the service gave none.
BUILTIN_ONLY = Pricer()
