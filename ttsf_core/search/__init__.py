"""Search strategies over initial noises: one file a strategy, one interface (base.Strategy)."""

from __future__ import annotations

from ttsf_core.config import RunConfig
from ttsf_core.search.base import GradedCandidate, Strategy, select_best
from ttsf_core.search.draft import DraftSearch
from ttsf_core.search.random import RandomSearch
from ttsf_core.search.zero_order import ZeroOrderSearch

STRATEGIES: dict[str, type[Strategy]] = {"random": RandomSearch, "zero-order": ZeroOrderSearch}


def build_strategy(config: RunConfig) -> Strategy:
    """The configured strategy, wrapped in cheap drafts when `draft_steps` is set."""
    strategy = STRATEGIES[config.search_args.search_method](config)
    return DraftSearch(strategy) if config.search_args.draft_steps is not None else strategy


__all__ = ["STRATEGIES", "GradedCandidate", "Strategy", "build_strategy", "select_best"]
