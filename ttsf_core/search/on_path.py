"""What the two searches on the denoising path share (search over paths, FK steering): the intermediate
verifier, the steps their stages stop at, and how a stage's pipeline calls are named.

An intermediate candidate stops part way through the schedule; its image is the decoded clean
prediction there (ttsf_core.pipelines.paths), graded by `path_verifier` when one is set (a local scalar
reward, say, while Gemini picks among the final images), else by the run's verifier.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, field_validator

from ttsf_core.candidates import Candidate, Move, PathSpec
from ttsf_core.config import digest
from ttsf_core.search.base import GradedCandidate, Strategy, StrategyArgs


class OnPathArgs(StrategyArgs):
    path_verifier: str | None = Field(None, description="paths, fk: the verifier that grades intermediate images "
                                      "(e.g. imagestats, clip); the run's verifier grades the final ones [the run's "
                                      "verifier].")

    @field_validator("path_verifier")
    @classmethod
    def _one_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "," in value):
            raise ValueError("allowed: one registered verifier name (not an ensemble)")
        return value

    @field_validator("draft_steps")
    @classmethod
    def _no_drafts(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("allowed: unset (a search on the denoising path already grades samples part way; "
                             "drafts would only add cost)")
        return value


class OnPathStrategy(Strategy):
    """A search on the denoising path: rounds independent of each other (each starts its own noises),
    intermediate images ranked by the path verifier's metric when one is set."""

    independent_rounds = True

    def __init__(self, run):
        super().__init__(run)
        self.path_selector = self.selector_for_path()

    def scores_of(self, stage: list[tuple[int, GradedCandidate]]) -> list[float | None]:
        """A stage's scores by the grades that judged it (final: the run's; intermediate: the path's)."""
        selector = self.selector if stage[0][1].candidate.stage == "final" else self.path_selector
        return selector.scores([item.grades for _, item in stage])


def step_of(share: float, steps: int) -> int:
    """The schedule step a share of the steps stands for (rounded; at least 1)."""
    return max(1, round(share * steps))


def named(stage: Sequence[Candidate], batch_size: int) -> list[Candidate]:
    """The stage with its last runs named by the stage: its candidates (without that name) and the
    batch size, which decide its pipeline calls. A candidate's key so names every call before it."""
    blank = [_with_last_context(candidate, "") for candidate in stage]
    context = digest([batch_size, [candidate.key() for candidate in blank]], 10)
    return [_with_last_context(candidate, context) for candidate in stage]


def _with_last_context(candidate: Candidate, context: str) -> Candidate:
    moves = candidate.path.moves
    last = moves[-1].model_copy(update={"context": context})
    return candidate.model_copy(update={"path": PathSpec(moves=(*moves[:-1], last))})


def run_to(step: int) -> Move:
    """A run to `step`; its context is given when its stage is `named`."""
    return Move(kind="run", to=step, context="")


def latest_stage(graded: Sequence[GradedCandidate]) -> list[tuple[int, GradedCandidate]]:
    """The last graded stage, with each candidate's index in the round (its record index)."""
    if not graded:
        return []
    last = graded[-1].candidate
    start = len(graded)
    while start > 0 and graded[start - 1].candidate.stage == last.stage and \
            graded[start - 1].candidate.path.stop == last.path.stop:
        start -= 1
    return list(enumerate(graded))[start:]
