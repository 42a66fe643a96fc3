"""Random search: round r draws a fresh pool of independent noises; rounds do not depend on each other."""

from __future__ import annotations

from ttsf_core.config import RunConfig
from ttsf_core.noise import round_seeds


def plan_round(config: RunConfig, prompt: str, search_round: int, previous=None) -> list[int]:
    """The seeds of `search_round`'s candidates. `previous` (the last round's record) is unused here."""
    pool = config.search_args.pool_size(search_round)
    return round_seeds(config.seed, prompt, search_round, pool)


# Random search never looks at earlier rounds, so every round can be planned up front and overlapped.
ROUNDS_ARE_INDEPENDENT = True
