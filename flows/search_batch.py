"""One batch of prompts through the search engine, with every job a Prefect task run.

The loop is ttsf_core.engine's (the same as `ttsf_core.runner`'s); this flow only builds the Prefect
executor, reports progress and publishes the batch's table. Finished rounds are read back, stored
images and grades are reused, so a re-run or a retry redoes nothing finished.
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact, update_progress_artifact
from prefect.states import Failed
from pydantic import BaseModel

from tasks import runtime
from tasks.executor import PrefectExecutor
from ttsf_core.config import RunConfig
from ttsf_core.engine import BatchCounts, Observer, SearchEngine
from ttsf_core.prompts import read_prompt_list
from ttsf_core.records import RoundRecord
from ttsf_core.verifiers.base import VerifierConfigError, verifier_batch_size

TABLE_COLUMNS = ("prompt_index", "search_round", "num_noises", "best_noise_seed", "best_score", "best_img_path")


class ProgressRef(BaseModel):
    """The dataset run's progress artifact, and how many prompts finished before this batch."""

    artifact_id: UUID
    total_prompts: int
    done_before: int

    def update(self, done_in_batch: int) -> None:
        done = self.done_before + done_in_batch
        update_progress_artifact(self.artifact_id, progress=100.0 * done / max(self.total_prompts, 1))


class BatchSummary(BaseModel):
    """What a batch run returns (also as a failed run's data): counts and failures, never images."""

    batch_index: int
    counts: dict[str, int | float]
    failures: list[str]
    unfinished_prompts: list[int]
    fatal: bool = False  # the verifier refused its configuration (a rejected key): stop every batch


class _FlowObserver(Observer):
    def __init__(self, logger, progress: ProgressRef | None, rounds_per_prompt: int, already: dict[int, int]):
        self.logger, self.progress, self.rounds_per_prompt = logger, progress, rounds_per_prompt
        self.rounds_done = dict(already)

    def round_recorded(self, record: RoundRecord) -> None:
        if record.best is None:
            self.logger.warning("prompt %d round %d: none of its %d images could be graded", record.prompt_index,
                                record.search_round, len(record.candidates))
        else:
            self.logger.info("prompt %d round %d: best %s = %.3f (noise %s)", record.prompt_index,
                             record.search_round, record.choice_of_metric, record.best_score, record.best.noise.tag())
        self.rounds_done[record.prompt_index] = self.rounds_done.get(record.prompt_index, 0) + 1
        if self.progress is not None and self.rounds_done[record.prompt_index] == self.rounds_per_prompt:
            self.progress.update(sum(count == self.rounds_per_prompt for count in self.rounds_done.values()))


@flow(name="search-batch", flow_run_name="batch-{batch_index}")
def search_batch(
    config: RunConfig,
    batch_index: int,
    prompt_list: str,
    start: int,
    stop: int,
    rpm_limit_name: str | None = None,
    progress: ProgressRef | None = None,
):
    logger = get_run_logger()
    prompts = list(enumerate(read_prompt_list(prompt_list)))[start:stop]
    verifier = runtime.verifier_for(config.verifier_args)
    observer = _FlowObserver(logger, progress, config.search_args.search_rounds, {})
    engine = SearchEngine(config, PrefectExecutor(config, rpm_limit_name), grade_chunk=verifier_batch_size(verifier),
                          observer=observer)
    outcome = engine.run_batch(prompts)
    _table(batch_index, [record.model_dump(mode="json") for record in outcome.records])
    summary = BatchSummary(batch_index=batch_index, counts=vars(outcome.counts),
                           failures=[_describe(f.error) for f in outcome.failures],
                           unfinished_prompts=outcome.unfinished_prompts,
                           fatal=any(isinstance(f.error, VerifierConfigError) for f in outcome.failures))
    if outcome.failures:
        for failure in outcome.failures:
            logger.error("prompt %d round %d failed: %s", failure.prompt_index, failure.search_round,
                         _describe(failure.error))
        return Failed(message=summary.failures[0], data=summary)
    return summary


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def counts_of(summary: BatchSummary | None) -> BatchCounts:
    return BatchCounts(**summary.counts) if summary is not None else BatchCounts()


def _table(batch_index: int, records: list[dict]) -> None:
    rows = sorted(({column: record[column] for column in TABLE_COLUMNS} for record in records),
                  key=lambda row: (row["prompt_index"], row["search_round"]))
    create_table_artifact(table=rows, key=f"ttsf-batch-{batch_index}-best",
                          description=f"Batch {batch_index}: each round's best datapoint")
