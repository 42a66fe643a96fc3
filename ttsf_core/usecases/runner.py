"""Run a search directly (no orchestrator): the engine with the thread-pool executor.

`prepare_run` is every check that can fail on bad input, before any model loads; `run` loads the
pipeline only if some round still needs an image, then searches every prompt as one batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.budget import Allowance
from ttsf_core.engine.search_engine import BatchOutcome, Observer, SearchEngine
from ttsf_core.usecases.estimate import budget_allowance
from ttsf_core.engine.executors import ThreadExecutor
from ttsf_core.storage.files import probe_writable, sweep_temp_files, writable_problem, write_json
from ttsf_core.pipelines import check_devices, check_resolution, prompt_length_warnings
from ttsf_core.devices import pick_device
from ttsf_core.pipelines.speed import check_speed_options
from ttsf_core.prompts import PromptRead, count_note, prompt_warnings, read_prompts
from ttsf_core.storage.records import RunLayout
from ttsf_core.resolve import resolve
from ttsf_core.resolved import ResolvedRun
from ttsf_core.search import Strategy, build_strategy
from ttsf_core.storage.store import Store
from ttsf_core.verifiers.base import RetryableVerifierError, Verifier, verifier_batch_size
from ttsf_core.verifiers.registry import build_verifier


if TYPE_CHECKING:
    from ttsf_core.allocation import Allocator, Wave
    from ttsf_core.engine.generate import CandidateGenerator


@dataclass
class PreparedRun:
    run: ResolvedRun
    layout: RunLayout
    prompts: list[str]
    verifier: Verifier
    strategy: Strategy
    warnings: list[str] = field(default_factory=list)  # worth saying, not worth stopping for
    path_verifier: Verifier | None = None  # grades a search's intermediate images (--path_verifier)
    allowance: Allowance | None = None  # the rounds the budget gives each prompt (None: no budget)
    notes: list[str] = field(default_factory=list)  # worth knowing (e.g. how many of a dataset's prompts run)

    @property
    def config(self) -> RunConfig:
        """The run's config, completed (its steps, metric and strategy's arguments decided)."""
        return self.run.config

    def indexed_prompts(self) -> list[tuple[int, str]]:
        return list(enumerate(self.prompts))


def prepare_run(config: RunConfig, prompts: list[str] | None = None, write: bool = True) -> PreparedRun:
    """Every check that can fail on bad input, before any model is loaded; then (`write`) the run
    folder and its config.json (`start_run`). `prompts`: already loaded (the dataset is not read again)."""
    run = resolve(config)
    config = run.config
    check_path_search(config)
    verifier = build_verifier(config.verifier_args)
    check_video_grading(config, verifier)
    access_warnings = check_verifier_access(verifier)
    path_verifier = None if run.path_run is None else build_verifier(run.path_run.config.verifier_args)
    if path_verifier is not None:
        access_warnings += check_verifier_access(path_verifier)
    check_resolution(config)
    check_devices(config)
    if config.attention_backend is not None or config.quantize != "none":  # pick_device imports torch
        check_speed_options(config, pick_device(config.device))
    read = read_prompts(config.prompts) if prompts is None else PromptRead(prompts, None)
    prompts = read.prompts
    warnings = access_warnings + (prompt_warnings(config.prompts, prompts) if read.available is not None else []) + \
        prompt_length_warnings(config, prompts)
    notes = [note] if (note := count_note(config.prompts, read)) else []
    layout, store, strategy = RunLayout(run), Store(run), build_strategy(run)
    ensure_writable(layout.run_dir, config.output_dir, write=False)
    allowance = budget_allowance(run, prompts, strategy, store, config.budget.limited() and is_video_model(config))
    prepared = PreparedRun(run=run, layout=layout, prompts=prompts, verifier=verifier, strategy=strategy,
                           warnings=warnings, allowance=allowance, notes=notes, path_verifier=path_verifier)
    if write:
        start_run(prepared)
    return prepared


def start_run(prepared: PreparedRun) -> None:
    """Once every check has passed, and only then (a refused input leaves nothing behind): the run folder,
    swept of what a killed write left, and its config.json."""
    store = Store(prepared.run)
    ensure_writable(prepared.layout.run_dir, prepared.config.output_dir)
    for folder in (prepared.layout.run_dir, store.images_dir, store.grades_dir):
        sweep_temp_files(folder)
    write_config(prepared.layout, prepared.run)


def is_video_model(config: RunConfig) -> bool:
    """Whether the model makes videos (its pipeline class, read from model_index.json without weights)."""
    from ttsf_core.pipelines.families import family_of
    from ttsf_core.pipelines.signature import pipeline_class_name

    return family_of(pipeline_class_name(config.pretrained_model_name_or_path)).video


def check_path_search(config: RunConfig) -> None:
    """Search over paths and FK steering drive a flow-matching image pipeline through its own sigmas:
    refused, in one line, for a family that cannot (read from model_index.json, no weights)."""
    method = config.search_args.search_method
    if method not in ("paths", "fk"):
        return
    from ttsf_core.pipelines.families import FAMILIES, family_of
    from ttsf_core.pipelines.signature import pipeline_class_name

    class_name = pipeline_class_name(config.pretrained_model_name_or_path)
    if not family_of(class_name).drives_paths:
        able = ", ".join(name for family in FAMILIES if family.drives_paths for name in family.classes)
        raise ConfigError(f"search_args.search_method: received {method!r} for {class_name}, allowed: random or "
                          f"zero-order ({method} needs a flow-matching image pipeline whose sigmas it can start part "
                          f"way: {able})")
    if config.budget.limited() and config.search_args.path_verifier is not None:
        from ttsf_core.verifiers.registry import verifier_class

        if getattr(verifier_class(config.search_args.path_verifier), "billed", False):
            raise ConfigError(f"search_args.path_verifier: received {config.search_args.path_verifier!r} with a budget, "
                              "allowed: a local verifier (the budget counts the run's verifier; a billed path "
                              "verifier would go uncounted), or no budget")


def check_video_grading(config: RunConfig, verifier: Verifier) -> None:
    """Videos graded whole need a verifier that reads an mp4 (`reads_video`, `score_videos_partial`)."""
    if config.export_args.video_grading == "whole" and not getattr(verifier, "reads_video", False):
        raise ConfigError(
            f"export_args.video_grading: received 'whole' with verifier_args.name={config.verifier_args.name!r}, "
            "allowed: 'frames' (only a verifier that reads video, gemini, grades an mp4 whole)")


def check_verifier_access(verifier: Verifier) -> list[str]:
    """A verifier that can check its credentials cheaply (`check_access`) does so now: a rejected key
    or a model no longer served stops the run before any model loads; an unreachable service is only a
    warning (grading retries), as is what the verifier itself says is worth knowing (`access_warnings`)."""
    said = list(getattr(verifier, "access_warnings", lambda: [])())
    check = getattr(verifier, "check_access", None)
    if check is None:
        return said
    try:
        check()
    except RetryableVerifierError as error:
        return said + [f"the verifier could not be checked now ({error}); grading will retry"]
    return said


def write_config(layout: RunLayout, run: ResolvedRun) -> None:
    """config.json: the run's identity and the config that last ran in the folder (rewritten only on change)."""
    payload = {"identity": run.identity, "config": run.config.model_dump(mode="json")}
    path = layout.config_path
    if path.is_file():
        try:
            if json.loads(path.read_text(encoding="utf-8")) == payload:
                return
        except (OSError, ValueError):
            pass  # unreadable: rewritten below
    write_json(path, payload)


