"""Budgets that stop cleanly: which rounds an invocation may run within `--max_verifier_requests` and
`--max_verifier_cost`, decided before anything runs.

Rounds are taken in order: every prompt's round 1, then every prompt's round 2, ... (prompts in dataset
order). Each round not yet recorded reserves what it may need: one billed request per image without a
stored grade (frames of a video each count; an ensemble's billed members each count), priced at the
cost per request measured in the output folder's earlier grades (or ttsf's stated default). A prompt
stops before the first round whose reservation would go over; its later rounds are not run either.
The plan is a pure function of the config and the stores, so the same command plans the same rounds,
and a re-run, whose finished rounds reserve nothing, pays only for the rounds not yet done.

The reservations are upper bounds for requests; costs are estimates. Should a run's actual spending
reach the limit anyway (answers longer than estimated, answers asked again), the engine stops sending
requests there (`Allowance.spent_out`): nothing finished is lost, and a later run pays only the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from ttsf_core.config import BudgetArgs
from ttsf_core.storage.records import RunLayout
from ttsf_core.storage.store import StoredGrade

if TYPE_CHECKING:
    from ttsf_core.resolved import ResolvedRun
    from ttsf_core.search import Strategy
    from ttsf_core.storage.store import Store

# Earlier grades read to measure what one request costs (the newest first).
MEASURED_GRADES = 500


@dataclass(frozen=True)
class RoundNeed:
    """What a round not yet recorded may need: billed requests (an upper bound), their estimated cost
    (None: no price known), and denoiser evaluations (an upper bound: exact for independent rounds)."""

    requests: int
    cost_usd: float | None
    nfe: int = 0


class Allowance(BaseModel):
    """The rounds each prompt may run, and the spending that plan reserved (a flow parameter: plain data)."""

    model_config = ConfigDict(extra="forbid")
    rounds: dict[int, int]  # prompt index -> its last round allowed (0: none)
    search_rounds: int
    requests: int = 0  # reserved by the allowed rounds not yet recorded
    cost_usd: float = 0.0
    nfe: int = 0  # denoiser evaluations reserved by them
    spent_nfe: int = 0  # denoiser evaluations of the rounds already recorded (budget.max_nfe counts them)
    stopped: dict[int, int] = Field(default_factory=dict)  # prompt index -> the round it stops before
    # prompt index -> what its allowed rounds reserved (requests, dollars)
    reserved: dict[int, tuple[int, float]] = Field(default_factory=dict)
    budget: BudgetArgs = Field(default_factory=BudgetArgs)
    # The hard stop for one batch (its share of the budget): reached, it sends no further request.
    max_requests: int | None = None
    max_cost_usd: float | None = None

    def hold(self, prompt_index: int, found: RoundNeed) -> None:
        """Reserve what a round it allows may need."""
        self.nfe += found.nfe
        self.requests += found.requests
        self.cost_usd = round(self.cost_usd + (found.cost_usd or 0.0), 9)
        requests, cost = self.reserved.get(prompt_index, (0, 0.0))
        self.reserved[prompt_index] = (requests + found.requests, round(cost + (found.cost_usd or 0.0), 9))

    def allows(self, prompt_index: int, search_round: int) -> bool:
        return search_round <= self.rounds.get(prompt_index, self.search_rounds)

    def spent_out(self, counts) -> bool:
        """Whether a batch's actual spending (engine.BatchCounts) reached its hard stop."""
        return (self.max_requests is not None and counts.verifier_requests >= self.max_requests) or \
            (self.max_cost_usd is not None and counts.cost_usd >= self.max_cost_usd)

    def rounds_not_run(self) -> int:
        return sum(self.search_rounds - self.rounds.get(index, self.search_rounds) for index in self.stopped)

    def for_batch(self, indices: Sequence[int], others: Sequence[int] = (), spent_requests: int = 0,
                  spent_cost: float = 0.0) -> "Allowance":
        """This plan for one batch's prompts, with the batch's hard stop: the whole budget less what was
        already spent (`spent_*`: batches that ran before it) and what the prompts of batches still to
        run or running beside it (`others`) reserved."""
        wanted = set(indices)
        held_requests = sum(self.reserved.get(index, (0, 0.0))[0] for index in others if index not in wanted)
        held_cost = sum(self.reserved.get(index, (0, 0.0))[1] for index in others if index not in wanted)
        limits = self.budget
        return Allowance(
            rounds={index: last for index, last in self.rounds.items() if index in wanted},
            search_rounds=self.search_rounds, stopped={i: r for i, r in self.stopped.items() if i in wanted},
            reserved={i: r for i, r in self.reserved.items() if i in wanted}, budget=limits,
            requests=sum(self.reserved.get(index, (0, 0.0))[0] for index in wanted),
            cost_usd=round(sum(self.reserved.get(index, (0, 0.0))[1] for index in wanted), 9),
            max_requests=None if limits.max_verifier_requests is None else
            max(0, limits.max_verifier_requests - spent_requests - held_requests),
            max_cost_usd=None if limits.max_verifier_cost_usd is None else
            max(0.0, limits.max_verifier_cost_usd - spent_cost - held_cost))


