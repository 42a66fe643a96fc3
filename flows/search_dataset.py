"""The whole job: load prompts, split them into batches, search each batch, build the report."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.search_batch import BatchSummary, ProgressRef, counts_of, search_batch
from flows.storage import check_result_storage, result_storage_for
from tasks.rate_limit import ensure_rpm_limit
from ttsf_core.config import RunConfig
from ttsf_core.engine import BatchCounts
from ttsf_core.locks import RunLock
from ttsf_core.prompts import save_prompt_list
from ttsf_core.report import build_report, report_dataframe, summary_markdown
from ttsf_core.runner import prepare_run


class SearchFailed(RuntimeError):
    """Some batches failed; finished rounds are kept. `fatal`: the verifier refused its configuration."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def _run_name() -> str:
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    if isinstance(config, dict):  # parameters may arrive as plain JSON from a deployment run
        config = RunConfig.model_validate(config)
    return f"search-{config.identity_hash()}" if config else "search"


def _finished(layout, prompts: list[str], search_rounds: int) -> bool:
    return all(layout.record_path(prompt, r).is_file() for prompt in prompts for r in range(1, search_rounds + 1))


@flow(name="search-dataset", flow_run_name=_run_name)
def search_dataset(config: RunConfig) -> dict:
    """Returns the run folder and what this run did. Re-running the same config resumes: nothing
    finished is redone. One search at a time per run folder (a second one is refused)."""
    logger = get_run_logger()
    prepared = prepare_run(config)
    for warning in prepared.warnings:
        logger.warning(warning)
    check_result_storage(config)
    with RunLock(prepared.layout.run_dir):
        return _search(prepared, logger)


def _search(prepared, logger) -> dict:
    config = prepared.config
    run_dir = prepared.layout.run_dir.resolve()
    prompt_list = str(save_prompt_list(prepared.layout.run_dir, prepared.prompts))
    rpm_name = ensure_rpm_limit(config)
    total, size = len(prepared.prompts), config.prompts_per_batch
    progress_id = create_progress_artifact(progress=0.0, key=f"ttsf-progress-{config.identity_hash()}",
                                           description=f"Prompts finished of {total}")
    batch_flow = search_batch.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=config.task_workers),
        result_storage=result_storage_for(config),
    )
    logger.info("%d prompts in %d batches -> %s", total, -(-total // size), run_dir)
    counts, failed, causes, fatal = BatchCounts(), [], [], False
    for batch_index, start in enumerate(range(0, total, size)):
        stop = min(start + size, total)
        progress = ProgressRef(artifact_id=progress_id, total_prompts=total, done_before=start)
        if _finished(prepared.layout, prepared.prompts[start:stop], config.search_args.search_rounds):
            # A finished batch costs no subflow run (each costs ~1 s of Prefect bookkeeping).
            progress.update(stop - start)
            counts.rounds_skipped += (stop - start) * config.search_args.search_rounds
            continue
        state = batch_flow(config, batch_index, prompt_list, start, stop, rpm_name, progress, return_state=True)
        summary = _summary(state)
        counts.add(counts_of(summary))
        if not state.is_completed():
            failed.append(batch_index)
            causes.append(state.message)
            logger.error("batch %d failed: %s (re-run the same config to resume it)", batch_index, state.message)
            if summary is not None and summary.fatal:
                fatal = True  # the verifier refuses this configuration: every other batch would too
                break
    if failed:
        what = "the verifier refused its configuration; no further batch was started" if fatal else \
            f"batches {failed} failed"
        raise SearchFailed(f"{what} ({causes[0]}); finished rounds, images and grades are kept: "
                           "re-run the same config to resume", fatal=fatal)
    if build_report(run_dir, only_if_changed=True) is not None:
        create_markdown_artifact(markdown=summary_markdown(report_dataframe(run_dir), run_dir),
                                 key=f"ttsf-summary-{config.identity_hash()}",
                                 description="Best score per round and where the files are")
    return {"run_dir": str(run_dir), "counts": vars(counts)}


def _summary(state) -> BatchSummary | None:
    try:
        data = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a crashed batch has no result; its state says why
        return None
    return data if isinstance(data, BatchSummary) else None
