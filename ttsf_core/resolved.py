"""A resolved run: the data `ttsf_core.resolve.resolve(config)` produces, on its own so that the layers
below resolving (the store, the records, the strategies) can require one without importing what
resolving needs. They take only a ResolvedRun: a RunConfig handed to them is a mistake of the caller
(it would be resolved again in every layer), refused with a TypeError that says so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttsf_core.config import RunConfig
    from ttsf_core.search.base import StrategyArgs


@dataclass(frozen=True, eq=False)
class ResolvedRun:
    config: RunConfig  # completed: its steps and metric are set, its search_args the strategy's own
    search: StrategyArgs
    generation_identity: dict[str, Any]
    grading_identity: dict[str, Any]  # the grade store's: the verifier's, and how videos are graded
    identity: dict[str, Any]  # the run's
    identity_hash: str
    # A search on the denoising path with --path_verifier: the same run graded by that verifier (its
    # grade store and metric rank the intermediate images). None: the run's verifier grades them all.
    path_run: "ResolvedRun | None" = None

    @property
    def steps(self) -> int:
        return self.config.pipeline_call_args.num_inference_steps

    @property
    def metric(self) -> str:
        return self.config.verifier_args.choice_of_metric


def require_resolved(run: object, who: str) -> ResolvedRun:
    """`run` when it is a ResolvedRun; otherwise a TypeError naming `who` and what it received."""
    if not isinstance(run, ResolvedRun):
        raise TypeError(f"{who}: received a {type(run).__name__}, allowed: a ResolvedRun "
                        "(ttsf_core.resolve.resolve(config), once per process)")
    return run
