"""What a config will spend before it runs: images, denoiser evaluations, verifier requests, tokens and
dollars (`ttsf estimate`), and the budget plan a run follows (ttsf_core.budget).

Tokens per request come from the output folder's earlier grades of the same grading identity (their
mean), else from the verifier's stated default (`typical_usage`: see the README's "What a run costs").
What is already stored costs nothing: a finished round, an image already made, a grade already given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttsf_core.budget import Allowance, RoundNeeds, measured_cost_per_request, newest_grades, plan, recorded_nfe, runs_nfe
from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.costs import ModelPrice, today
from ttsf_core.storage.records import RunLayout
from ttsf_core.resolved import ResolvedRun
from ttsf_core.search import Strategy
from ttsf_core.storage.store import Store
from ttsf_core.verifiers.base import Usage, add_usage
from ttsf_core.verifiers.catalog import member_names, verifier_class

SAMPLE_PROMPT_CHARS = 200  # a typical dataset prompt, for the default estimate of text tokens


@dataclass(frozen=True)
class Billing:
    """How a config's grading is billed: requests per image, what one request takes and costs."""

    requests_per_image: int
    usage_per_request: Usage | None  # a mean (measured) or the stated default; None: nothing billed
    cost_per_request: float | None  # None: no price for the model (or nothing billed)
    measured_on: int  # earlier grades the figures come from (0: the stated default)
    prices: tuple[ModelPrice, ...] = ()

    @property
    def source(self) -> str:
        if self.usage_per_request is None:
            return "the verifier is not billed"
        if self.measured_on:
            return f"the mean of {self.measured_on} earlier grades of this grading identity in the output folder"
        return "ttsf's stated default (no earlier grade in the output folder to measure)"


@dataclass
class RoundRow:
    search_round: int
    prompts: int = 0  # prompts that would run this round
    images: int = 0  # images to generate (not stored yet; a search on the path: its intermediate ones too)
    nfe: int = 0
    requests: int = 0
    path_grades: int = 0  # intermediate images graded by --path_verifier (not billed by the run's verifier)
    cost_usd: float | None = 0.0


@dataclass
class Estimate:
    config: RunConfig
    prompts: int
    billing: Billing
    rows: list[RoundRow] = field(default_factory=list)
    allowance: Allowance | None = None

    @property
    def requests(self) -> int:
        return sum(row.requests for row in self.rows)

    @property
    def cost_usd(self) -> float | None:
        costs = [row.cost_usd for row in self.rows]
        return None if any(cost is None for cost in costs) else round(sum(costs), 9)

    @property
    def images(self) -> int:
        return sum(row.images for row in self.rows)

    @property
    def nfe(self) -> int:
        return sum(row.nfe for row in self.rows)

    @property
    def path_grades(self) -> int:
        return sum(row.path_grades for row in self.rows)

    def batch_cost_usd(self) -> float | None:
        discounts = {price.batch_discount for price in self.billing.prices}
        if self.cost_usd is None or len(discounts) != 1:
            return None
        return round(self.cost_usd * (1 - discounts.pop()), 9)


def billing(config: RunConfig, store: Store, is_video: bool = False) -> Billing:
    """Requests per image (each billed member of an ensemble, each graded frame of a video) and what a
    request takes: measured on this grading identity's earlier grades, else the stated default."""
    args = config.verifier_args
    billed = [member for member in member_names(args.name) if getattr(verifier_class(member), "billed", False)]
    frames = config.export_args.grade_frames if is_video and config.export_args.video_grading == "frames" else 1
    if not billed:
        return Billing(0, None, None, 0)
    measured = [grade for grade in newest_grades(store.grades_dir, 500) if grade.usage]
    if measured:
        usage = add_usage(*(grade.usage for grade in measured))
        requests = sum(entry.requests for entry in usage) or 1
        mean = _mean_usage(usage, requests)
        cost, _ = measured_cost_per_request(store)
        return Billing(len(billed) * frames, mean, cost, len(measured), _prices(store, usage))
    typical = [verifier_class(member).typical_usage(args.model_copy(update={"name": member, "model_name": (
        args.model_name if len(member_names(args.name)) == 1 else None)}), "x" * SAMPLE_PROMPT_CHARS)
        for member in billed]
    cost = store.prices.cost(typical)
    per_request = None if cost is None else round(cost / len(typical), 9)
    return Billing(len(billed) * frames, _mean_usage(add_usage(typical), len(typical)), per_request, 0,
                   _prices(store, typical))


