"""Search strategies over initial noises: one file a strategy, one shared signature.

`plan_round(config, prompt, search_round, previous) -> list[int]` returns the candidate seeds of a
round; `previous` is the previous round's RoundRecord (None in round 1) for strategies that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ttsf_core.search import random as _random
from ttsf_core.verifiers.base import Grades

SEARCH_METHODS: dict[str, Callable] = {"random": _random.plan_round}
ROUNDS_ARE_INDEPENDENT: dict[str, bool] = {"random": _random.ROUNDS_ARE_INDEPENDENT}


def round_order(search_method: str, search_rounds: int) -> list[int]:
    """Rounds in the order to generate them. Independent rounds go largest first, so that while the
    biggest pools are graded the generator is still busy, and only the smallest pool is graded after
    the last image (the tail where the generator would otherwise sit idle)."""
    order = list(range(1, search_rounds + 1))
    return order[::-1] if ROUNDS_ARE_INDEPENDENT[search_method] else order


def select_best(grades: Sequence[Grades], metric: str) -> int:
    """Index of the best candidate by `metric`; ties go to the lowest index (the first drawn)."""
    if not grades:
        raise ValueError("select_best: received no graded candidates, allowed: at least one")
    scores = [grade.score(metric) for grade in grades]
    return max(range(len(scores)), key=lambda index: (scores[index], -index))
