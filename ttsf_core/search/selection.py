"""How a set of graded images is ranked: by one metric, or by an ensemble's combination of its
members' metrics. Scores are relative to the set only for ensembles (a rank depends on the others),
so every comparison - a round's best, the drafts kept, a pivot against its neighbours - asks the
selector about the whole set it compares. Higher is better; an ungradeable image has no score.
"""

from __future__ import annotations

from collections.abc import Sequence

from ttsf_core.config import RunConfig
from ttsf_core.verifiers.base import Grades


class Selector:
    def __init__(self, config: RunConfig):
        args = config.verifier_args
        self.metric = args.choice_of_metric
        self.mode = args.ensemble
        self.members: list[str] = []
        if self.metric == "ensemble":
            from ttsf_core.verifiers.catalog import ensemble_metrics

            self.members = ensemble_metrics(args.name)[1]

    def scores(self, grades: Sequence[Grades | None]) -> list[float | None]:
        if not self.members:
            return [None if g is None else g.score(self.metric) for g in grades]
        graded = [index for index, g in enumerate(grades) if g is not None]
        combined = _mean_rank_scores if self.mode == "rank" else _mean_scaled_scores
        values = combined([[grades[i].score(m) for i in graded] for m in self.members]) if graded else []
        found: list[float | None] = [None] * len(grades)
        for index, value in zip(graded, values):
            found[index] = value
        return found

    def best(self, grades: Sequence[Grades | None]) -> int | None:
        """Index of the best gradeable one; ties go to the first (the first drawn)."""
        scores = self.scores(grades)
        gradeable = [index for index, score in enumerate(scores) if score is not None]
        return max(gradeable, key=lambda index: (scores[index], -index)) if gradeable else None


def _mean_rank_scores(columns: list[list[float]]) -> list[float]:
    """Each member ranks the images (1 = best, ties share their mean rank); the mean rank over members,
    mapped to [0, 1] so that higher is better: 1 - (mean rank - 1) / (n - 1)."""
    count = len(columns[0])
    if count == 1:
        return [1.0]
    ranks = [average_ranks(column) for column in columns]
    return [round(1 - (sum(r[i] for r in ranks) / len(ranks) - 1) / (count - 1), 6) for i in range(count)]


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n from the highest value, ties sharing their mean rank."""
    ordered = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    position = 0
    while position < len(ordered):
        tie_end = position
        while tie_end + 1 < len(ordered) and values[ordered[tie_end + 1]] == values[ordered[position]]:
            tie_end += 1
        for k in range(position, tie_end + 1):
            ranks[ordered[k]] = (position + tie_end) / 2 + 1
        position = tie_end + 1
    return ranks


def _mean_scaled_scores(columns: list[list[float]]) -> list[float]:
    """Each member's scores min-max scaled to [0, 1] among the images (all equal: 0.5), then averaged:
    members on scales as different as CLIPScore (~30) and ImageReward (~0) weigh the same."""
    scaled = []
    for column in columns:
        low, high = min(column), max(column)
        scaled.append([0.5 if high == low else (value - low) / (high - low) for value in column])
    return [round(sum(s[i] for s in scaled) / len(scaled), 6) for i in range(len(columns[0]))]
