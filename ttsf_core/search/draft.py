"""Cheap drafts over any strategy: every candidate first at `draft_steps`, graded; only the best
`draft_keep` (and a zero-order pivot, so improvement is judged at full steps) are generated again at
full steps and graded; the round's best is chosen among the full-step images. A draft and a final
image of one noise differ in steps, so they never share a file or a stored grade. A round that would
keep every noise it draws (pool <= draft_keep) skips the drafts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ttsf_core.candidates import Candidate
from ttsf_core.storage.records import RoundRecord
from ttsf_core.search.base import GradedCandidate, Strategy


class DraftSearch(Strategy):
    def __init__(self, inner: Strategy):
        super().__init__(inner.run)
        self.inner = inner
        self.name = f"{inner.name}+draft"
        self.independent_rounds = inner.independent_rounds

    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        return self.inner.plan_round(prompt, search_round, history)

    def next_stage(self, prompt: str, search_round: int, history: Sequence[RoundRecord],
                   graded: Sequence[GradedCandidate]) -> list[Candidate] | None:
        if not graded:
            planned = self.plan_round(prompt, search_round, history)
            if len(planned) <= self.search.draft_keep:
                return planned  # every noise would be kept: drafting them would only add cost
            return [c.at(self.search.draft_steps, "draft") for c in planned]
        if any(item.candidate.stage == "final" for item in graded):
            return None
        kept = self.kept(graded)
        return [item.candidate.at(self.full_steps, "final") for item in kept] or None

    def kept(self, drafts: Sequence[GradedCandidate]) -> list[GradedCandidate]:
        """The best draft_keep gradeable drafts by the metric (ties: first drawn), pivots always, in
        draw order."""
        scores = self.selector.scores([item.grades for item in drafts])
        gradeable = [i for i, score in enumerate(scores) if score is not None]
        ranked = sorted(gradeable, key=lambda i: (-scores[i], i))
        keep = set(ranked[: self.search.draft_keep])
        keep |= {i for i, item in enumerate(drafts) if item.candidate.role == "pivot"}
        return [drafts[i] for i in sorted(keep)]

    def round_fields(self, final: Sequence[GradedCandidate], best: int | None,
                     graded: Sequence[GradedCandidate] = ()) -> dict[str, Any]:
        return self.inner.round_fields(final, best, graded)

    def later_stage_bound(self, first: Sequence[Candidate]) -> int:
        """Drafts: the kept ones (and every pivot) again at full steps; none when nothing was drafted."""
        if not any(candidate.stage == "draft" for candidate in first):
            return 0
        pivots = sum(candidate.role == "pivot" for candidate in first)
        return min(len(first), self.search.draft_keep + pivots)
