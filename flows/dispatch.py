"""Where a dataset run's batches run, and how the dataset run looks after them.

local: one after another, as subflows in the dataset run's own process (no pool, no worker).
pool:  each as a flow run of a `search-batch` deployment on a work pool, all submitted at once, so
       every worker (one per GPU, or one per machine) takes the next batch as it frees up; the
       dataset run waits for them, keeping the run's progress true as prompts finish.

In pool mode the dataset run is the fleet's caretaker (docs/scale-out.md, "What the fleet does when
something fails"); every two seconds it reads its batch runs' states (one request) and their heartbeat
files (flows/heartbeat.py, in the shared run folder) and decides:

- a batch whose heartbeat stopped for `dispatch.lost_after_s` while the server says it runs, one a
  worker took that has not begun beating when the server reports that worker offline (or after
  PENDING_LIMIT_S whatever), or one the server reports Crashed, is lost: its run is marked Crashed and
  the batch submitted again, with the same parameters (its verifier allowance included), to whichever
  worker is free; the new attempt pays only for what has no record or stored grade. After
  `dispatch.max_attempts` attempts the batch fails, named in one line.
- a batch running longer than `dispatch.batch_timeout_s`, counted from when it was first seen running,
  is cancelled (through Prefect and through a stop file its heartbeat thread reads) and submitted again
  while attempts remain: it resumes from its records.
- a batch whose last heartbeat says its work is on disk is finished, whatever the server says: a
  Crashed or still-Running state (its report was lost to an outage) is set right from the run folder.
- a server it cannot reach is waited out (`dispatch.server_outage_s`, back-off to 15 s); heartbeats are
  still read meanwhile, and nothing is decided that needs the server until it answers.
- a stop (Ctrl-C, SIGTERM, a Prefect cancellation of the dataset run) cancels every submitted batch.

Either way each finished batch is reported as a BatchResult, read from the summary the batch wrote
into the run folder (shared storage in pool mode), whichever process or machine ran it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from prefect import Task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Cancelling, Completed, Crashed, Failed, Pending, Scheduled
from prefect.task_runners import ThreadPoolTaskRunner

from flows.heartbeat import Beat, BeatWatch, heartbeat_path
from flows.monitor import duration
from flows.outages import ServerUnreachable, backoff_s, fail_fast, is_outage, ride_out
from flows.runs import align_subflow_key
from flows.search_batch import BatchSummary, counts_of, read_summary, search_batch
from flows.storage import result_storage_for
from ttsf_core.budget import Allowance
from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.engine.search_engine import BatchCounts
from ttsf_core.resolve import resolve
from ttsf_core.storage.records import RunLayout

POLL_S = 2.0
REPORT_EVERY_S = 60.0  # the waiting line: one a minute, with counts
STOP_CONFIRM_S = 15.0  # a stop waits this long to see its batch runs end before it reports
PENDING_LIMIT_S = 900.0  # a batch taken by a worker and not started within this long is lost, whatever
WORKER_STATUS_SETTLE_S = 90.0  # after an outage, workers' statuses on the server are stale this long
TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
FETCH_PAGE = 200  # flow runs read per request (Prefect's default page limit)
_log = logging.getLogger("ttsf.dispatch")


@dataclass
class Batch:
    index: int
    start: int
    stop: int

    def label(self) -> str:
        prompts = f"prompt {self.start}" if self.stop - self.start == 1 else f"prompts {self.start}-{self.stop - 1}"
        return f"batch {self.index} ({prompts})"


@dataclass
class BatchResult:
    batch: Batch
    summary: BatchSummary | None  # its last attempt's own summary; None when that attempt wrote none
    error: str | None  # None: completed
    # What this dataset run's attempts of the batch did: the summary's counts plus, for attempts that
    # were lost, the counts their last heartbeat carried.
    counts: BatchCounts = field(default_factory=BatchCounts)
    attempts: int = 1


class LocalBatches:
    def __init__(self, config: RunConfig, prompt_list: str, rpm_name: str | None, view_for: Callable,
                 allowance: Allowance | None = None, spent: Callable[[], tuple[int, float]] = lambda: (0, 0.0),
                 first_call: int = 0):
        """`first_call`: the subflow call index of batch 0 (an adaptive run's later waves call each batch
        again: wave w's batch N is call first_call + N, found again by a retry of the same wave)."""
        self.config, self.prompt_list, self.rpm_name, self.view_for = config, prompt_list, rpm_name, view_for
        self.allowance, self.spent, self.first_call = allowance, spent, first_call
        self.current: Batch | None = None  # the batch running in this process right now
        self.flow = search_batch.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.task_workers),
                                              result_storage=result_storage_for(config))

    def run(self, batches: list[Batch]) -> Iterator[BatchResult]:
        for position, batch in enumerate(batches):
            align_subflow_key(search_batch, self.first_call + batch.index)  # batch N's run again on a retry
            later = [index for other in batches[position + 1:] for index in range(other.start, other.stop)]
            allowance = _batch_allowance(self.allowance, batch, later, *self.spent())
            self.current = batch
            state = self.flow(self.config, batch.index, self.prompt_list, batch.start, batch.stop, self.rpm_name,
                              self.view_for(), allowance, return_state=True)
            self.current = None
            summary = read_summary(self.config, batch.index, str(state.state_details.flow_run_id))
            yield BatchResult(batch, summary, None if state.is_completed() else state.message, counts_of(summary))

    def stop(self) -> None:
        """Batches run one after another here: stopping is not starting the next (the caller's loop)."""

    def cancel_all(self, reason: str) -> list[str]:
        """Nothing runs outside this process: the batch it was running stopped with it."""
        return [] if self.current is None else [f"{self.current.label()}: stopped (it ran in this process)"]


