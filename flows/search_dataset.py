"""The whole job: load prompts, split them into batches, search each batch, build the report."""


from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.search_batch import ProgressRef, search_batch
from tasks.rate_limit import ensure_rpm_limit
from ttsf_core.config import RunConfig
from ttsf_core.report import build_report, report_dataframe, summary_markdown
from ttsf_core.runner import prepare_run
from flows.storage import result_storage_for


def _batches(prompts: list[str], size: int) -> list[list[tuple[int, str]]]:
    indexed = list(enumerate(prompts))
    return [indexed[start : start + size] for start in range(0, len(indexed), size)]


def _run_name() -> str:
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    if isinstance(config, dict):  # parameters may arrive as plain JSON from a deployment run
        config = RunConfig.model_validate(config)
    return f"search-{config.identity_hash()}" if config else "search"


def _finished(layout, batch: list[tuple[int, str]], search_rounds: int) -> bool:
    return all(layout.record_path(prompt, r).is_file() for _, prompt in batch for r in range(1, search_rounds + 1))


@flow(name="search-dataset", flow_run_name=_run_name)
def search_dataset(config: RunConfig) -> str:
    """Returns the run folder. Re-running the same config resumes: nothing finished is redone."""
    logger = get_run_logger()
    prepared = prepare_run(config)
    run_dir = prepared.layout.run_dir.resolve()
    rpm_name = ensure_rpm_limit(config)
    batches = _batches(prepared.prompts, config.prompts_per_batch)
    progress_id = create_progress_artifact(progress=0.0, key=f"ttsf-progress-{config.identity_hash()}",
                                           description=f"Prompts finished of {len(prepared.prompts)}")
    batch_flow = search_batch.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=config.task_workers),
        result_storage=result_storage_for(config),
        persist_result=False,  # the batch's records are on disk; only task results are worth caching
    )
    logger.info("%d prompts in %d batches -> %s", len(prepared.prompts), len(batches), run_dir)
    failed, causes = [], []
    for batch_index, batch in enumerate(batches):
        progress = ProgressRef(artifact_id=progress_id, total_prompts=len(prepared.prompts),
                               done_before=batch_index * config.prompts_per_batch)
        if _finished(prepared.layout, batch, config.search_args.search_rounds):
            # A finished batch costs no subflow run (each costs ~1 s of Prefect bookkeeping).
            progress.update(len(batch))
            logger.info("batch %d: every round already recorded, skipped", batch_index)
            continue
        state = batch_flow(config, batch_index, batch, rpm_name, progress, return_state=True)
        if state.is_failed() or state.is_crashed():
            failed.append(batch_index)
            causes.append(state.message)
            logger.error("batch %d failed: %s (re-run the same config to resume it)", batch_index, state.message)
    if failed:
        raise RuntimeError(f"batches {failed} failed ({causes[0]}); finished rounds are kept: "
                           "re-run the same config to resume")
    frame = report_dataframe(run_dir)
    build_report(run_dir)
    create_markdown_artifact(markdown=summary_markdown(frame, run_dir), key="ttsf-summary",
                             description="Best score per round and where the files are")
    return str(run_dir)

