"""The strategy interface: plan a round's candidates from the prompt's graded history.

A round is one or more stages. Each stage is a list of candidates that are generated and graded
before the strategy is asked for the next; a round ends when the strategy has no further stage, and
its best is chosen among the last stage's ("final") candidates. Random and zero-order search have one
stage a round; cheap drafts (draft.py) wrap either in two.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from ttsf_core.candidates import Candidate
from ttsf_core.config import MAX_POOL, CommonSearchArgs
from ttsf_core.storage.records import RoundRecord
from ttsf_core.storage.store import StoredImage
from ttsf_core.verifiers.base import Grades, Usage

if TYPE_CHECKING:
    from ttsf_core.resolved import ResolvedRun


class StrategyArgs(CommonSearchArgs):
    """A strategy's arguments: what every strategy takes (rounds, drafts), its `search_method` and its own
    fields, declared by the model in the strategy's file; nothing else (a field of another strategy is
    refused, saying whose it is). `own` names the fields that decide its records (its identity)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    search_method: str
    own: ClassVar[tuple[str, ...]] = ()

    def pool_size(self, search_round: int) -> int:
        """Noises a round draws (its final-stage candidates before any draft cut)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What decides the records of a run beyond its images and grades: the strategy and its own
        parameters. Not `search_rounds`: a longer run extends a shorter one in the same folder."""
        identity = {"search_method": self.search_method, **{name: getattr(self, name) for name in self.own}}
        if self.draft_steps is not None:
            identity |= {"draft_steps": self.draft_steps, "draft_keep": self.draft_keep}
        return identity

    @model_validator(mode="after")
    def _pools_are_bounded(self) -> "StrategyArgs":
        largest = max(self.pool_size(r) for r in range(1, self.search_rounds + 1))
        if largest > MAX_POOL:
            raise ValueError(f"search_rounds: received {self.search_rounds} (round {self.search_rounds} would draw "
                             f"{largest} noises), allowed: rounds whose largest pool is at most {MAX_POOL} noises")
        return self


@dataclass(frozen=True)
class LaterWork:
    """What a round's stages after its first may still cost: grades by the run's verifier, grades of
    intermediate images by the path verifier (ttsf_core.search.on_path), and denoiser evaluations."""

    final_grades: int = 0
    path_grades: int = 0
    nfe: int = 0
    images: int = 0  # new images (a grade of an image made earlier in the round makes none)


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
    """One search method: its file holds it and its arguments model (`Args`). `independent_rounds`:
    whether a round's plan ignores earlier rounds (then every round is planned up front, largest first);
    otherwise round r waits for round r-1's record. `record_fields`: the fields it adds to each round
    record (`round_fields`), with a line saying what each holds (the README's strategies table)."""

    name: ClassVar[str]
    independent_rounds: ClassVar[bool]
    Args: ClassVar[type[StrategyArgs]]
    summary: ClassVar[str] = ""
    record_fields: ClassVar[dict[str, str]] = {}

    def __init__(self, run: "ResolvedRun"):
        from ttsf_core.search.selection import Selector

        self.run = run
        self.config = run.config
        self.search = run.search
        self.full_steps = run.steps
        self.selector = Selector(run.config)

    def pool_size(self, search_round: int) -> int:
        return self.search.pool_size(search_round)

    @abstractmethod
    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        """The round's candidates at full steps. `history`: this prompt's records of earlier rounds."""

    def next_stage(self, prompt: str, search_round: int, history: Sequence[RoundRecord],
                   graded: Sequence[GradedCandidate]) -> list[Candidate] | None:
        """The next stage's candidates given this round's graded ones so far, or None: round over."""
        return None if graded else self.plan_round(prompt, search_round, history)

    def round_fields(self, final: Sequence[GradedCandidate], best: int | None,
                     graded: Sequence[GradedCandidate] = ()) -> dict[str, Any]:
        """Strategy-specific record fields, from the final stage and the index of its best (None:
        no final image could be graded)."""
        return {}

    def batch_size_for(self, stage: Sequence[Candidate]) -> int:
        """The most candidates one pipeline call of `stage` holds (batch_size_for_img_gen by default)."""
        return self.config.batch_size_for_img_gen

    def later_stage_bound(self, first: Sequence[Candidate]) -> int:
        """The most candidates a round's stages after `first` (its first stage) may hold, each at full
        steps: what a budget reserves for them before they are planned."""
        return 0

    def later_work(self, first: Sequence[Candidate]) -> LaterWork:
        """The most a round's stages after `first` may cost (by default: later_stage_bound's candidates,
        each graded by the run's verifier and generated at full steps)."""
        later = self.later_stage_bound(first)
        return LaterWork(final_grades=later, nfe=later * self.full_steps, images=later)

    def selector_for_path(self):
        """What ranks intermediate images: the path verifier's metric when one is set."""
        from ttsf_core.search.selection import Selector

        return Selector(self.run.path_run.config) if self.run.path_run is not None else self.selector


def previous_record(history: Sequence[RoundRecord], search_round: int) -> RoundRecord | None:
    for record in history:
        if record.search_round == search_round - 1:
            return record
    return None
