"""Search over paths (Ma et al. 2025, section 3.2, "Search over Paths"), on a flow-matching pipeline.

A round starts N noises (`num_paths`, doubling each round like random search's pool) and runs them to
step `path_start` of the schedule. Then, level by level: each kept sample is re-noised forward
`path_forward` of the steps, M times (`path_branches`, each with its own seeded noise), each branch is
denoised `path_backward` of the steps (more than it went back, so the level advances), its clean
prediction is decoded and graded, and the best N branches are kept. The last level ends at the last
step; its images are the round's final ones (with `path_verifier`, the best N of them by that verifier
are graded again by the run's verifier, the paper's closing random search over the N survivors).

Step counts come from shares of the schedule, so one setting serves 4-step and 50-step models. The
paper states the algorithm for ImageNet (SiT); the default shares here are ttsf's, chosen so that a
28-step FLUX.1-dev round spends about three full generations per path (BENCHMARKS.md measures them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ttsf_core.candidates import Candidate, Move, NoiseSpec, PathSpec
from ttsf_core.noise import derive_seed, round_seeds
from ttsf_core.storage.records import RoundRecord
from ttsf_core.search.base import GradedCandidate, LaterWork
from ttsf_core.search.on_path import OnPathArgs, OnPathStrategy, latest_stage, named, run_to, step_of


class PathsArgs(OnPathArgs):
    search_method: Literal["paths"] = "paths"
    num_paths: int = Field(2, ge=1, le=256, description="paths: samples kept at each level in round 1 (N); each "
                           "round starts twice as many as the one before [2].")
    path_branches: int = Field(2, ge=1, le=64, description="paths: re-noised branches of each kept sample at each "
                               "level (M) [2].")
    path_start: float = Field(0.25, gt=0, lt=1, description="paths: share of the schedule run before the search "
                              "begins (where the paper's sigma is) [0.25].")
    path_forward: float = Field(0.1, gt=0, lt=1, description="paths: share of the schedule each branch is "
                                "re-noised back (the paper's Delta f) [0.1].")
    path_backward: float = Field(0.2, gt=0, le=1, description="paths: share of the schedule each branch is then "
                                 "denoised (the paper's Delta b; more than path_forward) [0.2].")
    own: ClassVar[tuple[str, ...]] = ("num_paths", "path_branches", "path_start", "path_forward", "path_backward",
                                      "path_verifier")

    @model_validator(mode="after")
    def _backward_beyond_forward(self) -> "PathsArgs":
        if self.path_backward <= self.path_forward:
            raise ValueError(f"path_backward: received {self.path_backward}, allowed: more than path_forward "
                             f"({self.path_forward}), so that each level ends nearer the image")
        return self

    def pool_size(self, search_round: int) -> int:
        return self.paths_in(search_round) * self.path_branches

    def paths_in(self, search_round: int) -> int:
        return self.num_paths * 2 ** (search_round - 1)

    def levels(self, steps: int) -> list[tuple[int, int, int]]:
        """Each level's (step its samples are at, step they are re-noised back to, step they stop at)."""
        at, back, ahead = step_of(self.path_start, steps), step_of(self.path_forward, steps), \
            step_of(self.path_backward, steps)
        ahead = max(ahead, back + 1)
        found = []
        while at < steps:
            stop = min(at - back + ahead, steps)
            found.append((at, at - back, stop))
            at = stop
        return found

    def check_steps(self, steps: int) -> str | None:
        """Why these shares cannot drive a `steps`-step schedule, or None."""
        start, back = step_of(self.path_start, steps), step_of(self.path_forward, steps)
        if start >= steps:
            return f"path_start: received {self.path_start} ({start} of {steps} steps), allowed: a share that " \
                   "leaves steps to search"
        if back >= start:
            return (f"path_forward: received {self.path_forward} ({back} steps back from step {start} of {steps}), "
                    "allowed: less than path_start, so a branch is never re-noised to pure noise")
        return None

    def nfe(self, search_round: int, steps: int) -> int:
        """Denoiser evaluations of a round: N runs to the start, then N * M branches a level."""
        paths = self.paths_in(search_round)
        levels = self.levels(steps)
        return paths * levels[0][0] + sum(paths * self.path_branches * (stop - back) for _, back, stop in levels)

    def grades(self, search_round: int, steps: int) -> tuple[int, int]:
        """(intermediate grades, final grades) of a round."""
        paths, levels = self.paths_in(search_round), len(self.levels(steps))
        per_level = paths * self.path_branches
        if self.path_verifier is None:
            return per_level * (levels - 1), per_level
        return per_level * levels, paths


