"""One batch of prompts through the search engine, with every job a Prefect task run.

The loop is ttsf_core.engine's (the same as `ttsf_core.runner`'s); this flow only builds the Prefect
executor, keeps the run's progress true as prompts finish, and shows the batch's results on its
page. Finished rounds are read back, stored images and grades are reused, so a re-run or a retry
redoes nothing finished.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.monitor import RunView, gallery_markdown
from tasks import runtime
from tasks.executor import PrefectExecutor
from ttsf_core.budget import Allowance
from ttsf_core.config import RunConfig
from ttsf_core.engine import BatchCounts, Observer, SearchEngine
from ttsf_core.files import write_json
from ttsf_core.locks import RunLock
from ttsf_core.prompts import read_prompt_list
from ttsf_core.records import RoundRecord, RunLayout
from ttsf_core.verifiers.base import VerifierConfigError, verifier_batch_size


class BatchSummary(BaseModel):
    """What a batch run did: counts and failures, never images. Written to RUN_DIR/batches/ (so a
    dataset run reads it whichever worker ran the batch) and returned (also as a failed run's data)."""

    batch_index: int
    counts: dict[str, int | float]
    failures: list[str]
    unfinished_prompts: list[int]
    fatal: bool = False  # the verifier refused its configuration (a rejected key): stop every batch
    worker: str = ""  # where it ran: the Prefect worker's name, host and process


def summary_path(config: RunConfig, batch_index: int) -> Path:
    return RunLayout(config).run_dir / "batches" / f"batch-{batch_index}.json"


def read_summary(config: RunConfig, batch_index: int) -> BatchSummary | None:
    path = summary_path(config, batch_index)
    return BatchSummary.model_validate_json(path.read_text(encoding="utf-8")) if path.is_file() else None


def _where() -> str:
    worker = os.environ.get("PREFECT__WORKER_NAME")
    place = f"{socket.gethostname()} pid {os.getpid()}"
    return f"{worker} ({place})" if worker else place


class _FlowObserver(Observer):
    """Logs each round's best and keeps the run's progress true as each prompt finishes."""

    def __init__(self, logger, view: RunView | None, rounds: int, recorded: dict[int, int]):
        self.logger, self.view, self.rounds = logger, view, rounds
        self.recorded = dict(recorded)
        self.finished_here = 0

    def round_recorded(self, record: RoundRecord, counts: BatchCounts) -> None:
        if record.best is None:
            self.logger.warning("prompt %d round %d: none of its %d images could be graded", record.prompt_index,
                                record.search_round, len(record.candidates))
        else:
            self.logger.info("prompt %d round %d: best %s = %.3f (seed %s, noise %s)", record.prompt_index,
                             record.search_round, record.choice_of_metric, record.best_score,
                             record.best_noise_seed, record.best.noise.tag())
        self.recorded[record.prompt_index] = self.recorded.get(record.prompt_index, 0) + 1
        if self.recorded[record.prompt_index] == self.rounds:
            self.finished_here += 1
            if self.view is not None:
                self.view.update(self.finished_here, counts)


@flow(name="search-batch", flow_run_name="batch-{batch_index}", task_runner=ThreadPoolTaskRunner(max_workers=16))
def search_batch(
    config: RunConfig,
    batch_index: int,
    prompt_list: str,
    start: int,
    stop: int,
    rpm_limit_name: str | None = None,
    view: RunView | None = None,
    allowance: Allowance | None = None,
):
    logger = get_run_logger()
    # A batch run twice at once (a retry while its first run still lives) waits for neither: refused.
    with RunLock(RunLayout(config).run_dir, f".batch-{batch_index}.lock"):
        summary, outcome = _search_batch(config, batch_index, prompt_list, start, stop, rpm_limit_name, view, logger,
                                         allowance)
    write_json(summary_path(config, batch_index), summary.model_dump(mode="json"))
    if outcome.failures:
        for failure in summary.failures:
            logger.error("%s", failure)
        return Failed(message=summary.failures[0], data=summary)
    return summary


def _search_batch(config, batch_index, prompt_list, start, stop, rpm_limit_name, view, logger, allowance):
    prompts = list(enumerate(read_prompt_list(prompt_list)))[start:stop]
    layout, rounds = RunLayout(config), config.search_args.search_rounds
    recorded = {i: sum(layout.record_path(p, r).is_file() for r in range(1, rounds + 1)) for i, p in prompts}
    observer = _FlowObserver(logger, view, rounds, recorded)
    verifier = runtime.verifier_for(config.verifier_args)
    engine = SearchEngine(config, PrefectExecutor(config, rpm_limit_name), grade_chunk=verifier_batch_size(verifier),
                          observer=observer)
    outcome = engine.run_batch(prompts, allowance)
    for index, search_round in outcome.over_budget.items():
        logger.info("prompt %d stops before round %d: the budget would not cover it", index, search_round)
    failures = [_describe(f) for f in outcome.failures]
    _show_batch(config, batch_index, outcome.records, failures, [p for _, p in prompts])
    summary = BatchSummary(batch_index=batch_index, counts=vars(outcome.counts), failures=failures,
                           unfinished_prompts=outcome.unfinished_prompts, worker=_where(),
                           fatal=any(isinstance(f.error, VerifierConfigError) for f in outcome.failures))
    return summary, outcome


def _describe(failure) -> str:
    where, message = f"prompt {failure.prompt_index} round {failure.search_round}", str(failure.error)
    message = message if message.startswith(where) else f"{where}: {message}"
    return f"{type(failure.error).__name__}: {message}"


def counts_of(summary: BatchSummary | None) -> BatchCounts:
    return BatchCounts(**summary.counts) if summary is not None else BatchCounts()


def _show_batch(config: RunConfig, batch_index: int, records: list[RoundRecord], failures: list[str],
                prompts: list[str]) -> None:
    """On the batch run's own page: each round's best (seeds as text), failures, and the pictures."""
    rows = [{"prompt": r.prompt_index, "round": r.search_round, "best seed": str(r.best_noise_seed or ""),
             "best noise": r.best.noise.tag() if r.best else "", "best score": r.best_score,
             "ungradeable": r.ungradeable, "error": ""} for r in records]
    rows += [{"prompt": "", "round": "", "best seed": "", "best noise": "", "best score": None, "ungradeable": "",
              "error": failure} for failure in failures]
    create_table_artifact(table=rows, description=f"Batch {batch_index}: each round's best, and what failed")
    create_markdown_artifact(markdown=gallery_markdown(config, prompts),
                             description=f"Batch {batch_index}: each round's best image")
