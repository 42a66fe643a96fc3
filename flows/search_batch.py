"""One batch of prompts: for each prompt and round, generate -> verify -> select -> write.

Generation runs on the flow's own thread, one round after another (one GPU); each round's
verifications are submitted to the task runner's bounded thread pool, so the next round is being
generated while the previous one is graded. Finished rounds (record on disk) are not resubmitted.
"""


from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact, update_progress_artifact
from pydantic import BaseModel
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from tasks.generate import generate_task
from tasks.record import finish_round_task
from tasks.verify import verify_task
from ttsf_core import rounds
from ttsf_core.config import RunConfig
from ttsf_core.records import RunLayout, read_round_record
from ttsf_core.search import round_order

TABLE_COLUMNS = ("prompt_index", "search_round", "num_noises", "best_noise_seed", "best_score", "best_img_path")


class ProgressRef(BaseModel):
    """The dataset run's progress artifact, and how many prompts finished before this batch."""

    artifact_id: UUID
    total_prompts: int
    done_before: int

    def update(self, done_in_batch: int) -> None:
        done = self.done_before + done_in_batch
        update_progress_artifact(self.artifact_id, progress=100.0 * done / max(self.total_prompts, 1))


@flow(name="search-batch", flow_run_name="batch-{batch_index}")
def search_batch(
    config: RunConfig,
    batch_index: int,
    prompts: list[tuple[int, str]],
    rpm_limit_name: str | None = None,
    progress: ProgressRef | None = None,
) -> list[dict]:
    logger = get_run_logger()
    layout = RunLayout(config)
    verify = verify_task.with_options(
        retries=config.verifier_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.verifier_retry_backoff_s),
    )
    records, pending = [], []
    for prompt_index, prompt in prompts:
        for search_round in round_order(config.search_args.search_method, config.search_args.search_rounds):
            done = read_round_record(layout.record_path(prompt, search_round))
            if done is not None:
                records.append(done.model_dump(mode="json"))
                continue
            seeds = rounds.plan(config, prompt, search_round)
            written = _generate(layout, seeds, prompt, search_round)(config, prompt_index, prompt, search_round, seeds)
            grades = [
                verify.submit(config.verifier_args, prompt, prompt_index, search_round, index,
                              item["path"], item["sha256"], rpm_limit_name)
                for index, item in enumerate(written)
            ]
            finish = finish_round_task.submit(config, prompt_index, prompt, search_round, written, grades)
            pending.append((finish, grades))
    records += _collect(pending, logger, progress, config.search_args.search_rounds, records)
    _table(batch_index, records)
    return records


def _generate(layout: RunLayout, seeds: list[int], prompt: str, search_round: int):
    """A cached generation is only trusted while its files are there: missing images are redrawn."""
    paths = layout.round_image_paths(prompt, search_round, seeds)
    return generate_task if all(path.is_file() for path in paths) else generate_task.with_options(refresh_cache=True)


def _collect(pending, logger, progress, rounds_per_prompt: int, already: list[dict]) -> list[dict]:
    """Wait for every round (so all that can finish does), then raise the first failure."""
    finished, failures = [], []
    rounds_done: dict[int, int] = {}
    for record in already:
        rounds_done[record["prompt_index"]] = rounds_done.get(record["prompt_index"], 0) + 1
    grades_of = {id(finish): grades for finish, grades in pending}
    for future in as_completed([finish for finish, _ in pending]):
        try:
            record = future.result()
        except Exception as error:  # noqa: BLE001 - reported after the other rounds finish
            failures.append(_root_cause(error, grades_of[id(future)]))
            continue
        finished.append(record)
        logger.info("prompt %d round %d: best %s = %.3f (seed %d)", record["prompt_index"], record["search_round"],
                    record["choice_of_metric"], record["best_score"], record["best_noise_seed"])
        rounds_done[record["prompt_index"]] = rounds_done.get(record["prompt_index"], 0) + 1
        if progress is not None and rounds_done[record["prompt_index"]] == rounds_per_prompt:
            progress.update(sum(count == rounds_per_prompt for count in rounds_done.values()))
    if failures:
        raise failures[0]
    return finished


def _root_cause(error: Exception, grade_futures) -> Exception:
    """A round fails because one of its verifications did: report that one, not the knock-on."""
    for grade in grade_futures:
        if grade.state.is_failed():
            try:
                grade.result()
            except Exception as cause:  # noqa: BLE001 - returned to be raised by the caller
                return cause
    return error


def _table(batch_index: int, records: list[dict]) -> None:
    rows = sorted(({column: record[column] for column in TABLE_COLUMNS} for record in records),
                  key=lambda row: (row["prompt_index"], row["search_round"]))
    create_table_artifact(table=rows, key=f"ttsf-batch-{batch_index}-best",
                          description=f"Batch {batch_index}: each round's best datapoint")
