"""Adaptive allocation of rounds across a dataset (`budget.allocation: adaptive`): spend the budget where
a prompt's next round is still expected to buy quality.

A run proceeds in waves. The first wave gives round 1 to every prompt (in dataset order, while the
budget lasts). Each later wave gives the next round to the prompts with the highest expected gain per
denoiser evaluation, until it has committed half of what is left of `budget.max_nfe` (at least one
round), so later waves decide on fresher curves. A prompt stops when it has run every round
(`search_rounds`), when its best reached the verifier's top score (a scale with one), when its best rose
by less than `plateau_delta` over its last `plateau_rounds` rounds, or when its next round no longer fits
the budget.

The expected gain of a prompt's next round is the expected improvement over its best so far of the
best of the m images the round chooses among (its final candidates), under a normal model of the
prompt's final-image scores: mean their observed mean, variance their observed variance shrunk toward
the dataset's pooled variance with SHRINK pseudo-observations (a prompt with little history borrows the
dataset's spread):
    EI = integral from best to infinity of (1 - Phi((x - mean) / sd)^m) dx,
computed on a fixed grid, and only up to the verifier's top score where its scale has one (the rubric
graders' 10): a prompt whose best is already there has nothing left to gain. Random search draws its round's images independently, so the model is its
own; for zero-order, paths and FK steering it is a heuristic on their final images' scores. Divided by
the round's NFEs (ttsf_core.budget: exact for independent rounds, an upper bound otherwise).

Every decision is a pure function of the config and the records, so a resumed run decides the same;
each is written to RUN_DIR/allocation.json: for every (prompt, round) it gave, why (first round, or the
expected gain, its NFEs and the ratio, and the wave), and for every prompt it stopped, why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ttsf_core.budget import Allowance, RoundNeeds, fits
from ttsf_core.storage.files import write_json
from ttsf_core.storage.records import RoundRecord, RunLayout, read_round_record

if TYPE_CHECKING:
    from ttsf_core.resolved import ResolvedRun

ALLOCATION_FILENAME = "allocation.json"
BUDGET_STOP = "does not fit what is left of the budget"
TOP_STOP = "its best reached the verifier's top score"
SHRINK = 4.0  # pseudo-observations of the dataset's pooled variance in a prompt's variance
GRID = 400  # points of the expected-improvement integral
MIN_SD = 1e-6


@dataclass(frozen=True)
class Decision:
    prompt_index: int
    search_round: int
    reason: str  # "first round" or "expected gain"
    nfe: int
    expected_gain: float | None = None
    gain_per_nfe: float | None = None
    wave: int = 0


@dataclass
class Wave:
    """One wave: the rounds it gives (an Allowance the engine runs) and why, and the prompts it stops."""

    number: int
    allowance: Allowance
    decisions: list[Decision] = field(default_factory=list)
    stops: dict[int, str] = field(default_factory=dict)  # prompt index -> why it gets no further round

    @property
    def empty(self) -> bool:
        return not self.decisions


def expected_improvement(scores: Sequence[float], best: float, draws: int, pooled_var: float | None,
                         ceiling: float | None = None) -> float:
    """E[min(best of `draws` new scores, ceiling) - best]^+ under the prompt's shrunk normal model."""
    count = len(scores)
    mean = sum(scores) / count
    own = sum((s - mean) ** 2 for s in scores) / (count - 1) if count > 1 else 0.0
    prior = pooled_var if pooled_var is not None else own
    var = (own * (count - 1) + prior * SHRINK) / (count - 1 + SHRINK) if count > 1 or pooled_var is not None else own
    sd = max(math.sqrt(var), MIN_SD)
    top = max(best, mean) + 8.0 * sd
    if ceiling is not None:
        top = min(top, ceiling)
    if top <= best:
        return 0.0
    width = (top - best) / GRID
    total = 0.0
    for step in range(GRID + 1):
        x = best + step * width
        tail = 1.0 - _phi((x - mean) / sd) ** draws
        total += tail * (0.5 if step in (0, GRID) else 1.0)
    return total * width


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


