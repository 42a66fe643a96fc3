"""Search strategies over initial noises: one file a strategy, holding the strategy and its arguments
model, one interface (base.Strategy). STRATEGIES is the one list of them: the config's choices, the
CLI's flags and choices, and the README's table (checked by a test) all come from it."""

from __future__ import annotations

from ttsf_core.resolved import ResolvedRun, require_resolved
from ttsf_core.search.base import GradedCandidate, Strategy, StrategyArgs
from ttsf_core.search.draft import DraftSearch
from ttsf_core.search.fk import FKSteering
from ttsf_core.search.paths import PathsSearch
from ttsf_core.search.random import RandomSearch
from ttsf_core.search.zero_order import ZeroOrderSearch

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (RandomSearch, ZeroOrderSearch, PathsSearch,
                                                                     FKSteering)}


def strategy_args(data: dict) -> StrategyArgs:
    """search_args validated as the union of every strategy's arguments, discriminated by search_method:
    the model of the strategy it names (a ValueError naming the method when none is registered)."""
    method = data.get("search_method")
    if method not in STRATEGIES:
        raise ValueError(f"search_args.search_method: received {method!r}, allowed: one of {', '.join(STRATEGIES)}")
    return STRATEGIES[method].Args.model_validate(data)


def build_strategy(run: "ResolvedRun") -> Strategy:
    """The run's strategy, wrapped in cheap drafts when `draft_steps` is set."""
    run = require_resolved(run, "build_strategy(run)")
    strategy = STRATEGIES[run.search.search_method](run)
    return DraftSearch(strategy) if run.search.draft_steps is not None else strategy


__all__ = ["STRATEGIES", "GradedCandidate", "Strategy", "StrategyArgs", "build_strategy", "strategy_args"]
