"""One batch of prompts through the search engine, with every job a Prefect task run.

The loop is ttsf_core.engine.search_engine's (the same as `ttsf_core.usecases.runner`'s); this flow only builds the Prefect
executor, keeps the run's progress true as prompts finish, and shows the batch's results on its
page. Finished rounds are read back, stored images and grades are reused, so a re-run or a retry
redoes nothing finished.

Order matters when the server may be away: images, grades and records are written as the work goes,
then the batch's summary (RUN_DIR/batches/batch-N.json), then its last heartbeat (pool mode), and only
then anything for the UI (its table and gallery, each riding out an outage and never failing the
batch), and last the flow run's own state, which Prefect's engine reports.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.heartbeat import Heartbeat, heartbeat_path
from flows.monitor import RunView, gallery_markdown
from flows.outages import tolerate
from tasks import runtime
from tasks.executor import PrefectExecutor
from ttsf_core.budget import Allowance
from ttsf_core.config import RunConfig
from ttsf_core.engine.search_engine import BatchCounts, Observer, SearchEngine
from ttsf_core.storage.files import write_json
from ttsf_core.storage.locks import RunLock
from ttsf_core.prompts import read_prompt_list
from ttsf_core.storage.records import RoundRecord, RunLayout
from ttsf_core.resolve import resolve
from ttsf_core.resolved import ResolvedRun
from ttsf_core.verifiers.base import VerifierConfigError, verifier_batch_size


class BatchSummary(BaseModel):
    """What one attempt of a batch did: counts and failures, never images. Kept in RUN_DIR/batches/
    (so a dataset run reads it whichever worker ran the batch) and returned (also as a failed run's data)."""

    batch_index: int
    counts: dict[str, int | float]
    failures: list[str]
    unfinished_prompts: list[int]
    fatal: bool = False  # the verifier refused its configuration (a rejected key): stop every batch
    worker: str = ""  # where it ran: the Prefect worker's name, host and process
    run_id: str = ""  # the batch flow run this attempt was ("" in files written before attempts were kept)
    ended_at: str = ""  # UTC, ISO 8601


class BatchFile(BaseModel):
    """RUN_DIR/batches/batch-N.json: every finished attempt of batch N, in order, and their counts
    added up. An attempt only adds to it: a re-run that found everything recorded (zero counts) or a
    retry never overwrites what an earlier attempt did. Attempts that never finished (a lost worker, a
    stop) are not in it; their images and grades are in the store, counted as found by the next one."""

    batch_index: int
    counts: dict[str, int | float]  # the sum over `attempts`
    attempts: list[BatchSummary]


def summary_path(config: RunConfig, batch_index: int) -> Path:
    return RunLayout(resolve(config)).run_dir / "batches" / f"batch-{batch_index}.json"


def read_batch_file(config: RunConfig, batch_index: int) -> BatchFile | None:
    """None: no attempt of this batch has finished yet."""
    path = summary_path(config, batch_index)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if "attempts" not in data:  # written before attempts were kept: that one summary is the one attempt
        return BatchFile(batch_index=data["batch_index"], counts=data["counts"],
                         attempts=[BatchSummary.model_validate(data)])
    return BatchFile.model_validate(data)


def read_summary(config: RunConfig, batch_index: int, run_id: str | None = None) -> BatchSummary | None:
    """The attempt `run_id` of the batch (the latest when None); None when that attempt wrote none."""
    found = read_batch_file(config, batch_index)
    if found is None:
        return None
    if run_id is None:
        return found.attempts[-1] if found.attempts else None
    return next((attempt for attempt in found.attempts if attempt.run_id == str(run_id)), None)


def record_attempt(config: RunConfig, summary: BatchSummary) -> BatchFile:
    """Add one finished attempt to the batch's file (call with the batch lock held: one writer)."""
    found = read_batch_file(config, summary.batch_index)
    attempts = [a for a in (found.attempts if found else []) if not (summary.run_id and a.run_id == summary.run_id)]
    attempts.append(summary)
    total = BatchCounts()
    for attempt in attempts:
        total.add(counts_of(attempt))
    batch_file = BatchFile(batch_index=summary.batch_index, counts=vars(total), attempts=attempts)
    write_json(summary_path(config, summary.batch_index), batch_file.model_dump(mode="json"))
    return batch_file


def _where() -> str:
    worker = os.environ.get("PREFECT__WORKER_NAME")
    place = f"{socket.gethostname()} pid {os.getpid()}"
    return f"{worker} ({place})" if worker else place


class _FlowObserver(Observer):
    """Logs each round's best and keeps the run's progress true as each prompt finishes."""

    def __init__(self, logger, view: RunView | None, rounds: int, recorded: dict[int, int],
                 heartbeat: Heartbeat | None = None):
        self.logger, self.view, self.rounds, self.heartbeat = logger, view, rounds, heartbeat
        self.recorded = dict(recorded)
        self.finished_here = 0

    def round_recorded(self, record: RoundRecord, counts: BatchCounts) -> None:
        if self.heartbeat is not None:
            self.heartbeat.live_counts = counts  # each beat carries the counts so far (a lost attempt's too)
        if record.best is None:
            self.logger.warning("prompt %d round %d: none of its %d images could be graded", record.prompt_index,
                                record.search_round, len(record.candidates))
        else:
            self.logger.info("prompt %d round %d: best %s = %.3f (seed %s, noise %s)", record.prompt_index,
                             record.search_round, record.choice_of_metric, record.best_score,
                             record.best_noise_seed, record.best.noise.tag())
        self.recorded[record.prompt_index] = self.recorded.get(record.prompt_index, 0) + 1
        finished = self.recorded[record.prompt_index] == self.rounds
        self.finished_here += finished
        # A run with an NFE budget shows what it spent round by round; otherwise a prompt at a time.
        if self.view is not None and (finished or self.view.budget.get("max_nfe") is not None):
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
    run = resolve(config)  # once: the batch's layout, engine and executor share it
    layout = RunLayout(run)
    run_id = str(FlowRunContext.get().flow_run.id)
    with _heartbeat(config, layout, batch_index, run_id, logger) as heartbeat:
        stopped = heartbeat.stop_requested() if heartbeat is not None else None
        if stopped is not None:  # its dataset run stopped while this run waited for a worker
            logger.warning("not started: the dataset run asked this batch to stop (%s)", stopped)
            return Cancelled(message=f"stopped before it began: {stopped}")
        # A batch run twice at once (a retry, or a resubmission, while an earlier run still lives) is
        # refused with RunFolderBusy, never run twice side by side.
        try:
            with RunLock(layout.run_dir, f".batch-{batch_index}.lock"):
                summary, outcome, shown = _search_batch(run, layout, batch_index, prompt_list, start, stop,
                                                        rpm_limit_name, view, logger, allowance, heartbeat, run_id)
                record_attempt(config, summary)
        except Exception as error:  # re-raised: the last beat only says how it ended, server or not
            if heartbeat is not None:
                heartbeat.end("failed", f"{type(error).__name__}: {error}")
            raise
        if heartbeat is not None:
            heartbeat.end("failed" if outcome.failures else "completed", summary.failures[0] if summary.failures else "")
    # Only now the UI: the work above is on disk whatever happens to these reports.
    budget = config.dispatch.server_outage_s
    records, failures, texts = shown
    tolerate(lambda: _table(batch_index, records, failures), f"batch {batch_index}'s results table", budget, logger)
    tolerate(lambda: _gallery(config, batch_index, texts), f"batch {batch_index}'s gallery", budget, logger)
    if outcome.failures:
        for failure in summary.failures:
            logger.error("%s", failure)
        return Failed(message=summary.failures[0], data=summary)
    return summary


class _NoHeartbeat:
    """Local mode: the batch runs inside the dataset run's own process, which needs no news of it."""

    def __enter__(self):
        return None

    def __exit__(self, *exc_info) -> None:
        return None


def _heartbeat(config: RunConfig, layout: RunLayout, batch_index: int, run_id: str, logger):
    if config.dispatch.mode != "pool":
        return _NoHeartbeat()
    return Heartbeat(heartbeat_path(layout.run_dir, batch_index, run_id), run_id, batch_index,
                     config.dispatch.heartbeat_s, _where(), logger)


def _search_batch(run: ResolvedRun, layout: RunLayout, batch_index, prompt_list, start, stop, rpm_limit_name, view,
                  logger, allowance, heartbeat, run_id):
    config = run.config
    prompts = list(enumerate(read_prompt_list(prompt_list)))[start:stop]
    rounds = config.search_args.search_rounds
    recorded = {i: sum(layout.record_path(p, r).is_file() for r in range(1, rounds + 1)) for i, p in prompts}
    observer = _FlowObserver(logger, view, rounds, recorded, heartbeat)
    verifier = runtime.verifier_for(config.verifier_args)
    path_run = run.path_run  # --path_verifier: intermediate images in its own batch size, as the runner
    path_chunk = verifier_batch_size(runtime.verifier_for(path_run.config.verifier_args)) if path_run else None
    engine = SearchEngine(run, PrefectExecutor(config, rpm_limit_name), grade_chunk=verifier_batch_size(verifier),
                          observer=observer, path_grade_chunk=path_chunk)
    outcome = engine.run_batch(prompts, allowance)
    for index, search_round in outcome.over_budget.items():
        logger.info("prompt %d stops before round %d: the budget would not cover it", index, search_round)
    failures = [_describe(f) for f in outcome.failures]
    summary = BatchSummary(batch_index=batch_index, counts=vars(outcome.counts), failures=failures,
                           unfinished_prompts=outcome.unfinished_prompts, worker=_where(), run_id=run_id,
                           ended_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           fatal=any(isinstance(f.error, VerifierConfigError) for f in outcome.failures))
    return summary, outcome, (outcome.records, failures, [p for _, p in prompts])


def _describe(failure) -> str:
    where, message = f"prompt {failure.prompt_index} round {failure.search_round}", str(failure.error)
    message = message if message.startswith(where) else f"{where}: {message}"
    return f"{type(failure.error).__name__}: {message}"


def counts_of(summary: BatchSummary | None) -> BatchCounts:
    return BatchCounts(**summary.counts) if summary is not None else BatchCounts()


def _table(batch_index: int, records: list[RoundRecord], failures: list[str]) -> None:
    """On the batch run's own page: each round's best (seeds as text) and what failed."""
    rows = [{"prompt": r.prompt_index, "round": r.search_round, "best seed": str(r.best_noise_seed or ""),
             "best noise": r.best.noise.tag() if r.best else "", "best score": r.best_score,
             "ungradeable": r.ungradeable, "error": ""} for r in records]
    rows += [{"prompt": "", "round": "", "best seed": "", "best noise": "", "best score": None, "ungradeable": "",
              "error": failure} for failure in failures]
    create_table_artifact(table=rows, description=f"Batch {batch_index}: each round's best, and what failed")


def _gallery(config: RunConfig, batch_index: int, prompts: list[str]) -> None:
    create_markdown_artifact(markdown=gallery_markdown(config, prompts),
                             description=f"Batch {batch_index}: each round's best image")
