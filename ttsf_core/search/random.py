"""Random search: round r draws a fresh pool of independent noises; rounds do not depend on each other."""

from __future__ import annotations

from collections.abc import Sequence

from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.noise import round_seeds
from ttsf_core.records import RoundRecord
from ttsf_core.search.base import Strategy


class RandomSearch(Strategy):
    name = "random"
    independent_rounds = True

    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        seeds = round_seeds(self.config.seed, prompt, search_round, self.search.pool_size(search_round))
        return [Candidate(noise=NoiseSpec(seed=seed), steps=self.full_steps) for seed in seeds]
