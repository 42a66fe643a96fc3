"""The strategy interface: plan a round's candidates from the prompt's graded history.

A round is one or more stages. Each stage is a list of candidates that are generated and graded
before the strategy is asked for the next; a round ends when the strategy has no further stage, and
its best is chosen among the last stage's ("final") candidates. Random and zero-order search have one
stage a round; cheap drafts (draft.py) wrap either in two.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ttsf_core.candidates import Candidate
from ttsf_core.config import RunConfig
from ttsf_core.records import RoundRecord
from ttsf_core.store import StoredImage
from ttsf_core.verifiers.base import Grades, Usage


class GradedCandidate(BaseModel):
    """A candidate with its stored image and its grades (None when the verifier never grades it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    candidate: Candidate
    image: StoredImage
    grades: Grades | None
    ungradeable: str | None = None
    usage: tuple[Usage, ...] = ()  # what grading it cost (when it was graded, in whichever run)
    cost_usd: float | None = None

    def score(self, metric: str) -> float | None:
        return None if self.grades is None else self.grades.score(metric)


class Strategy(ABC):
    """One search method. `independent_rounds`: whether a round's plan ignores earlier rounds (then
    every round is planned up front, largest first); otherwise round r waits for round r-1's record."""

    name: ClassVar[str]
    independent_rounds: ClassVar[bool]

    def __init__(self, config: RunConfig):
        from ttsf_core.search.selection import Selector

        self.config = config
        self.search = config.search_args
        self.full_steps = config.pipeline_call_args.num_inference_steps
        self.selector = Selector(config)

    @abstractmethod
    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        """The round's candidates at full steps. `history`: this prompt's records of earlier rounds."""

    def next_stage(self, prompt: str, search_round: int, history: Sequence[RoundRecord],
                   graded: Sequence[GradedCandidate]) -> list[Candidate] | None:
        """The next stage's candidates given this round's graded ones so far, or None: round over."""
        return None if graded else self.plan_round(prompt, search_round, history)

    def round_fields(self, final: Sequence[GradedCandidate], best: int | None) -> dict[str, Any]:
        """Strategy-specific record fields, from the final stage and the index of its best (None:
        no final image could be graded)."""
        return {}

    def later_stage_bound(self, first: Sequence[Candidate]) -> int:
        """The most candidates a round's stages after `first` (its first stage) may hold: what a budget
        reserves for them before they are planned."""
        return 0


def select_best(grades: Sequence[Grades], metric: str) -> int:
    """Index of the best candidate by `metric`; ties go to the lowest index (the first drawn)."""
    if not grades:
        raise ValueError("select_best: received no graded candidates, allowed: at least one")
    scores = [grade.score(metric) for grade in grades]
    return max(range(len(scores)), key=lambda index: (scores[index], -index))


def previous_record(history: Sequence[RoundRecord], search_round: int) -> RoundRecord | None:
    for record in history:
        if record.search_round == search_round - 1:
            return record
    return None
