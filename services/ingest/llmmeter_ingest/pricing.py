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
from typing import Any, Protocol

import asyncpg
import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import TieredPrices

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

class PricedMedia(Protocol):
    """What pricing reads of a record's media."""

    @property
    def images(self) -> int: ...
    @property
    def audio_seconds(self) -> float: ...


class Priced(Protocol):
    """What pricing reads of a record: a `UsageRecord`, or a bulk batch's view of one, so a batch
    sent as columns is priced without building record messages."""

    @property
    def model(self) -> str: ...
    @property
    def response_model(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def media(self) -> PricedMedia: ...


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

    def cost(self, rec: Priced) -> dict[str, Decimal]:
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


def builtin_usage(rec: Priced) -> genai_prices.Usage:
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


@dataclass(frozen=True)
class _Rates:
    """A model price, within one tier regime, as per-unit rates derived from genai-prices itself
    (so they are its prices, not a copy of its rules): cost is linear in the counts there."""

    const: Decimal
    uncached: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal
    audio_second: Decimal

    def cost(self, rec: Priced) -> dict[str, Decimal]:
        cached = rec.cache_read_tokens + rec.cache_write_tokens
        parts = {
            "input": ((rec.input_tokens - cached) * self.uncached + rec.cache_read_tokens * self.cache_read
                      + rec.cache_write_tokens * self.cache_write),
            "output": ((rec.output_tokens - rec.reasoning_tokens) * self.output
                       + rec.reasoning_tokens * self.reasoning),
            "other": self.const + (Decimal(repr(rec.media.audio_seconds)) * self.audio_second
                                   if rec.media.audio_seconds else _ZERO),
        }
        return {k: v for k, v in parts.items() if v}


_PROBE_OUT = 1_000_000
#: How far derived rates may price the check usage from the library's own answer (USD).
_TOLERANCE = Decimal("1e-12")


def _calc(model_info: Any, provider: Any, at: datetime, **usage: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_info.calc_price(genai_prices.Usage(**usage), provider, genai_request_timestamp=at)


def _tier_starts(model_price: Any) -> list[int]:
    tiered = [v for v in vars(model_price).values() if isinstance(v, TieredPrices)]
    return sorted({int(t.start) for v in tiered for t in v.tiers})


def _probe(model_info: Any, provider: Any, at: datetime, tokens: int) -> _Rates | None:
    """The rates of the regime that `tokens` input tokens fall in; None when the price is not linear
    there (checked on a mixed usage), so the caller asks the library for each record."""
    def total(**usage: Any) -> Decimal:
        return Decimal(_calc(model_info, provider, at, **usage).total_price)

    n, i = _PROBE_OUT, tokens
    const = total()
    base = total(input_tokens=i)
    rates = _Rates(
        const=const, uncached=(base - const) / i,
        cache_read=(total(input_tokens=i, cache_read_tokens=i) - const) / i,
        cache_write=(total(input_tokens=i, cache_write_tokens=i) - const) / i,
        output=(total(input_tokens=i, output_tokens=n) - base) / n,
        reasoning=(total(input_tokens=i, output_tokens=n, output_reasoning_tokens=n) - base) / n,
        audio_second=(total(input_tokens=i, audio_seconds=3600) - base) / 3600)
    mixed = usage_pb2.UsageRecord(input_tokens=i, cache_read_tokens=i // 3, cache_write_tokens=i // 5,
                                  output_tokens=n // 3, reasoning_tokens=n // 7,
                                  media=usage_pb2.MediaUsage(audio_seconds=5.0))
    expected = total(input_tokens=i, cache_read_tokens=i // 3, cache_write_tokens=i // 5,
                     output_tokens=n // 3, output_reasoning_tokens=n // 7, audio_seconds=5.0)
    return rates if abs(sum(rates.cost(mixed).values(), _ZERO) - expected) <= _TOLERANCE else None


class Builtin:
    """The genai-prices table, with lookups (hits and misses) kept per (provider, model).

    A full genai-prices calculation costs ~400 µs; the ingest path prices a record in a few
    µs instead from per-unit rates derived once per (model, price, tier regime) by calling the
    library on probe usages (`_probe`), verified against it on a mixed usage; where that check
    fails the library prices each record itself.
    """

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[Any, Any] | None] = {}
        self._rates: dict[tuple[int, int], tuple[Any, _Rates | None]] = {}
        self._starts: dict[int, tuple[Any, list[int]]] = {}

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

    def _regime_rates(self, provider: Any, model_info: Any, at: datetime, input_tokens: int) -> _Rates | None:
        model_price = model_info.get_prices(at)
        known = self._starts.get(id(model_price))
        if known is None or known[0] is not model_price:
            known = self._starts[id(model_price)] = (model_price, _tier_starts(model_price))
        starts = known[1]
        regime = bisect.bisect_left(starts, input_tokens)  # tiers apply when input > start
        key = (id(model_price), regime)
        cached = self._rates.get(key)
        if cached is None or cached[0] is not model_price:
            tokens = starts[regime - 1] + 1 if regime else (min(1000, starts[0]) if starts else 1000)
            cached = (model_price, _probe(model_info, provider, at, max(tokens, 1)))
            self._rates[key] = cached
        return cached[1]

    def cost(self, rec: Priced, at: datetime) -> dict[str, Decimal] | None:
        """Cost components from the built-in table; None when the model is not in it."""
        found = None
        for model in dict.fromkeys(m for m in (rec.model, rec.response_model) if m):
            found = self._lookup(rec.provider.lower(), model)
            if found is not None:
                break
        if found is None:
            return None
        provider, model_info = found
        rates = self._regime_rates(provider, model_info, at, rec.input_tokens)
        if rates is not None:
            return rates.cost(rec)
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

    def _override(self, rec: Priced, at: datetime) -> Override | None:
        for model in (rec.model, rec.response_model):
            entry = self._overrides.get(model) if model else None
            if entry is None:
                continue
            i = bisect.bisect_right(entry[0], at)
            if i:
                return entry[1][i - 1]
        return None

    def price(self, rec: Priced, at: datetime) -> tuple[Decimal, dict[str, float], int]:
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
