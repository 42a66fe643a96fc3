"""Zero-order search (Ma et al. 2025; tt-scale-flux's `zero-order`, with every neighbour seeded).

Each round grades a pivot noise and `num_neighbors` neighbours on the sphere of the pivot's norm at
cosine similarity `threshold` to it. If a neighbour beats the pivot, the round's best becomes the
next round's pivot; otherwise the next round starts from a fresh noise. A carried pivot is the same
image as last round's best, so it costs no generation and no grading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.noise import candidate_seed, derive_seed
from ttsf_core.storage.records import RoundRecord
from ttsf_core.search.base import GradedCandidate, Strategy, StrategyArgs, previous_record


class ZeroOrderArgs(StrategyArgs):
    search_method: Literal["zero-order"] = "zero-order"
    threshold: float = Field(0.95, gt=0, lt=1, description="zero-order: cosine similarity of each neighbour to the "
                             "pivot [0.95].")
    num_neighbors: int = Field(4, ge=1, le=256, description="zero-order: neighbours graded each round [4].")
    own: ClassVar[tuple[str, ...]] = ("threshold", "num_neighbors")

    def pool_size(self, search_round: int) -> int:
        return 1 + self.num_neighbors


class ZeroOrderSearch(Strategy):
    name = "zero-order"
    independent_rounds = False
    Args = ZeroOrderArgs
    summary = ("a pivot and its seeded neighbours on the sphere each round; the best neighbour becomes the next "
               "pivot, else a fresh one (the paper's zero-order search)")
    record_fields = {"neighbors_improvement": "whether a neighbour beat the pivot (tt-scale-flux's key)"}

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
        if previous is not None and getattr(previous, "neighbors_improvement", False):
            return previous.best.noise
        # A fresh pivot is random search's candidate 0 of this round: the two share its image.
        return NoiseSpec(seed=candidate_seed(self.config.seed, prompt, search_round, 0))

    def round_fields(self, final: Sequence[GradedCandidate], best: int | None,
                     graded: Sequence[GradedCandidate] = ()) -> dict[str, Any]:
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
