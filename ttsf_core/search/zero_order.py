"""Zero-order search (Ma et al. 2025; tt-scale-flux's `zero-order`, with every neighbour seeded).

Each round grades a pivot noise and `num_neighbors` neighbours on the sphere of the pivot's norm at
cosine similarity `threshold` to it. If a neighbour beats the pivot, the round's best becomes the
next round's pivot; otherwise the next round starts from a fresh noise. A carried pivot is the same
image as last round's best, so it costs no generation and no grading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.noise import candidate_seed, derive_seed
from ttsf_core.records import RoundRecord
from ttsf_core.search.base import GradedCandidate, Strategy, previous_record


class ZeroOrderSearch(Strategy):
    name = "zero-order"
    independent_rounds = False

    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        pivot = self.pivot(prompt, search_round, history)
        neighbours = [
            pivot.neighbour(derive_seed("ttsf-neighbour-v1", self.config.seed, search_round, k, prompt),
                            self.search.threshold)
            for k in range(1, self.search.num_neighbors + 1)
        ]
        return [Candidate(noise=pivot, steps=self.full_steps, role="pivot")] + [
            Candidate(noise=noise, steps=self.full_steps, role="neighbor") for noise in neighbours
        ]

    def pivot(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> NoiseSpec:
        previous = previous_record(history, search_round)
        if previous is not None and previous.neighbors_improvement:
            return previous.best.noise
        # A fresh pivot is random search's candidate 0 of this round: the two share its image.
        return NoiseSpec(seed=candidate_seed(self.config.seed, prompt, search_round, 0))

    def round_fields(self, final: Sequence[GradedCandidate], best: int | None) -> dict[str, Any]:
        """A neighbour improved on the pivot when one scored higher, or when the pivot could not be
        graded and a neighbour could (the best neighbour is then the better known noise)."""
        if best is None:
            return {"neighbors_improvement": False}
        scores = self.selector.scores([item.grades for item in final])
        pivot = next((s for s, item in zip(scores, final) if item.candidate.role == "pivot"), None)
        neighbours = [s for s, item in zip(scores, final) if item.candidate.role == "neighbor"]
        scored = [score for score in neighbours if score is not None]
        improved = bool(scored) and (pivot is None or max(scored) > pivot)
        return {"neighbors_improvement": improved}