def ensure_writable(run_dir: Path, output_dir: Path, write: bool = True) -> None:
    """A ConfigError unless the run folder can be written: checked without writing (`write` False), or
    by creating it and writing a probe file (what the file system says is the last word)."""
    problem = writable_problem(run_dir)
    if problem is None and write:
        try:
            probe_writable(run_dir)
        except OSError as error:
            problem = error.strerror
    if problem is not None:
        raise ConfigError(f"output_dir: received {str(output_dir)!r}, allowed: a folder this user can write ({problem})")


def run(config: RunConfig | PreparedRun, generator: "CandidateGenerator | None" = None,
        observer: Observer | None = None) -> tuple[PreparedRun, BatchOutcome]:
    """Search every prompt; finished rounds are read back, stored images and grades reused.
    `generator`: an already loaded one (tests, benchmarks); otherwise loaded on first need."""
    prepared = config if isinstance(config, PreparedRun) else prepare_run(config)
    config = prepared.config

    def load_generator() -> "CandidateGenerator":
        from ttsf_core.engine.generate import CandidateGenerator  # torch and diffusers: only when generating
        from ttsf_core.pipelines import load_pipeline

        return generator or CandidateGenerator(load_pipeline(config), prepared.run)

    path_verifier = prepared.path_verifier
    with ThreadExecutor(prepared.run, prepared.verifier, load_generator, prepared.strategy,
                        path_verifier=path_verifier) as executor:
        engine = SearchEngine(prepared.run, executor, grade_chunk=verifier_batch_size(prepared.verifier),
                              observer=observer, strategy=prepared.strategy,
                              path_grade_chunk=verifier_batch_size(path_verifier) if path_verifier else None)
        if config.budget.allocation == "adaptive":
            outcome = run_adaptive(prepared, engine)
        else:
            outcome = engine.run_batch(prepared.indexed_prompts(), prepared.allowance)
    return prepared, outcome