def _batch_allowance(allowance: Allowance | None, batch: Batch, others: list[int], spent_requests: int = 0,
                     spent_cost: float = 0.0) -> Allowance | None:
    if allowance is None:
        return None
    return allowance.for_batch(range(batch.start, batch.stop), others, spent_requests, spent_cost)


def _span(seconds: float) -> str:
    """20 s, 3 min 05 s, 1 h 02 min."""
    return f"{seconds:.0f} s" if seconds < 120 else duration(seconds)


def _batch_run() -> None:
    """Stands for a batch run inside the dataset run (its tracking task: what links the two in the UI)."""


@dataclass
class Attempt:
    """One submission of a batch: a flow run of the deployment, watched by state and heartbeat."""

    batch: Batch
    number: int  # 1, 2, ... (resubmissions after a loss or a timeout)
    run_id: UUID
    parameters: dict
    watch: BeatWatch
    submitted_at: float  # time.monotonic() of this process, like every time below
    state: StateType | None = None  # as last read from the server
    worker: str = ""
    started_at: float | None = None  # first seen running (its timeout counts from here)
    pending_since: float | None = None
    ended_seen_at: float | None = None  # its last heartbeat said its work is on disk
    stop_reason: str | None = None  # why the dataset run asked it to stop
    stop_kind: str = ""  # "timeout" or "stop"
    stop_asked_at: float | None = None
    scheduled_for: datetime | None = None  # its place in the pool's queue (kept by a resubmission)

    def where(self) -> str:
        return f" on {self.worker}" if self.worker else ""


