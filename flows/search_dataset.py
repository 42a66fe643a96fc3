"""The whole job: load prompts, split them into batches, search each batch, build the report."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from flows.monitor import RunMonitor, artifact_key, budget_text, md_text
from flows.dispatch import Batch, LocalBatches, PoolBatches
from flows.runs import crash_orphaned_children
from flows.search_batch import counts_of
from flows.storage import check_result_storage
from tasks.rate_limit import ensure_rpm_limit, rpm_description
from ttsf_core.config import RunConfig
from ttsf_core.locks import RunLock
from ttsf_core.prompts import prompt_source_label, save_prompt_list
from ttsf_core.report import build_report, report_dataframe, summary_markdown
from ttsf_core.runner import prepare_run


class SearchFailed(RuntimeError):
    """Some batches failed; finished rounds are kept. `fatal`: the verifier refused its configuration."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def run_name(config: RunConfig, when: datetime | None = None) -> str:
    """<what is searched>-<how many>-<when>-<search hash>, e.g. `open-image-preferences-v1-binarized-100p-
    20261128-0200-c1776aa8`: runs of one search share the hash, runs of one schedule the dataset."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M")
    return f"{prompt_source_label(config.prompts)}-{stamp}-{config.identity_hash()[:8]}"


def _run_name() -> str:
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    if isinstance(config, dict):  # parameters may arrive as plain JSON from a deployment run
        config = RunConfig.model_validate(config)
    return run_name(config, flow_run.scheduled_start_time) if config else "search"


@flow(name="search-dataset", flow_run_name=_run_name)
def search_dataset(config: RunConfig) -> dict:
    """Returns the run folder and what this run did. Re-running the same config resumes: nothing
    finished is redone. One search at a time per run folder (a second one is refused)."""
    logger = get_run_logger()
    prepared = prepare_run(config)
    for warning in prepared.warnings:
        logger.warning(warning)
    check_result_storage(config)
    crash_orphaned_children(logger)  # a retry after a crash: nothing of the lost attempt stays Running
    with RunLock(prepared.layout.run_dir):
        return _search(prepared, logger)


def _search(prepared, logger) -> dict:
    config = prepared.config
    run_dir = prepared.layout.run_dir.resolve()
    prompt_list = str(save_prompt_list(prepared.layout.run_dir, prepared.prompts, config.prompts))
    rpm_name = ensure_rpm_limit(config)
    total, size = len(prepared.prompts), config.prompts_per_batch
    monitor = RunMonitor(config, FlowRunContext.get().flow_run.name, prepared.prompts, rpm_description(config))
    batches = []
    for index, start in enumerate(range(0, total, size)):
        batch = Batch(index, start, min(start + size, total))
        if all(i in monitor.finished for i in range(batch.start, batch.stop)):
            # A finished batch costs no batch run (each costs ~1 s of Prefect bookkeeping).
            monitor.batch_done(batch.index, batch.start, batch.stop, skipped=True)
        else:
            batches.append(batch)
    where = "on work pool deployment " + config.dispatch.deployment if config.dispatch.mode == "pool" else "here"
    logger.info("%d prompts in %d batches (%d to run, %s) -> %s", total, -(-total // size), len(batches), where,
                run_dir)
    runner = PoolBatches(config, prompt_list, rpm_name, monitor.tick, prepared.allowance) \
        if config.dispatch.mode == "pool" else \
        LocalBatches(config, prompt_list, rpm_name, monitor.view, prepared.allowance,
                     lambda: (monitor.counts.verifier_requests, monitor.counts.cost_usd))
    failed, fatal = [], False
    for result in runner.run(batches):
        batch, summary = result.batch, result.summary
        monitor.batch_done(batch.index, batch.start, batch.stop, counts_of(summary), result.error,
                           worker=summary.worker if summary else "")
        if result.error:
            failed.append((batch.index, result.error))
            logger.error("batch %d failed: %s (re-run the same config to resume it)", batch.index, result.error)
            if summary is not None and summary.fatal and not fatal:
                fatal = True  # the verifier refuses this configuration: every other batch would too
                runner.stop()
                if config.dispatch.mode == "local":
                    break
    monitor.ended(len(failed), fatal)
    _publish_summary(config, run_dir, monitor, failed, fatal)
    if failed:
        what = "the verifier refused its configuration; no further batch was started" if fatal else \
            f"batches {[index for index, _ in failed]} failed"
        raise SearchFailed(f"{what} ({failed[0][1]}); finished rounds, images and grades are kept: "
                           "re-run the same config to resume", fatal=fatal)
    return {"run_dir": str(run_dir), "counts": vars(monitor.counts)}


def _publish_summary(config: RunConfig, run_dir, monitor: RunMonitor, failed: list, fatal: bool) -> None:
    """The run's summary, failed or not: what finished, what failed and why, how to resume."""
    lines = [f"### {md_text(monitor.run_name)}",
             f"{len(monitor.finished)} of {len(monitor.prompts)} prompts finished.", ""]
    if failed:
        lines += ["**Failed batches** (finished rounds, images and grades are kept; run the same config again "
                  "— a new deployment run, `prefect flow-run retry`, or `ttsf run` — to resume):", ""]
        lines += [f"- batch {index}: {md_text(error)}" for index, error in failed]
        if fatal:
            lines.append("- the verifier refused its configuration, so no further batch was started")
        lines.append("")
    if monitor.counts.rounds_over_budget:
        lines += [f"**Budget reached**: {md_text(budget_text(config.budget.model_dump(), monitor.counts))}. "
                  "Finished rounds are kept; run again with a larger budget, or none, to pay only for the rounds "
                  "not yet done.", ""]
    try:
        build_report(run_dir, only_if_changed=True)
        lines.append(summary_markdown(report_dataframe(run_dir), run_dir))
    except ValueError:  # no round recorded yet
        lines.append("No round has been recorded yet.")
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(config, "summary"),
                             description=f"Best score per round, failures, where the files are · {monitor.run_name}")


