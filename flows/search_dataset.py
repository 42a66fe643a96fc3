"""The whole job: load prompts, split them into batches, search each batch, build the report."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled

from flows.monitor import RunMonitor, artifact_key, budget_text, md_text
from flows.dispatch import Batch, LocalBatches, PoolBatches
from flows.runs import crash_orphaned_children
from flows.outages import fail_fast, is_outage, tolerate
from flows.storage import check_result_storage
from tasks import runtime
from tasks.rate_limit import ensure_rpm_limit, rpm_description
from ttsf_core.config import RunConfig
from ttsf_core.resolve import resolve
from ttsf_core.storage.locks import RunLock
from ttsf_core.prompts import prompt_source_label, save_prompt_list
from ttsf_core.usecases.report import build_report, report_dataframe, summary_markdown
from ttsf_core.allocation import ALLOCATION_FILENAME
from ttsf_core.usecases.runner import allocator_for, budget_stops, prepare_run


STOP_REPORT_S = 30.0  # a stopped run waits this long at most for the server to take its summary


class SearchFailed(RuntimeError):
    """Some batches failed; finished rounds are kept. `fatal`: the verifier refused its configuration."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def run_name(config: RunConfig, when: datetime | None = None) -> str:
    """<what is searched>-<how many>-<when>-<search hash>, e.g. `open-image-preferences-v1-binarized-100p-
    20261128-0200-c1776aa8`: runs of one search share the hash, runs of one schedule the dataset."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M")
    return f"{prompt_source_label(config.prompts)}-{stamp}-{resolve(config).identity_hash[:8]}"


def _run_name() -> str:
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    if isinstance(config, dict):  # parameters may arrive as plain JSON from a deployment run
        config = RunConfig.model_validate(config)
    return run_name(config, flow_run.scheduled_start_time) if config else "search"


@flow(name="search-dataset", flow_run_name=_run_name)
def search_dataset(config: RunConfig) -> dict:
    """Returns the run folder and what this run did. Re-running the same config resumes: nothing
    finished is redone. One search at a time per run folder (a second one is refused). A stop (Ctrl-C,
    SIGTERM, a Prefect cancellation) cancels its batches and ends the run Cancelled, saying what finished."""
    logger = get_run_logger()
    # Prepared once per run: `ttsf run` hands over what it prepared (verifier built, access checked);
    # a deployment run prepares here.
    prepared = runtime.prepared_for(config) or prepare_run(config)
    for warning in prepared.warnings:
        logger.warning(warning)
    check_result_storage(config)
    # A retry after a crash: nothing of the lost attempt stays Running; but its pooled batch runs may be
    # alive on their workers (only this process died): they are adopted and judged by their heartbeats.
    pooled = config.dispatch.mode == "pool"
    adopt = crash_orphaned_children(logger, spare=lambda run: pooled and run.deployment_id is not None)
    with RunLock(prepared.layout.run_dir):
        return _search(prepared, logger, adopt)


def _search(prepared, logger, adopt=()) -> dict:
    config = prepared.config
    run_dir = prepared.layout.run_dir.resolve()
    prompt_list = str(save_prompt_list(prepared.layout.run_dir, prepared.prompts, config.prompts))
    rpm_name = ensure_rpm_limit(config)
    total, size = len(prepared.prompts), config.prompts_per_batch
    monitor = RunMonitor(config, FlowRunContext.get().flow_run.name, prepared.prompts, rpm_description(config))
    every = [Batch(index, start, min(start + size, total)) for index, start in enumerate(range(0, total, size))]
    pool = config.dispatch.mode == "pool"
    where = "on work pool deployment " + config.dispatch.deployment if pool else "here"

    def runner_for(allowance, wave: int, adopting):
        if pool:
            return PoolBatches(config, prompt_list, rpm_name, monitor.tick, allowance, logger,
                               lambda: f"{len(monitor.finished)} of {total} prompts finished", adopting, wave=wave)
        return LocalBatches(config, prompt_list, rpm_name, monitor.view, allowance,
                            lambda: (monitor.counts.verifier_requests, monitor.counts.cost_usd),
                            first_call=max(wave - 1, 0) * len(every))

    failed, fatal, runner = [], False, None
    try:
        for allowance, wave, batches in _stages(prepared, monitor, every, logger):
            logger.info("%d prompts in %d batches (%d to run%s, %s) -> %s", total, len(every), len(batches),
                        f" in wave {wave}" if wave else "", where, run_dir)
            runner = runner_for(allowance, wave, adopt)
            adopt = ()  # a retried run's live batch runs belong to its first stage
            fatal = _run_batches(runner, batches, monitor, failed, logger, pool)
            if failed:
                break
    except (KeyboardInterrupt, TerminationSignal) as signal:
        # A stop is a stop: Ctrl-C, SIGTERM (`kill`, systemd) or a Prefect cancellation of this run (its
        # worker sends SIGTERM, which Prefect's engine raises here as TerminationSignal; checked in
        # prefect/utilities/engine capture_sigterm, 3.9.1). Nothing this run submitted goes on.
        return _stopped(config, run_dir, monitor, runner, _stop_reason(signal), failed, logger)
    monitor.ended(len(failed), fatal)
    _publish_summary(config, run_dir, monitor, failed, fatal)
    if failed:
        what = "the verifier refused its configuration; no further batch was started" if fatal else \
            f"batches {[index for index, _ in failed]} failed"
        # The resume hint is said once, by whoever shows this to a person: the CLI's line, the run's log
        # (below) and its summary artifact; not in the exception as well.
        logger.error("%s; finished rounds, images and grades are kept: re-run the same config to resume", what)
        raise SearchFailed(f"{what} ({failed[0][1]})", fatal=fatal)
    return {"run_dir": str(run_dir), "counts": vars(monitor.counts)}


def _stages(prepared, monitor: RunMonitor, every: list[Batch], logger):
    """(allowance, wave, batches to run) for each stage of the run. Uniform allocation: one stage, every
    batch with an unfinished prompt (a finished batch costs no batch run: ~1 s of Prefect bookkeeping
    each). Adaptive: one stage a wave, decided from the records once the wave before has run (the
    allocation is a stage of the dataset run; batches run the rounds a wave gives them)."""
    if prepared.config.budget.allocation != "adaptive":
        batches = []
        for batch in every:
            if all(i in monitor.finished for i in range(batch.start, batch.stop)):
                monitor.batch_done(batch.index, batch.start, batch.stop, skipped=True)
            else:
                batches.append(batch)
        yield prepared.allowance, 0, batches
        return
    allocator, waves = allocator_for(prepared), []
    for _ in range(len(prepared.prompts) * prepared.config.search_args.search_rounds + 1):
        wave = allocator.next_wave(monitor.counts.verifier_requests, monitor.counts.cost_usd)
        waves.append(wave)
        allocator.write(waves)
        monitor.settle(wave.stops)
        if wave.empty:
            break
        given = {decision.prompt_index for decision in wave.decisions}
        logger.info("wave %d: %d rounds to %d prompts (%d NFEs at most); %d prompts stopped (%s)", wave.number,
                    len(wave.decisions), len(given), wave.allowance.nfe, len(wave.stops), ALLOCATION_FILENAME)
        yield wave.allowance, wave.number, [b for b in every if any(i in given for i in range(b.start, b.stop))]
    over = budget_stops(prepared, allocator, waves[-1])
    history = allocator.history()
    monitor.counts.prompts_over_budget = len(over)
    monitor.counts.rounds_over_budget = sum(prepared.config.search_args.search_rounds - len(history[index])
                                            for index in over)


def _run_batches(runner, batches: list[Batch], monitor: RunMonitor, failed: list, logger, pool: bool) -> bool:
    """Run `batches`, each result into the monitor and failures into `failed`; whether the verifier
    refused its configuration (every other batch would too: none is started after)."""
    fatal = False
    for result in runner.run(batches):
        batch, summary = result.batch, result.summary
        monitor.batch_done(batch.index, batch.start, batch.stop, result.counts, result.error,
                           worker=summary.worker if summary else "")
        if result.error:
            failed.append((batch.index, result.error))
            logger.error("batch %d failed: %s", batch.index, result.error)
            if summary is not None and summary.fatal and not fatal:
                fatal = True
                runner.stop()
                if not pool:
                    break
    return fatal


def _stop_reason(signal: BaseException) -> str:
    if isinstance(signal, KeyboardInterrupt):
        return "stopped by Ctrl-C"
    context = FlowRunContext.get()
    try:
        with fail_fast(), get_client(sync_client=True) as client:
            state = client.read_flow_run(context.flow_run.id).state
    except Exception as error:  # noqa: BLE001 - the server only tells who sent the signal; it may be away
        if not is_outage(error):
            raise
        state = None
    if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
        return "cancelled in Prefect" + (f" ({state.message})" if state.message else "")
    return f"stopped by signal {getattr(signal, 'signal', 'SIGTERM')} (SIGTERM: kill, systemd, a worker)"


def _stopped(config, run_dir, monitor: RunMonitor, runner, reason: str, failed: list, logger) -> State:
    """Cancel what was submitted, say what finished and how to resume, and end the run Cancelled."""
    logger.warning("%s: cancelling every batch this run submitted", reason)
    stopped = runner.cancel_all(reason) if runner is not None else []
    monitor.tick()
    done, total = len(monitor.finished), len(monitor.prompts)
    what = f"{reason}: {done} of {total} prompts finished"
    what += ("; " + "; ".join(stopped)) if stopped else "; no batch was running"
    for line in stopped:
        logger.warning("%s", line)
    logger.warning("%s; finished rounds, images and grades are kept: re-run the same config to resume", what)
    monitor.ended(len(failed), False, stopped=reason)
    _publish_summary(config, run_dir, monitor, failed, False, stopped=reason, budget_s=STOP_REPORT_S)
    return Cancelled(message=what)


def _publish_summary(config: RunConfig, run_dir, monitor: RunMonitor, failed: list, fatal: bool,
                     stopped: str | None = None, budget_s: float | None = None) -> None:
    """The run's summary, failed or not: what finished, what failed and why, how to resume. Built from
    the run folder first; the artifact rides out an outage and is left (with a warning) after that."""
    lines = [f"### {md_text(monitor.run_name)}",
             f"{len(monitor.finished)} of {len(monitor.prompts)} prompts finished.", ""]
    if stopped:
        lines += [f"**Stopped** ({md_text(stopped)}): every batch this run submitted was cancelled. Finished rounds, "
                  "images and grades are kept; run the same config again to resume.", ""]
    if failed:
        lines += ["**Failed batches** (finished rounds, images and grades are kept; run the same config again "
                  "— a new deployment run, `prefect flow-run retry`, or `ttsf run` — to resume):", ""]
        lines += [f"- batch {index}: {md_text(error)}" for index, error in failed]
        if fatal:
            lines.append("- the verifier refused its configuration, so no further batch was started")
        lines.append("")
    if monitor.counts.rounds_over_budget:
        lines += [f"**Budget reached**: {md_text(budget_text(config.budget.model_dump(), monitor.counts, monitor.nfe_before))}. "
                  "Finished rounds are kept; run again with a larger budget, or none, to pay only for the rounds "
                  "not yet done.", ""]
    try:
        build_report(run_dir, only_if_changed=True)
        lines.append(summary_markdown(report_dataframe(run_dir), run_dir))
    except ValueError:  # no round recorded yet
        lines.append("No round has been recorded yet.")
    tolerate(lambda: create_markdown_artifact(
        markdown="\n".join(lines), key=artifact_key(config, "summary"),
        description=f"Best score per round, failures, where the files are · {monitor.run_name}"),
        "the run's summary artifact", budget_s or config.dispatch.server_outage_s, get_run_logger())