def plan(prompts: Sequence[tuple[int, str]], search_rounds: int, need: Callable[[int, str, int], RoundNeed | None],
         budget: BudgetArgs, spent_nfe: int = 0) -> Allowance:
    """Walk rounds in order (round 1 of every prompt, then round 2, ...) and allow each round whose need
    fits what is left; a prompt stops before its first round that does not fit. `need` returns None for
    a round already recorded (it costs nothing now; `spent_nfe`: what the recorded rounds cost, which
    budget.max_nfe counts)."""
    allowance = Allowance(rounds={index: 0 for index, _ in prompts}, search_rounds=search_rounds, budget=budget,
                          max_requests=budget.max_verifier_requests, max_cost_usd=budget.max_verifier_cost_usd,
                          spent_nfe=spent_nfe)
    for search_round in range(1, search_rounds + 1):
        for index, prompt in prompts:
            if index in allowance.stopped:
                continue
            found = need(index, prompt, search_round)
            if found is not None and not fits(allowance, found, budget):
                allowance.stopped[index] = search_round
                continue
            allowance.rounds[index] = search_round
            if found is not None:
                allowance.hold(index, found)
    return allowance


def fits(allowance: Allowance, found: RoundNeed, budget: BudgetArgs) -> bool:
    """Whether `found` fits what the budget leaves beside what `allowance` already holds."""
    if budget.max_nfe is not None and allowance.spent_nfe + allowance.nfe + found.nfe > budget.max_nfe:
        return False
    if budget.max_verifier_requests is not None and allowance.requests + found.requests > budget.max_verifier_requests:
        return False
    if budget.max_verifier_cost_usd is not None:
        if found.cost_usd is None:
            return found.requests == 0
        return allowance.cost_usd + found.cost_usd <= budget.max_verifier_cost_usd + 1e-12
    return True


class RoundNeeds:
    """What each round of a search may need from the verifier, read from the strategy and the stores."""

    def __init__(self, run: "ResolvedRun", strategy: "Strategy", store: "Store", requests_per_image: int,
                 cost_per_request: float | None):
        self.config, self.strategy, self.store = run.config, strategy, store
        self.path_verifier = run.path_run is not None  # intermediate images graded by it (not billed)
        self.layout = RunLayout(run)
        self.requests_per_image = requests_per_image
        self.cost_per_request = cost_per_request

    def __call__(self, prompt_index: int, prompt: str, search_round: int) -> RoundNeed | None:
        if self.layout.record_path(prompt, search_round).is_file():
            return None
        images = self.images_to_grade(prompt, search_round)
        requests = images * self.requests_per_image
        cost = None if self.cost_per_request is None else round(requests * self.cost_per_request, 9)
        return RoundNeed(requests, cost if requests else 0.0, self.nfe(prompt, search_round))

    def nfe(self, prompt: str, search_round: int) -> int:
        """The round's denoiser evaluations as its record will count them (budget.max_nfe's unit: the
        search's own cost, whether or not another run already made some of its images): its first stage
        where it is planned without history, its later stages as much as they may cost."""
        first = self.strategy.next_stage(prompt, search_round, [], [])
        return runs_nfe(first) + self.strategy.later_work(first).nfe

    def images_to_grade(self, prompt: str, search_round: int) -> int:
        """Images of the round without a stored grade: its first stage exactly where the strategy plans
        it without history (independent rounds, and every round 1), else all of it; later stages (kept
        drafts at full steps) as many as they may hold."""
        first = self.strategy.next_stage(prompt, search_round, [], [])
        exact = self.strategy.independent_rounds or search_round == 1
        by_run_verifier = not (self.path_verifier and first and first[0].stage == "path")
        ungraded = sum(not exact or not self._graded(prompt, candidate) for candidate in first) if by_run_verifier \
            else 0
        later = self.strategy.later_work(first)
        return ungraded + later.final_grades + (0 if self.path_verifier else later.path_grades)

    def _graded(self, prompt: str, candidate) -> bool:
        image = self.store.find_image(prompt, candidate)
        return image is not None and self.store.find_grade(prompt, image.sha256) is not None


def runs_nfe(candidates) -> int:
    """Denoiser evaluations of the candidates' runs, each run once (a path's shared ancestors too)."""
    return sum(dict(run for candidate in candidates for run in candidate.runs()).values())


def recorded_nfe(layout: RunLayout, prompts: Sequence[tuple[int, str]], search_rounds: int) -> int:
    """Denoiser evaluations the prompts' recorded rounds spent (what budget.max_nfe counts first)."""
    from ttsf_core.storage.records import read_round_record

    total = 0
    for _, prompt in prompts:
        for search_round in range(1, search_rounds + 1):
            record = read_round_record(layout.record_path(prompt, search_round))
            total += (record.nfe or 0) if record is not None else 0
    return total


def measured_cost_per_request(store: "Store", limit: int = MEASURED_GRADES) -> tuple[float | None, int]:
    """The mean cost of one billed request among the newest earlier grades of this grading identity
    (None when none carries a cost), and how many grades it was measured on."""
    costs, requests = 0.0, 0
    measured = 0
    for grade in newest_grades(store.grades_dir, limit):
        if grade.cost_usd is None or not grade.usage:
            continue
        costs += grade.cost_usd
        requests += sum(entry.requests for entry in grade.usage)
        measured += 1
    return (round(costs / requests, 9) if requests else None), measured


def newest_grades(folder: Path, limit: int) -> list[StoredGrade]:
    """Up to `limit` stored grades of a grading folder, the newest files first."""
    paths = sorted(Path(folder).glob("*/*.json"), key=lambda path: path.stat().st_mtime, reverse=True)[:limit]
    found = []
    for path in paths:
        try:
            found.append(StoredGrade.model_validate(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue  # a grade being written, or not a grade: not a measurement
    return found