class Allocator:
    """The adaptive policy over one run's prompts (indexed as the dataset orders them)."""

    def __init__(self, run: "ResolvedRun", prompts: Sequence[tuple[int, str]], needs: RoundNeeds,
                 ceiling: float | None = None):
        """`ceiling`: the verifier's top score (verifiers.base.score_ceiling), None where it has none."""
        self.run, self.config = run, run.config
        self.ceiling = ceiling
        self.prompts = list(prompts)
        self.needs = needs
        self.layout = RunLayout(run)
        self.budget = run.config.budget
        self.rounds = run.config.search_args.search_rounds
        earlier = _read(self.layout.run_dir / ALLOCATION_FILENAME)["rounds"].values()
        self.waves = max((decision.get("wave", 0) for decision in earlier), default=0)  # decided before

    def history(self) -> dict[int, list[RoundRecord]]:
        found: dict[int, list[RoundRecord]] = {}
        for index, prompt in self.prompts:
            records = [read_round_record(self.layout.record_path(prompt, r)) for r in range(1, self.rounds + 1)]
            found[index] = [record for record in records if record is not None]
        return found

    def next_wave(self, spent_requests: int = 0, spent_cost_usd: float = 0.0) -> Wave:
        """The next wave, from the records; `spent_*`: what this invocation's earlier waves were billed
        (the verifier budgets are an invocation's; max_nfe counts every recorded round)."""
        history = self.history()
        spent = sum(record.nfe or 0 for records in history.values() for record in records)
        done = {index: len(records) for index, records in history.items()}
        self.waves += 1
        number = self.waves
        limits = self.budget
        allowance = Allowance(
            rounds=dict(done), search_rounds=self.rounds, budget=limits, spent_nfe=spent, requests=spent_requests,
            cost_usd=spent_cost_usd,
            max_requests=None if limits.max_verifier_requests is None else
            max(0, limits.max_verifier_requests - spent_requests),
            max_cost_usd=None if limits.max_verifier_cost_usd is None else
            max(0.0, limits.max_verifier_cost_usd - spent_cost_usd))
        wave = Wave(number, allowance)
        if self._resume_pending(wave, history):
            return wave
        fresh = [(index, prompt) for index, prompt in self.prompts if done[index] == 0]
        for index, prompt in fresh:  # every prompt's round 1 first
            self._give(wave, index, prompt, 1, "first round", None, None)
        if wave.decisions or not any(done.values()):
            return wave
        pooled = _pooled_variance(history)
        candidates = []
        for index, prompt in self.prompts:
            stop = wave.stops.get(index) or self._stop_reason(history[index])
            if stop is not None:
                wave.stops[index] = stop
                continue
            records = history[index]
            next_round = len(records) + 1
            need = self.needs(index, prompt, next_round)
            scores = [c.score for r in records for c in r.final_candidates() if c.score is not None]
            best = max((r.best_score for r in records if r.best_score is not None), default=None)
            if not scores or best is None:
                gain = 0.0
            else:
                draws = max(1, self.needs.strategy.pool_size(next_round))
                gain = expected_improvement(scores, best, draws, pooled, self.ceiling)
            ratio = gain / need.nfe if need.nfe else 0.0
            candidates.append((ratio, index, prompt, next_round, gain))
        cap = max(0, (self.budget.max_nfe - spent) // 2) if self.budget.max_nfe is not None else None
        for ratio, index, prompt, next_round, gain in sorted(candidates, key=lambda c: (-c[0], c[1])):
            if cap is not None and wave.decisions and wave.allowance.nfe >= cap:
                break
            self._give(wave, index, prompt, next_round, "expected gain", gain, ratio)
        return wave

    def _resume_pending(self, wave: Wave, history: dict[int, list[RoundRecord]]) -> bool:
        """A wave decided by an earlier invocation and not finished (a killed or failed run): given again
        as it was, so a resumed run decides what a run that was never stopped would have."""
        recorded = {(index, record.search_round) for index, records in history.items() for record in records}
        prompts = dict(self.prompts)
        pending = [decision for decision in _read(self.layout.run_dir / ALLOCATION_FILENAME)["rounds"].values()
                   if (decision["prompt_index"], decision["search_round"]) not in recorded
                   and decision["prompt_index"] in prompts]
        if not pending:
            return False
        self.waves -= 1
        wave.number = min(decision["wave"] for decision in pending)
        for decision in sorted(pending, key=lambda d: (d["search_round"], d["prompt_index"])):
            index, search_round = decision["prompt_index"], decision["search_round"]
            wave.allowance.rounds[index] = search_round
            wave.allowance.hold(index, self.needs(index, prompts[index], search_round))
            wave.decisions.append(Decision(**decision))
        return True

    def _give(self, wave: Wave, index: int, prompt: str, search_round: int, reason: str, gain: float | None,
              ratio: float | None) -> None:
        need = self.needs(index, prompt, search_round)
        if not fits(wave.allowance, need, self.budget):
            wave.stops[index] = f"round {search_round} ({need.nfe} NFEs, {need.requests} requests) {BUDGET_STOP}"
            return
        wave.allowance.rounds[index] = search_round
        wave.allowance.hold(index, need)
        wave.decisions.append(Decision(index, search_round, reason, need.nfe,
                                       None if gain is None else round(gain, 6),
                                       None if ratio is None else round(ratio, 9), wave.number))

    def _stop_reason(self, records: list[RoundRecord]) -> str | None:
        if len(records) >= self.rounds:
            return f"ran all {self.rounds} rounds"
        if self.ceiling is not None and _best_so_far(records)[-1] >= self.ceiling:
            return f"{TOP_STOP} ({self.ceiling:g})"
        k = self.budget.plateau_rounds
        if k is None or len(records) <= k:
            return None
        bests = _best_so_far(records)
        rise = bests[-1] - bests[-1 - k]
        if rise < self.budget.plateau_delta:
            return f"plateau: best rose {rise:.4g} over its last {k} rounds (< plateau_delta {self.budget.plateau_delta:g})"
        return None

    def write(self, waves: Sequence[Wave]) -> Path:
        """RUN_DIR/allocation.json, merged with what earlier invocations decided."""
        path = self.layout.run_dir / ALLOCATION_FILENAME
        data = _read(path)
        for wave in waves:
            for decision in wave.decisions:
                data["rounds"][f"p{decision.prompt_index}-r{decision.search_round}"] = vars(decision).copy()
            for index, reason in wave.stops.items():
                data["stops"][str(index)] = reason
        write_json(path, data)
        return path


def _read(path: Path) -> dict:
    import json

    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"rounds": data.get("rounds", {}), "stops": data.get("stops", {})}
    return {"rounds": {}, "stops": {}}


