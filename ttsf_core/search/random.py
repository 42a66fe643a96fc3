"""Random search: round r draws a fresh pool of independent noises; rounds do not depend on each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.noise import round_seeds
from ttsf_core.storage.records import RoundRecord
from ttsf_core.search.base import Strategy, StrategyArgs


class RandomArgs(StrategyArgs):
    search_method: Literal["random"] = "random"
    initial_pool_size: int = Field(2, ge=1, le=1024, description="random: noises in round 1; each round draws twice "
                                   "as many as the one before (2, 4, 8, ... by default) [2].")
    own: ClassVar[tuple[str, ...]] = ("initial_pool_size",)

    def pool_size(self, search_round: int) -> int:
        return self.initial_pool_size * 2 ** (search_round - 1)


class RandomSearch(Strategy):
    name = "random"
    independent_rounds = True
    Args = RandomArgs
    summary = "a fresh pool of independent noises each round, doubling (the paper's random search)"

    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        seeds = round_seeds(self.config.seed, prompt, search_round, self.search.pool_size(search_round))
        return [Candidate(noise=NoiseSpec(seed=seed), steps=self.full_steps) for seed in seeds]