class PathsSearch(OnPathStrategy):
    name = "paths"
    Args = PathsArgs
    summary = ("N noises run part way; each level re-noises every kept sample M times, denoises further, grades "
               "the clean predictions and keeps the best N, until the last step (the paper's search over paths)")
    record_fields = {"levels": "each level's (at, re-noised back to, stop) steps"}

    def __init__(self, run):
        super().__init__(run)
        self.levels = self.search.levels(self.full_steps)

    def plan_round(self, prompt: str, search_round: int, history: Sequence[RoundRecord]) -> list[Candidate]:
        start = self.levels[0][0]
        prefix = named([self._rooted(seed, start) for seed in self._seeds(prompt, search_round)],
                       self.config.batch_size_for_img_gen)
        branches = [self._branch(prompt, search_round, 0, path, branch, parent=None)
                    for path in prefix for branch in range(self.search.path_branches)]
        return self._stage(branches, 0)

    def next_stage(self, prompt: str, search_round: int, history: Sequence[RoundRecord],
                   graded: Sequence[GradedCandidate]) -> list[Candidate] | None:
        if not graded:
            return self.plan_round(prompt, search_round, history)
        last = latest_stage(graded)
        level = next(number for number, (_, _, stop) in enumerate(self.levels)
                     if stop == last[0][1].candidate.path.stop)
        if last[0][1].candidate.stage == "final":
            return None
        kept = self._kept(last, self.search.paths_in(search_round))
        if level == len(self.levels) - 1:  # graded by the path verifier: the survivors by the run's
            return [item.candidate.model_copy(update={"stage": "final", "role": "sample", "parent": index})
                    for index, item in kept]
        branches = [self._branch(prompt, search_round, level + 1, item.candidate, branch, parent=index)
                    for index, item in kept for branch in range(self.search.path_branches)]
        return self._stage(branches, level + 1)

    def _seeds(self, prompt: str, search_round: int) -> list[int]:
        return round_seeds(self.config.seed, prompt, search_round, self.search.paths_in(search_round))

    def _rooted(self, seed: int, start: int) -> Candidate:
        return Candidate(noise=NoiseSpec(seed=seed), steps=self.full_steps, stage="path", role="sample",
                         path=PathSpec(moves=(run_to(start),)))

    def _branch(self, prompt: str, search_round: int, level: int, origin: Candidate, branch: int,
                parent: int | None) -> Candidate:
        """Branch `branch` of `origin`: re-noised back with its own seed (from the run's seed, the round,
        the level, the sample it branches from and its place among its siblings), then denoised on."""
        _, back, stop = self.levels[level]
        seed = derive_seed("ttsf-path-v1", self.config.seed, search_round, level, branch, origin.key(), prompt)
        return Candidate(noise=origin.noise, steps=self.full_steps, stage="path", role="branch", parent=parent,
                         path=origin.path.then(Move(kind="renoise", to=back, seed=seed), run_to(stop)))

    def _stage(self, branches: list[Candidate], level: int) -> list[Candidate]:
        last = level == len(self.levels) - 1 and self.search.path_verifier is None
        stage = named(branches, self.config.batch_size_for_img_gen)
        return [c.model_copy(update={"stage": "final"}) for c in stage] if last else stage

    def _kept(self, stage: list[tuple[int, GradedCandidate]], count: int) -> list[tuple[int, GradedCandidate]]:
        """The best `count` of a level by the grades that judged it (ties, and ungradeable ones last: the
        first drawn), in draw order."""
        scores = self.scores_of(stage)
        ranked = sorted(range(len(stage)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
        return [stage[i] for i in sorted(ranked[:count])]

    def round_fields(self, final: Sequence[GradedCandidate], best: int | None,
                     graded: Sequence[GradedCandidate] = ()) -> dict[str, Any]:
        return {"levels": [list(level) for level in self.levels]}

    def later_work(self, first: Sequence[Candidate]) -> LaterWork:
        """After the first level: N runs to the start (computed with it), the other levels, the
        survivors' final grades."""
        from ttsf_core.budget import runs_nfe

        paths = len(first) // self.search.path_branches
        nfe = self.search.nfe(paths_round(self.search, paths), self.full_steps) - runs_nfe(first)
        intermediate, final = self.search.grades(paths_round(self.search, paths), self.full_steps)
        first_path = len(first) if first and first[0].stage == "path" else 0
        return LaterWork(final_grades=final - (len(first) - first_path), path_grades=intermediate - first_path,
                         nfe=nfe, images=len(first) * (len(self.levels) - 1))


def paths_round(search: PathsArgs, paths: int) -> int:
    """The round that starts `paths` samples."""
    return (paths // search.num_paths).bit_length()