def _best_so_far(records: list[RoundRecord]) -> list[float]:
    found, best = [], -math.inf
    for record in sorted(records, key=lambda r: r.search_round):
        if record.best_score is not None:
            best = max(best, record.best_score)
        found.append(best)
    return found


def _pooled_variance(history: dict[int, list[RoundRecord]]) -> float | None:
    """The dataset's pooled within-prompt variance of final-image scores (None: no prompt has two)."""
    total, weight = 0.0, 0
    for records in history.values():
        scores = [c.score for r in records for c in r.final_candidates() if c.score is not None]
        if len(scores) > 1:
            mean = sum(scores) / len(scores)
            total += sum((s - mean) ** 2 for s in scores)
            weight += len(scores) - 1
    return total / weight if weight else None


def allocation_lines(frame, run_dir: str | Path) -> list[str]:
    """Where an adaptively allocated run's NFEs went, in plain sentences (report, summary, terminal):
    rounds a prompt got, NFEs a prompt, why prompts stopped. [] for a run without allocation.json."""
    path = Path(run_dir) / ALLOCATION_FILENAME
    if not path.is_file():
        return []
    data = _read(path)
    rounds = frame.groupby("prompt_index")["search_round"].max()
    nfe = frame.groupby("prompt_index")["nfe"].sum()
    spread = ", ".join(f"{count} with {r}" for r, count in sorted(rounds.value_counts().items()))
    kinds: dict[str, int] = {}
    for reason in data["stops"].values():
        kind = "plateau" if reason.startswith("plateau") else "every round" if reason.startswith("ran all") \
            else "budget" if reason.endswith(BUDGET_STOP) else "top score" if reason.startswith(TOP_STOP) else "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    stopped = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none yet"
    return [f"Adaptive allocation: {int(nfe.sum())} NFEs over {len(rounds)} prompts; rounds a prompt: {spread}; "
            f"NFEs a prompt: {int(nfe.min())}-{int(nfe.max())} (median {nfe.median():g}); stopped: {stopped} "
            f"(why each prompt got each round: {ALLOCATION_FILENAME})."]