def run_adaptive(prepared: PreparedRun, engine: SearchEngine) -> BatchOutcome:
    """Wave after wave (ttsf_core.allocation) until a wave gives no round; the outcome of all of them."""
    allocator = allocator_for(prepared)
    total, waves = None, []
    for _ in range(len(prepared.prompts) * prepared.config.search_args.search_rounds + 1):
        counts = total.counts if total is not None else None
        wave = allocator.next_wave(counts.verifier_requests if counts else 0, counts.cost_usd if counts else 0.0)
        waves.append(wave)
        allocator.write(waves)
        if wave.empty:
            break
        outcome = engine.run_batch(prepared.indexed_prompts(), wave.allowance)
        total = outcome if total is None else merge_outcomes(total, outcome)
        if outcome.failures:
            break
    if total is None:
        total = engine.run_batch(prepared.indexed_prompts(), waves[-1].allowance)  # reads back what is recorded
    total.over_budget = budget_stops(prepared, allocator, waves[-1])
    history = allocator.history()
    rounds = prepared.config.search_args.search_rounds
    total.counts.rounds_over_budget = sum(rounds - len(history[index]) for index in total.over_budget)
    total.counts.prompts_over_budget = len(total.over_budget)
    return total


def budget_stops(prepared: PreparedRun, allocator: "Allocator", last: "Wave") -> dict[int, int]:
    """prompt index -> the round it stopped before, for the prompts the budget stopped (a wave holds back
    every round it does not give: only these are over the budget)."""
    from ttsf_core.allocation import BUDGET_STOP

    history = allocator.history()
    return {index: len(history[index]) + 1 for index, why in last.stops.items() if why.endswith(BUDGET_STOP)}


def allocator_for(prepared: PreparedRun) -> "Allocator":
    from ttsf_core.allocation import Allocator
    from ttsf_core.budget import RoundNeeds
    from ttsf_core.usecases.estimate import billing
    from ttsf_core.verifiers.base import score_ceiling

    run = prepared.run
    store = Store(run)
    bill = billing(run.config, store, is_video_model(run.config))
    needs = RoundNeeds(run, prepared.strategy, store, bill.requests_per_image, bill.cost_per_request)
    return Allocator(run, prepared.indexed_prompts(), needs, score_ceiling(prepared.verifier))


def merge_outcomes(first: BatchOutcome, then: BatchOutcome) -> BatchOutcome:
    """Two waves' outcomes as one: every record once (the later wave reads back the earlier's), counts summed
    (rounds read back by the later wave are not counted as skipped again)."""
    counts = first.counts
    skipped = counts.rounds_skipped
    counts.add(then.counts)
    counts.rounds_skipped = skipped
    records = {(r.prompt_index, r.search_round): r for r in [*first.records, *then.records]}
    return BatchOutcome(sorted(records.values(), key=lambda r: (r.prompt_index, r.search_round)),
                        first.failures + then.failures, counts, then.unfinished_prompts, then.over_budget)