class PoolBatches:
    def __init__(self, config: RunConfig, prompt_list: str, rpm_name: str | None, on_tick: Callable[[], None],
                 allowance: Allowance | None = None, logger: logging.Logger | None = None,
                 progress: Callable[[], str] = lambda: "", adopt: Iterable[FlowRun] = (), wave: int = 0):
        """`adopt`: batch runs a previous attempt of this dataset run submitted and left unfinished
        (flows/runs.py crash_orphaned_children): watched like new ones instead of submitted again.
        `wave`: an adaptive run's wave (0: none), part of each batch run's key and name."""
        self.config, self.prompt_list, self.rpm_name, self.on_tick = config, prompt_list, rpm_name, on_tick
        self.allowance, self.progress = allowance, progress
        self.adopt, self.wave = list(adopt), wave
        self.logger = logger or _log
        self.dispatch = config.dispatch
        self.deployment = config.dispatch.deployment
        self.run_dir = RunLayout(resolve(config)).run_dir
        self.live: dict[UUID, Attempt] = {}
        self.attempts: dict[int, int] = {}  # batch index -> attempts submitted
        self.carried: dict[int, BatchCounts] = {}  # batch index -> counts of its lost attempts (last heartbeats)
        self.stopping: str | None = None
        self.down_since: float | None = None  # the server has not answered since
        self.up_since: float | None = None  # the server has answered every poll since
        self._statuses: tuple[float, dict[str, str]] | None = None
        self.poll_failures = 0
        self.last_report = time.monotonic()
        self._deployment = None

    def check(self) -> None:
        """The deployment batches go to must exist (before anything is submitted)."""
        from prefect.exceptions import ObjectNotFound

        def read():
            with get_client(sync_client=True) as client:
                return client.read_deployment_by_name(self.deployment)

        try:
            self._deployment = ride_out(read, "reading the batch deployment", self.dispatch.server_outage_s,
                                        self.logger)
        except ObjectNotFound:
            raise ConfigError(f"dispatch.deployment: received {self.deployment!r} (no such deployment on this "
                              "server), allowed: a deployed search-batch flow, e.g. search-batch/gpu from "
                              "deployments/prefect.yaml (docs/scale-out.md)") from None

    # ---- the loop -------------------------------------------------------------------------------------

    def run(self, batches: list[Batch]) -> Iterator[BatchResult]:
        self.check()
        every = [index for batch in batches for index in range(batch.start, batch.stop)]
        adopt = {run.parameters.get("batch_index"): run for run in self.adopt}
        for batch in batches:
            if batch.index in adopt:
                self._adopt(batch, adopt[batch.index])
                continue
            allowance = _batch_allowance(self.allowance, batch, every)  # the others run beside it
            self._submit(batch, {
                "config": self.config.model_dump(mode="json"), "batch_index": batch.index,
                "prompt_list": self.prompt_list, "start": batch.start, "stop": batch.stop,
                "rpm_limit_name": self.rpm_name, "view": None,
                "allowance": allowance.model_dump(mode="json") if allowance is not None else None})
        self.logger.info("%d batches on %s; a batch silent for %s is resubmitted (up to %d attempts)",
                         len(batches), self.deployment, _span(self.dispatch.lost_after_s), self.dispatch.max_attempts)
        # One HTTP line per request (httpx logs each at INFO) would bury the run's log while it waits.
        http_logger = logging.getLogger("httpx")
        http_level = http_logger.level
        http_logger.setLevel(max(http_level, logging.WARNING))
        try:
            while self.live:
                now = time.monotonic()
                runs = self._poll(now)
                for attempt in list(self.live.values()):
                    result = self._judge(attempt, runs, now)
                    if result is not None:
                        yield result
                if not self.live:
                    break
                self._report(now, runs)
                self.on_tick()
                time.sleep(POLL_S if self.down_since is None else max(POLL_S, backoff_s(self.poll_failures)))
        finally:
            http_logger.setLevel(http_level)

    def _poll(self, now: float) -> dict[UUID, FlowRun] | None:
        """Every awaited batch run, in as few requests as there are pages; None while the server is away."""
        ids = list(self.live)
        try:
            with fail_fast(), get_client(sync_client=True) as client:
                found = []
                for first in range(0, len(ids), FETCH_PAGE):
                    found += client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids[first:first + FETCH_PAGE])),
                        limit=FETCH_PAGE)
        except Exception as error:  # noqa: BLE001 - an outage is waited out below; anything else is raised
            if not is_outage(error):
                raise
            self.poll_failures += 1
            self.up_since = None
            if self.down_since is None:
                self.down_since = now
                self.logger.warning("the Prefect server cannot be reached (%s: %s); batches go on, their heartbeats "
                                    "are still read; waiting up to %s for it", type(error).__name__, error,
                                    duration(self.dispatch.server_outage_s))
            elif now - self.down_since > self.dispatch.server_outage_s:
                raise ServerUnreachable(f"the Prefect server could not be reached for {duration(now - self.down_since)}"
                                        f" (dispatch.server_outage_s {self.dispatch.server_outage_s:g}); the batches "
                                        "still running go on and write their results") from error
            return None
        if self.down_since is not None:
            self.logger.info("the Prefect server answers again after %s", _span(now - self.down_since))
            self.down_since, self.poll_failures, self.up_since = None, 0, now
        elif self.up_since is None:
            self.up_since = now
        return {run.id: run for run in found}

    def _judge(self, attempt: Attempt, runs: dict[UUID, FlowRun] | None, now: float) -> BatchResult | None:
        """What to do about one attempt now: None (keep waiting, or it was submitted again) or its result."""
        beat = attempt.watch.read(now)
        run = runs.get(attempt.run_id) if runs is not None else None
        if runs is not None and run is None:
            return self._lost(attempt, "its flow run is gone from the server (deleted)", beat, mark=False)
        if run is not None:
            self._observe(attempt, run, now)
        if beat is not None and attempt.started_at is None:
            attempt.started_at = now  # beating: it runs, whatever the server has heard yet
        if beat is not None and beat.ended:
            return self._ended(attempt, run, beat, now)
        if run is None:
            return None  # the server is away: nothing to decide that needs it (the beats are still read)
        if run.state_type in TERMINAL:
            return self._from_server(attempt, run, beat)
        if attempt.stop_asked_at is not None:
            return self._judge_stopping(attempt, beat, now)
        if run.state_type == StateType.RUNNING or (beat is not None and run.state_type != StateType.CANCELLING):
            if now - attempt.started_at > self.dispatch.batch_timeout_s:
                self._ask_to_stop(attempt, f"it ran longer than dispatch.batch_timeout_s "
                                           f"({self.dispatch.batch_timeout_s:g} s)", kind="timeout")
                return None
            if beat is None:
                # Running on the server, not beating yet: between the engine's report and the flow's first
                # line, where a process may wait out an outage in Prefect's own retries (minutes, seen in
                # the outage test). Silence proves nothing there, as while Pending.
                return self._judge_not_beating(attempt, beat, now)
            silent = attempt.watch.silent_for(now, attempt.started_at)
            if silent > self.dispatch.lost_after_s:
                return self._lost(attempt, f"no heartbeat for {_span(silent)} (dispatch.lost_after_s "
                                           f"{self.dispatch.lost_after_s:g}): its worker or machine is gone", beat)
            return None
        if run.state_type == StateType.PENDING:
            return self._judge_not_beating(attempt, beat, now)
        return None  # Scheduled (waiting for a free worker), Paused, or Cancelling on someone's request

    def _judge_stopping(self, attempt: Attempt, beat: Beat | None, now: float) -> BatchResult | None:
        """Asked to stop, not ended on the server yet. Its own heartbeat says when its process is gone
        ("stopped", or silent for three beats): Prefect's confirmation may never come (a worker that
        lost the server stops watching for cancellations: "Cancellation observer failed"), so the run
        is set Cancelled here; one that neither stops nor goes quiet is set Cancelled after lost_after_s."""
        if attempt.started_at is None:
            # Never seen running: Cancelling on the server refuses its Running report, so it cannot begin.
            # That state is left for its worker (or the server's cancellation cleanup) to confirm.
            return self._after_stop(attempt, None, beat)
        quiet = attempt.watch.silent_for(now, attempt.stop_asked_at) >= 3 * self.dispatch.heartbeat_s
        if quiet or now - attempt.stop_asked_at > self.dispatch.lost_after_s:
            late = "" if quiet else f"; it did not stop within {self.dispatch.lost_after_s:g} s"
            self._set_state(attempt, Cancelled(message=f"{attempt.stop_reason}{late}"))
            return self._after_stop(attempt, None, beat)
        return None

    def _judge_not_beating(self, attempt: Attempt, beat: Beat | None, now: float) -> BatchResult | None:
        """Taken by a worker (Pending, or Running on the server) but not beating yet. Starting is slow (a
        new process imports torch and the pipeline's libraries: 25 s seen on a busy 2-core VM) and may
        wait out an outage in Prefect's retries, so silence alone proves nothing here: the batch is lost
        when its worker has gone offline on the server (trusted only once the server has answered for
        WORKER_STATUS_SETTLE_S, as workers report in every 30 s), or after PENDING_LIMIT_S."""
        if attempt.pending_since is None:
            attempt.pending_since = now
        waited = now - attempt.pending_since
        if waited > max(self.dispatch.lost_after_s, PENDING_LIMIT_S):
            return self._lost(attempt, f"taken by a worker{attempt.where()} that did not start it within "
                                       f"{_span(waited)}", beat)
        settled = self.up_since is not None and now - self.up_since > WORKER_STATUS_SETTLE_S
        if waited > self.dispatch.lost_after_s and settled and attempt.worker:
            try:
                status = self._worker_status(now).get(attempt.worker)
            except Exception as error:  # noqa: BLE001 - an outage only postpones this; anything else is raised
                if not is_outage(error):
                    raise
                return None
            if status is not None and status != "ONLINE":
                return self._lost(attempt, f"its worker {attempt.worker} went {status.lower()} before the batch "
                                           "began", beat)
        return None

    def _worker_status(self, now: float) -> dict[str, str]:
        """Worker name -> ONLINE/OFFLINE as the server sees it (read at most once a poll interval)."""
        if self._statuses is not None and now - self._statuses[0] < POLL_S:
            return self._statuses[1]
        pool = getattr(self._deployment, "work_pool_name", None)
        if not pool:
            return {}
        with fail_fast(), get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(pool)
        self._statuses = (now, {w.name: str(getattr(w.status, "value", w.status)).upper() for w in workers})
        return self._statuses[1]

    def _observe(self, attempt: Attempt, run: FlowRun, now: float) -> None:
        worker = (run.labels or {}).get("prefect.worker.name") or ""
        attempt.worker = str(worker) or attempt.worker
        if run.state_type == StateType.RUNNING and attempt.started_at is None:
            attempt.started_at = now
            self.logger.info("%s started%s (attempt %d)", attempt.batch.label(), attempt.where(), attempt.number)
        attempt.state = run.state_type

    # ---- outcomes -------------------------------------------------------------------------------------

    def _ended(self, attempt: Attempt, run: FlowRun | None, beat: Beat, now: float) -> BatchResult | None:
        """Its work is on disk (its last heartbeat says so): the server's word only catches up. Or it
        stopped itself on its stop file ("stopped"): its process is going, Cancelled whatever Prefect says."""
        if run is not None and run.state_type in {StateType.COMPLETED, StateType.FAILED}:
            return self._from_server(attempt, run, beat)
        if run is None:
            return None  # the server is away: report when it answers
        if beat.ended == "stopped":
            if run.state_type != StateType.CANCELLED:
                self._set_state(attempt, Cancelled(message=attempt.stop_reason or beat.message))
            if attempt.stop_asked_at is not None:
                return self._after_stop(attempt, None, beat)
            return self._done(attempt, f"cancelled: {beat.message}", carry=beat)
        if attempt.ended_seen_at is None:
            attempt.ended_seen_at = now
        if run.state_type in TERMINAL or now - attempt.ended_seen_at > self.dispatch.lost_after_s:
            # Crashed or Cancelled after its work was done, or still Running long after: its own report to the
            # server was lost (an outage outlasting its retries). The run folder is the truth; say so there.
            message = (f"{beat.ended} (set by the dataset run from the batch's run folder: its own report to "
                       "the server did not arrive)")
            self._set_state(attempt, Completed(message=message) if beat.ended == "completed"
                            else Failed(message=f"{beat.message}; {message}"))
            return self._done(attempt, None if beat.ended == "completed" else (beat.message or "failed"))
        return None

    def _from_server(self, attempt: Attempt, run: FlowRun, beat: Beat | None) -> BatchResult | None:
        state = run.state_type
        if state == StateType.COMPLETED:
            return self._done(attempt, None)
        if state == StateType.FAILED:
            return self._done(attempt, run.state.message or run.state.name or "failed")
        if attempt.stop_asked_at is not None:
            return self._after_stop(attempt, run, beat)
        if state == StateType.CANCELLED:  # someone else cancelled it (the UI, the CLI): theirs to decide
            return self._done(attempt, f"cancelled: {run.state.message or 'by a person or an automation'}")
        return self._lost(attempt, f"its run crashed: {run.state.message or 'no reason given'}", beat, mark=False)

    def _after_stop(self, attempt: Attempt, run: FlowRun | None, beat: Beat | None) -> BatchResult | None:
        if run is not None and run.state_type != StateType.CANCELLED:
            # Stopped through its stop file, its engine reports a crash: it was cancelled, and says why.
            self._set_state(attempt, Cancelled(message=attempt.stop_reason))
        if attempt.stop_kind == "timeout":
            return self._lost(attempt, attempt.stop_reason or "timed out", beat, mark=False, verb="timed out")
        return self._done(attempt, f"cancelled: {attempt.stop_reason}", carry=beat)

    def _done(self, attempt: Attempt, error: str | None, carry: Beat | None = None) -> BatchResult:
        self.live.pop(attempt.run_id, None)
        if carry is not None:
            self._carry(attempt.batch.index, carry)
        summary = read_summary(self.config, attempt.batch.index, str(attempt.run_id))
        counts = BatchCounts(**vars(self.carried.get(attempt.batch.index, BatchCounts())))
        counts.add(counts_of(summary))
        attempt.watch.remove()
        if error is None:
            self.logger.info("%s finished%s", attempt.batch.label(), attempt.where())
        return BatchResult(attempt.batch, summary, error, counts, attempt.number)

    def _lost(self, attempt: Attempt, why: str, beat: Beat | None, mark: bool = True,
              verb: str = "lost") -> BatchResult | None:
        """Mark it Crashed (unless the server already ended it), and submit the batch again while attempts
        remain; else its result names it, in one line."""
        if mark:
            self._set_state(attempt, Crashed(message=f"{verb}: {why}; the dataset run resubmits the batch"))
        self.live.pop(attempt.run_id, None)
        self._carry(attempt.batch.index, beat)
        attempt.watch.remove()
        batch, limit = attempt.batch, self.dispatch.max_attempts
        if self.stopping is None and attempt.number < limit:
            self.logger.warning("%s %s%s: %s; submitted again (attempt %d of %d)", batch.label(), verb,
                                attempt.where(), why, attempt.number + 1, limit)
            self._submit(batch, attempt.parameters, attempt.scheduled_for)
            return None
        error = (f"{batch.label()} {verb} {attempt.number} time{'s' * (attempt.number != 1)} (dispatch.max_attempts "
                 f"{limit}); last{attempt.where()}: {why}")
        counts = BatchCounts(**vars(self.carried.get(batch.index, BatchCounts())))
        return BatchResult(batch, None, error, counts, attempt.number)

    def _carry(self, batch_index: int, beat: Beat | None) -> None:
        """A lost attempt's work so far (its last heartbeat's counts) still counts for this run."""
        if beat is not None and beat.counts:
            self.carried.setdefault(batch_index, BatchCounts()).add(BatchCounts(**beat.counts))

    # ---- talking to the server ------------------------------------------------------------------------

    def _submit(self, batch: Batch, parameters: dict, scheduled_for: datetime | None = None) -> Attempt:
        """`scheduled_for`: a resubmission keeps the first attempt's place in the queue, so the next free
        worker takes it before batches submitted after it (workers are handed the earliest
        next_scheduled_start_time first: prefect/server/database/query_components.py, 3.9.1)."""
        number = self.attempts.get(batch.index, 0) + 1
        self.attempts[batch.index] = number
        flow_run = ride_out(lambda: self._create_run(batch, number, parameters, scheduled_for),
                            f"submitting {batch.label()}", self.dispatch.server_outage_s, self.logger)
        attempt = Attempt(batch, number, flow_run.id, parameters,
                          BeatWatch(heartbeat_path(self.run_dir, batch.index, str(flow_run.id))), time.monotonic(),
                          scheduled_for=scheduled_for or flow_run.expected_start_time)
        self.live[flow_run.id] = attempt
        return attempt

    def _adopt(self, batch: Batch, run: FlowRun) -> Attempt:
        number = self.attempts.get(batch.index, 0) + 1
        self.attempts[batch.index] = number
        attempt = Attempt(batch, number, run.id, dict(run.parameters),
                          BeatWatch(heartbeat_path(self.run_dir, batch.index, str(run.id))), time.monotonic(),
                          scheduled_for=run.expected_start_time)
        self.live[run.id] = attempt
        self.logger.info("%s: watching its run %s from before this run was retried (%s)", batch.label(), run.name,
                         run.state_type.value if run.state_type else "state unknown")
        return attempt

    def _create_run(self, batch: Batch, number: int, parameters: dict, scheduled_for: datetime | None) -> FlowRun:
        """A run of the deployment, linked to the dataset run as its subflow (what run_deployment does,
        with keys of our own: one tracking task run and one flow run per attempt, and a retried request
        after an outage finds the run it already created instead of making a second)."""
        context = FlowRunContext.get()
        parent = context.flow_run if context is not None else None
        with get_client(sync_client=True) as client:
            if self._deployment is None:
                self._deployment = client.read_deployment_by_name(self.deployment)
            parent_task_run_id, key = None, None
            if parent is not None:
                wave = f"wave-{self.wave}-" if self.wave else ""
                key = f"{parent.id}-try-{parent.run_count}-{wave}batch-{batch.index}-attempt-{number}"
                tracker = client.create_task_run(task=Task(name=self.deployment, fn=_batch_run), flow_run_id=parent.id,
                                                 dynamic_key=key, name=f"{wave}batch-{batch.index}-attempt-{number}",
                                                 state=Pending())
                parent_task_run_id = tracker.id
            return client.create_flow_run_from_deployment(self._deployment.id, parameters=parameters,
                                                          state=Scheduled(scheduled_time=scheduled_for),
                                                          idempotency_key=key,
                                                          parent_task_run_id=parent_task_run_id)

    def _set_state(self, attempt: Attempt, state) -> None:
        def send():
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(attempt.run_id, state, force=True)

        ride_out(send, f"setting {attempt.batch.label()}'s run {state.type.value}", self.dispatch.server_outage_s,
                 self.logger)

    def _ask_to_stop(self, attempt: Attempt, reason: str, kind: str) -> None:
        """Through the run folder first (its heartbeat thread ends its process, server or not), then
        through Prefect (its worker kills it; a run no worker took yet is simply Cancelled)."""
        attempt.stop_reason, attempt.stop_kind, attempt.stop_asked_at = reason, kind, time.monotonic()
        attempt.watch.ask_to_stop(reason)
        if kind == "timeout":
            self.logger.warning("%s: %s; cancelling it%s", attempt.batch.label(), reason, attempt.where())
        # Waiting for a worker: Cancelled (workers only take Scheduled runs). Anything a worker may have
        # taken: Cancelling, which the server keeps until it is confirmed Cancelled and which refuses a
        # Running report ("Cannot transition flows that are cancelling to a state other than Cancelled"),
        # so a process still starting cannot begin; Cancelled would not (Prefect 3.9.1's server accepts
        # Cancelled -> Running: tried against its API). Its worker kills it and confirms.
        state = Cancelled(message=reason) if attempt.state == StateType.SCHEDULED and attempt.started_at is None \
            else Cancelling(message=reason)
        try:
            self._set_state(attempt, state)
        except ServerUnreachable as error:  # the stop file still stops it; the server learns later
            self.logger.warning("%s", error)

    # ---- stop -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel the batches no worker has started (a fatal error: every one would fail the same way)."""
        for attempt in list(self.live.values()):
            if attempt.started_at is None and attempt.stop_asked_at is None:
                self._ask_to_stop(attempt, "another batch found the verifier refuses its configuration", kind="stop")

    def cancel_all(self, reason: str) -> list[str]:
        """Stop every batch this run submitted (Ctrl-C, SIGTERM, a cancellation of the dataset run); waits
        up to STOP_CONFIRM_S for them to end and says how each ended."""
        self.stopping = reason
        budget = self.dispatch.server_outage_s
        self.dispatch = self.dispatch.model_copy(update={"server_outage_s": min(budget, 60.0)})  # a stop is brief
        for attempt in list(self.live.values()):
            self._ask_to_stop(attempt, reason, kind="stop")
        deadline = time.monotonic() + STOP_CONFIRM_S
        for _ in range(int(STOP_CONFIRM_S / POLL_S) + 1):
            try:
                runs = self._poll(time.monotonic())
            except ServerUnreachable:  # the stop files still stop what runs; the server hears later
                break
            if runs is not None:
                now = time.monotonic()
                for attempt in self.live.values():
                    run = runs.get(attempt.run_id)
                    attempt.state = run.state_type if run is not None else attempt.state
                    beat = attempt.watch.read(now)
                    # Only a batch that was running, and whose process is gone: one never seen running
                    # stays Cancelling, which keeps it from beginning (see _ask_to_stop).
                    gone = attempt.started_at is not None and (
                        (beat is not None and beat.ended == "stopped")
                        or attempt.watch.silent_for(now, attempt.stop_asked_at) >= 3 * self.dispatch.heartbeat_s)
                    if attempt.state not in TERMINAL and gone:  # its process is gone: say so for Prefect
                        try:
                            self._set_state(attempt, Cancelled(message=reason))
                        except ServerUnreachable:
                            continue
                        attempt.state = StateType.CANCELLED
            if all(a.state in TERMINAL or a.started_at is None for a in self.live.values()) \
                    or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        lines = []
        for attempt in sorted(self.live.values(), key=lambda a: a.batch.index):
            ended = "stopped" if attempt.state in TERMINAL else \
                "cancelling (it cannot begin; its worker confirms)" if attempt.started_at is None else \
                "asked to stop (its worker stops it)"
            lines.append(f"{attempt.batch.label()}: {ended}" + (f", was running{attempt.where()}"
                                                                if attempt.started_at is not None else ""))
        return lines

    # ---- the waiting line -----------------------------------------------------------------------------

    def _report(self, now: float, runs: dict[UUID, FlowRun] | None) -> None:
        if now - self.last_report < REPORT_EVERY_S:
            return
        self.last_report = now
        running = sorted((a for a in self.live.values() if a.started_at is not None), key=lambda a: a.batch.index)
        queued = [a for a in self.live.values() if a.started_at is None]
        parts = [f"{len(running)} running" + (" (" + ", ".join(
            f"{a.batch.index}{a.where()} for {_span(now - a.started_at)}" for a in running) + ")" if running else ""),
                 f"{len(queued)} waiting for a worker"]
        if self.down_since is not None:
            parts.append(f"the Prefect server unreachable for {_span(now - self.down_since)}")
        elif queued and not running:
            parts.append(self._workers_online())
        progress = self.progress()
        self.logger.info("waiting for %d batch%s: %s%s", len(self.live), "es" * (len(self.live) != 1),
                         "; ".join(p for p in parts if p),
                         f"; {progress}" if progress else "")

    def _workers_online(self) -> str:
        """Batches waiting and none running: say whether any worker polls the pool at all."""
        pool = getattr(self._deployment, "work_pool_name", None)
        if not pool:
            return ""
        try:
            statuses = self._worker_status(time.monotonic())
        except Exception as error:  # noqa: BLE001 - an outage only leaves this line out
            if is_outage(error):
                return ""
            raise
        online = [name for name, status in statuses.items() if status == "ONLINE"]
        return f"workers online in pool {pool}: {', '.join(online)}" if online else \
            f"no worker is online in pool {pool}: start one (docs/scale-out.md)"
