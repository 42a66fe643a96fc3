"""What grading costs: the price table (ttsf_core/prices.toml, overridden by the config's `prices`)
applied to the tokens each answer reported.

A grade's cost is its input tokens (prompt text and media) times the input price plus its output and
thought tokens times the output price, for the model that answered (its model_version; the model
asked when the API did not say), at the price in effect on the day it was graded. A model without a
price has no cost (None), never a guessed one.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttsf_core.verifiers.base import Usage

PRICES_FILE = Path(__file__).with_name("prices.toml")
PER = 1_000_000


class ModelPrice(BaseModel):
    """One model's price per 1M tokens, from `valid_from` to `valid_until` (both days included)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str
    input_per_1m_usd: float = Field(ge=0)
    output_per_1m_usd: float = Field(ge=0)  # answer and thought tokens
    batch_discount: float = Field(0.0, ge=0, lt=1)
    valid_from: date | None = None
    valid_until: date | None = None
    source: str = ""
    checked: date | None = None

    def valid_on(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (self.valid_until is None or day <= self.valid_until)

    def cost(self, usage: Usage, batch: bool = False) -> float:
        billed = (usage.prompt_tokens * self.input_per_1m_usd
                  + (usage.output_tokens + usage.thought_tokens) * self.output_per_1m_usd) / PER
        return billed * (1 - self.batch_discount) if batch else billed


class PriceTable:
    """Prices by model: the shipped file, then the config's overrides (which win, on every day)."""

    def __init__(self, prices: Sequence[ModelPrice], overrides: Sequence[ModelPrice] = ()):
        self.prices = tuple(prices)
        self.overrides = {price.model: price for price in overrides}

    def find(self, model: str, day: date) -> ModelPrice | None:
        """The price of `model` on `day`: an override, else the file's entry for the model or, for a
        versioned name ("gemini-3.8-flash-002"), for the longest model name it starts with."""
        for table in (list(self.overrides.values()), [p for p in self.prices if p.valid_on(day)]):
            exact = [price for price in table if price.model == model]
            if exact:
                return exact[0]
            prefixes = [price for price in table if model.startswith(price.model + "-")]
            if prefixes:
                return max(prefixes, key=lambda price: len(price.model))
        return None

    def price_of(self, usage: Usage, day: date) -> ModelPrice | None:
        return self.find(usage.billed_model, day) or self.find(usage.model, day)

    def cost(self, usage: Sequence[Usage], day: date | None = None, batch: bool = False) -> float | None:
        """What these answers cost on `day` (today when None); None when one of them has no price."""
        day = day or today()
        total = 0.0
        for entry in usage:
            price = self.price_of(entry, day)
            if price is None:
                return None
            total += price.cost(entry, batch)
        return round(total, 9)

    def unpriced(self, usage: Sequence[Usage], day: date | None = None) -> list[str]:
        """The models among `usage` that have no price on `day`."""
        day = day or today()
        return sorted({entry.billed_model for entry in usage if self.price_of(entry, day) is None})


def today() -> date:
    return datetime.now(timezone.utc).date()


@functools.lru_cache(maxsize=1)
def shipped_prices() -> tuple[ModelPrice, ...]:
    """The price table that ships with ttsf (prices.toml)."""
    data = tomllib.loads(PRICES_FILE.read_text(encoding="utf-8"))
    try:
        return tuple(ModelPrice.model_validate(entry) for entry in data.get("price", []))
    except ValidationError as error:  # pragma: no cover - the shipped file is tested
        raise ValueError(f"{PRICES_FILE} is not a valid price table: {error}") from None


def price_table(overrides: Mapping[str, Mapping] | None = None) -> PriceTable:
    """The shipped prices with the config's `prices` ({model: {input_per_1m_usd, output_per_1m_usd,
    batch_discount}}) over them."""
    own = [ModelPrice(model=model, **dict(values), source="your config (prices)")
           for model, values in (overrides or {}).items()]
    return PriceTable(shipped_prices(), own)
