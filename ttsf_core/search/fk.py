"""FK steering (Singhal et al. 2025, "A General Framework for Inference-time Scaling and Steering of
Diffusion Models"): K particles denoised together, resampled part way by a potential over the rewards
of their clean predictions.

A round starts K particles (`num_particles`, doubling each round) in one pipeline call per stage (their
batch is K whatever batch_size_for_img_gen says). At each resampling step (every `fk_resample_every` of
the schedule from `fk_resample_start` to `fk_resample_end`) each particle's clean prediction is decoded
and graded, its potential computed from its lineage's rewards r (the metric's scores), and K parents
are drawn by the normalized weights (a seeded draw):
- max: G = exp(lambda * max of r along the lineage);
- sum: G = exp(lambda * sum of r along the lineage);
- difference: G = exp(lambda * (r - r of the parent at the step before)).
With `fk_ess_threshold`, a step resamples only when the effective sample size falls below that share
of K (the FK code's adaptive resampling). FLUX's sampler is deterministic, so a drawn particle is
refreshed by `fk_eta` of fresh seeded noise at that step (without it, copies would stay copies: the FK
paper's samplers are stochastic). The final particles are graded by the run's verifier and the best,
by the chosen metric, is the round's.

Defaults are the FK repository's text-to-image launch settings (k=4, lambda=10, potential max, resample
every 20 of 100 steps from 20 to 80), as shares of the schedule; fk_eta is ttsf's (0.5).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ttsf_core.candidates import Candidate, Move, NoiseSpec, PathSpec
from ttsf_core.noise import derive_seed, round_seeds
from ttsf_core.storage.records import RoundRecord
from ttsf_core.search.base import GradedCandidate, LaterWork
from ttsf_core.search.on_path import OnPathArgs, OnPathStrategy, latest_stage, named, run_to, step_of


class FKArgs(OnPathArgs):
    search_method: Literal["fk"] = "fk"
    num_particles: int = Field(4, ge=1, le=256, description="fk: particles in round 1 (K); each round runs twice as "
                               "many [4].")
    fk_potential: Literal["max", "sum", "difference"] = Field("max", description="fk: the potential over the "
                                                              "rewards along a particle's lineage [max].")
    fk_lambda: float = Field(10.0, gt=0, le=1000, description="fk: the potential's scale lambda [10].")
    fk_resample_start: float = Field(0.2, gt=0, lt=1, description="fk: share of the schedule at the first "
                                     "resampling step [0.2].")
    fk_resample_end: float = Field(0.8, gt=0, lt=1, description="fk: share of the schedule at the last resampling "
                                   "step [0.8].")
    fk_resample_every: float = Field(0.2, gt=0, lt=1, description="fk: share of the schedule between resampling "
                                     "steps [0.2].")
    fk_ess_threshold: float | None = Field(None, gt=0, le=1, description="fk: resample only when the effective "
                                           "sample size is below this share of K (adaptive) [every step].")
    fk_eta: float = Field(0.5, gt=0, le=1, description="fk: share of fresh noise a drawn particle gets at a "
                          "resampling step (FLUX's sampler is deterministic) [0.5].")
    own: ClassVar[tuple[str, ...]] = ("num_particles", "fk_potential", "fk_lambda", "fk_resample_start",
                                      "fk_resample_end", "fk_resample_every", "fk_ess_threshold", "fk_eta",
                                      "path_verifier")

    @model_validator(mode="after")
    def _start_before_end(self) -> "FKArgs":
        if self.fk_resample_end < self.fk_resample_start:
            raise ValueError(f"fk_resample_end: received {self.fk_resample_end}, allowed: at least fk_resample_start "
                             f"({self.fk_resample_start})")
        return self

    def pool_size(self, search_round: int) -> int:
        return self.particles_in(search_round)

    def particles_in(self, search_round: int) -> int:
        return self.num_particles * 2 ** (search_round - 1)

    def resampling_steps(self, steps: int) -> list[int]:
        """The steps particles are graded (and may be resampled) at, before the last."""
        found, share = [], self.fk_resample_start
        while share <= self.fk_resample_end + 1e-9:
            found.append(step_of(share, steps))
            share += self.fk_resample_every
        return sorted({step for step in found if step < steps})

    def check_steps(self, steps: int) -> str | None:
        if not self.resampling_steps(steps):
            return (f"fk_resample_start: received {self.fk_resample_start} with {steps} steps, allowed: shares that "
                    "put a resampling step before the last step")
        return None

    def nfe(self, search_round: int, steps: int) -> int:
        return self.particles_in(search_round) * steps

    def grades(self, search_round: int, steps: int) -> tuple[int, int]:
        """(intermediate grades, final grades) of a round."""
        particles = self.particles_in(search_round)
        return particles * len(self.resampling_steps(steps)), particles


class FKSteering(OnPathStrategy):
    name = "fk"
    Args = FKArgs
    summary = ("K particles denoised together, graded at resampling steps and resampled by a potential over their "
               "rewards; the best final particle (FK steering)")
    record_fields = {"resampling": "each resampling step: step, effective sample size, whether it resampled"}

    def __init__(self, run):
        super().__init__(run)
        self.stops = [*self.search.resampling_steps(self.full_steps), self.full_steps]

    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        seeds = round_seeds(self.config.seed, prompt, search_round, self.search.particles_in(search_round))
        particles = [Candidate(noise=NoiseSpec(seed=seed), steps=self.full_steps, stage="path", role="particle",
                               path=PathSpec(moves=(run_to(self.stops[0]),))) for seed in seeds]
        return self._named(particles)

    def next_stage(self, prompt: str, search_round: int, history: Sequence[RoundRecord],
                   graded: Sequence[GradedCandidate]) -> list[Candidate] | None:
        if not graded:
            return self.plan_round(prompt, search_round, history)
        last = latest_stage(graded)
        if last[0][1].candidate.stage == "final":
            return None
        step = last[0][1].candidate.path.stop
        stop = self.stops[self.stops.index(step) + 1]
        weights, _, resample = self.weights(graded, last)
        if resample:
            draw = random.Random(derive_seed("ttsf-fk-v1", self.config.seed, search_round, step, prompt))
            parents = draw.choices(range(len(last)), weights=weights, k=len(last))
        else:
            parents = list(range(len(last)))
        particles = []
        for number, chosen in enumerate(parents):
            index, item = last[chosen]
            moves = item.candidate.path.moves
            if resample:
                seed = derive_seed("ttsf-fk-refresh-v1", self.config.seed, search_round, step, number, prompt)
                moves = (*moves, Move(kind="refresh", to=step, seed=seed, eta=self.search.fk_eta))
            particles.append(item.candidate.model_copy(update={
                "path": PathSpec(moves=(*moves, run_to(stop))), "parent": index,
                "weight": round(weights[chosen], 6) if resample else None,
                "stage": "final" if stop == self.full_steps else "path"}))
        return self._named(particles)

    def _named(self, particles: list[Candidate]) -> list[Candidate]:
        return named(particles, len(particles))  # one call: every particle of the round together

    def batch_size_for(self, stage: Sequence[Candidate]) -> int:
        return max(len(stage), 1)  # K particles in one batched pipeline call

    def weights(self, graded: Sequence[GradedCandidate], last: list[tuple[int, GradedCandidate]]
                ) -> tuple[list[float], float, bool]:
        """The normalized weights of the last stage's particles, their effective sample size, and
        whether they are resampled."""
        carried = self._carried(graded)
        scores = self.scores_of(last)
        lam, kind = self.search.fk_lambda, self.search.fk_potential
        logs: list[float | None] = []
        for (index, item), score in zip(last, scores):
            if score is None:
                value = None  # an ungradeable particle has no weight
            elif kind == "difference":
                previous = carried.get(item.candidate.parent)
                value = lam * (score - (previous[0] if previous is not None else 0.0))
            else:
                value = lam * self._potential(carried, index)
            logs.append(value if value is not None and math.isfinite(value) else None)
        top = max((value for value in logs if value is not None), default=None)
        if top is None:
            raw = [1.0] * len(last)
        else:
            raw = [0.0 if value is None else math.exp(value - top) for value in logs]
        total = sum(raw)
        weights = [value / total for value in raw]
        ess = 1.0 / sum(weight * weight for weight in weights)
        threshold = self.search.fk_ess_threshold
        return weights, ess, threshold is None or ess < threshold * len(last)

    def _potential(self, carried: dict[int, tuple[float, float, float]], index: int) -> float:
        reward, running_max, running_sum = carried[index]
        return running_max if self.search.fk_potential == "max" else running_sum

    def _carried(self, graded: Sequence[GradedCandidate]) -> dict[int, tuple[float, float, float]]:
        """Each graded particle's (reward, max of rewards along its lineage, their sum), by its index."""
        carried: dict[int, tuple[float, float, float]] = {}
        start = 0
        while start < len(graded):
            stage = latest_stage(graded[: _stage_end(graded, start)])
            for (index, item), score in zip(stage, self.scores_of(stage)):
                parent = carried.get(item.candidate.parent) if item.candidate.parent is not None else None
                reward = score if score is not None else -math.inf
                carried[index] = (reward, reward if parent is None else max(reward, parent[1]),
                                  reward + (parent[2] if parent else 0.0))
            start = stage[-1][0] + 1
        return carried

    def round_fields(self, final: Sequence[GradedCandidate], best: int | None,
                     graded: Sequence[GradedCandidate] = ()) -> dict[str, Any]:
        steps, start = [], 0
        while start < len(graded):
            stage = latest_stage(graded[: _stage_end(graded, start)])
            if stage[0][1].candidate.stage == "path":
                _, ess, resampled = self.weights(graded[: stage[-1][0] + 1], stage)
                steps.append({"step": stage[0][1].candidate.path.stop, "ess": round(ess, 4), "resampled": resampled})
            start = stage[-1][0] + 1
        return {"resampling": steps}

    def later_work(self, first: Sequence[Candidate]) -> LaterWork:
        particles = len(first)
        intermediate = particles * (len(self.stops) - 1)
        nfe = particles * self.full_steps - sum(candidate.own_nfe for candidate in first)
        first_path = particles if first and first[0].stage == "path" else 0
        return LaterWork(final_grades=particles if first_path else 0, path_grades=intermediate - first_path, nfe=nfe,
                         images=particles * (len(self.stops) - 1))


def _stage_end(graded: Sequence[GradedCandidate], start: int) -> int:
    """The end (exclusive) of the stage that begins at `start`."""
    first = graded[start].candidate
    end = start
    while end < len(graded) and graded[end].candidate.stage == first.stage and \
            graded[end].candidate.path.stop == first.path.stop:
        end += 1
    return end