def _mean_usage(usage: tuple[Usage, ...], requests: int) -> Usage:
    first = usage[0]
    return Usage(model=first.model, model_version=first.model_version, requests=1,
                 **{name: round(sum(getattr(entry, name) for entry in usage) / requests)
                    for name in ("prompt_tokens", "image_tokens", "thought_tokens", "output_tokens")})


def _prices(store: Store, usage) -> tuple[ModelPrice, ...]:
    found = [store.prices.price_of(entry, today()) for entry in usage]
    return tuple(dict.fromkeys(price for price in found if price is not None))


def estimate(run: ResolvedRun, prompts: list[str], strategy: Strategy, store: Store,
             is_video: bool = False) -> Estimate:
    """Round by round: images to generate, their NFEs, requests and cost, of what is not yet stored;
    with a budget, only the rounds the budget allows."""
    config = run.config
    bill = billing(config, store, is_video)
    needs = RoundNeeds(run, strategy, store, bill.requests_per_image, bill.cost_per_request)
    indexed = list(enumerate(prompts))
    spent = recorded_nfe(RunLayout(run), indexed, config.search_args.search_rounds)
    allowance = plan(indexed, config.search_args.search_rounds, needs, config.budget, spent) \
        if config.budget.limited() else None
    layout = RunLayout(run)
    result = Estimate(config, len(prompts), bill, allowance=allowance)
    for search_round in range(1, config.search_args.search_rounds + 1):
        row = RoundRow(search_round)
        for index, prompt in indexed:
            if layout.record_path(prompt, search_round).is_file():
                continue
            if allowance is not None and not allowance.allows(index, search_round):
                continue
            need = needs(index, prompt, search_round)
            images, nfe, path_grades = _to_generate(run, strategy, store, prompt, search_round)
            row.prompts += 1
            row.images += images
            row.nfe += nfe
            row.path_grades += path_grades
            row.requests += need.requests
            row.cost_usd = None if row.cost_usd is None or need.cost_usd is None else \
                round(row.cost_usd + need.cost_usd, 9)
        result.rows.append(row)
    return result


def _to_generate(run: ResolvedRun, strategy: Strategy, store: Store, prompt: str,
                 search_round: int) -> tuple[int, int, int]:
    """Images of a round not in the store yet, their denoiser evaluations (a path's every run), and the
    grades of its intermediate images by --path_verifier."""
    first = strategy.next_stage(prompt, search_round, [], [])
    exact = strategy.independent_rounds or search_round == 1
    missing = [c for c in first if not exact or store.find_image(prompt, c) is None]
    later = strategy.later_work(first)
    images = len(missing) + later.images
    path_grades = 0
    if run.path_run is not None:
        path_grades = later.path_grades + (len(first) if first and first[0].stage == "path" else 0)
    return images, runs_nfe(missing) + later.nfe, path_grades


def budget_allowance(run: ResolvedRun, prompts: list[str], strategy: Strategy, store: Store,
                     is_video: bool = False) -> Allowance | None:
    """The rounds a run may take within its budget (None: no budget)."""
    config = run.config
    if not config.budget.limited():
        return None
    bill = billing(config, store, is_video)
    if config.budget.max_verifier_cost_usd is not None and bill.requests_per_image and bill.cost_per_request is None:
        model = bill.usage_per_request.billed_model if bill.usage_per_request else config.verifier_args.name
        raise ConfigError(f"budget.max_verifier_cost_usd: received {config.budget.max_verifier_cost_usd:g} with no "
                          f"price for {model}, allowed: a cost budget for a model with a price (add it to the config: "
                          f"prices: {{{model!r}: {{input_per_1m_usd: ..., output_per_1m_usd: ...}}}}), or "
                          "--max_verifier_requests")
    needs = RoundNeeds(run, strategy, store, bill.requests_per_image, bill.cost_per_request)
    indexed = list(enumerate(prompts))
    if config.budget.allocation == "adaptive":  # the first wave (ttsf_core.allocation decides the rest)
        from ttsf_core.allocation import Allocator

        return Allocator(run, indexed, needs).next_wave().allowance
    spent = recorded_nfe(RunLayout(run), indexed, config.search_args.search_rounds)
    return plan(indexed, config.search_args.search_rounds, needs, config.budget, spent)
