"""`ttsf estimate`: what a `ttsf run` with the same flags will spend, printed before anything runs.

Nothing is generated, graded or sent, no model is loaded and no key is needed: the plan is read from
the strategy, the stores of the output folder (what is done costs nothing) and the price table.
"""

from __future__ import annotations

from collections import Counter

import click

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.costs import ModelPrice
from ttsf_core.usecases.estimate import Estimate, estimate
from ttsf_core.verifiers.base import VerifierConfigError


def estimate_and_print(config: RunConfig) -> None:
    from ttsf.exit import fail
    from ttsf_core.prompts import load_prompts
    from ttsf_core.usecases.runner import is_video_model
    from ttsf_core.search import build_strategy
    from ttsf_core.resolve import resolve
    from ttsf_core.storage.store import Store
    from ttsf_core.verifiers.registry import check_settings_for

    try:
        check_settings_for(config.verifier_args)
        prompts = load_prompts(config.prompts)
        run = resolve(config)
        found = estimate(run, prompts, build_strategy(run), Store(run), is_video_model(run.config))
    except (ConfigError, VerifierConfigError) as error:
        fail(str(error))
    for line in estimate_lines(found):
        click.echo(line)


def estimate_lines(found: Estimate) -> list[str]:
    config, bill = found.config, found.billing
    search = config.search_args
    lines = [f"Estimate for {_count(found.prompts, 'prompt')} x {_count(search.search_rounds, 'round')} "
             f"({search.search_method} search), graded by {config.verifier_args.name}"
             f"{_model_part(found)}; nothing has run:", ""]
    header = ("round", "prompts", "images to make", "NFEs", "requests", "cost (USD)")
    rows = [(str(row.search_round), str(row.prompts), str(row.images), str(row.nfe), str(row.requests),
             _usd(row.cost_usd)) for row in found.rows]
    rows.append(("total", "", str(found.images), str(found.nfe), str(found.requests), _usd(found.cost_usd)))
    if found.path_grades:  # a search on the denoising path with --path_verifier
        header += (f"{search.path_verifier} grades",)
        rows = [(*cells, str(row.path_grades)) for cells, row in zip(rows, found.rows)] + \
            [(*rows[-1], str(found.path_grades))]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    for cells in (header, *rows):
        lines.append("  " + "  ".join(cell.rjust(width) for cell, width in zip(cells, widths)))
    lines.append("")
    if bill.usage_per_request is not None:
        usage = bill.usage_per_request
        lines.append(f"per request: ~{usage.prompt_tokens:,} prompt tokens ({usage.image_tokens:,} of them the "
                     f"image), ~{usage.thought_tokens:,} thought, ~{usage.output_tokens:,} answer; from "
                     f"{bill.source}; {_count(bill.requests_per_image, 'request')} an image")
        lines += [f"price: {_price_line(price)}" for price in bill.prices] or \
            [f"price: none known for {usage.billed_model}: cost not estimated (add it to the config: prices: "
             f"{{{usage.billed_model!r}: {{input_per_1m_usd: ..., output_per_1m_usd: ...}}}})"]
        batch = found.batch_cost_usd()
        if batch is not None and found.cost_usd:
            lines.append(f"through Google's Batch API ({bill.prices[0].batch_discount:.0%} off): {_usd(batch)} USD")
    else:
        lines.append(f"{config.verifier_args.name} is not billed: it sends no request to a paid API")
    lines += _budget_lines(found)
    return lines


def _model_part(found: Estimate) -> str:
    usage = found.billing.usage_per_request
    return f" ({usage.model})" if usage is not None else ""


def _price_line(price: ModelPrice) -> str:
    when = f", until {price.valid_until}" if price.valid_until else ""
    when += f", from {price.valid_from}" if price.valid_from else ""
    source = f"; {price.source}" if price.source else ""
    return (f"{price.model} ${price.input_per_1m_usd:.2f} in / ${price.output_per_1m_usd:.2f} out (thoughts included) per "
            f"1M tokens{when}{source}")


def _budget_lines(found: Estimate) -> list[str]:
    allowance = found.allowance
    if allowance is None:
        return []
    budget = allowance.budget
    limits = " and ".join(part for part in (
        f"--max_verifier_requests {budget.max_verifier_requests}" if budget.max_verifier_requests else "",
        f"--max_verifier_cost {budget.max_verifier_cost_usd:g}" if budget.max_verifier_cost_usd else "") if part)
    if not allowance.stopped:
        return [f"budget: {limits} covers every round above"]
    stops = Counter(allowance.stopped.values())
    where = ", ".join(f"{_count(count, 'prompt')} before round {search_round}" for search_round, count in sorted(stops.items()))
    return [f"budget: {limits} covers the table above; each prompt stops before the first round that would go over "
            f"({where}; {_count(allowance.rounds_not_run(), 'round')} not run)"]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"
