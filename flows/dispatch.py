"""Where a dataset run's batches run.

local: one after another, as subflows in the dataset run's own process (no pool, no worker).
pool:  each as a flow run of a `search-batch` deployment on a work pool, all submitted at once, so
       every worker (one per GPU, or one per machine) takes the next batch as it frees up; the
       dataset run waits for them, keeping the run's progress true as prompts finish.

Either way each finished batch is reported as a BatchResult, read from the summary the batch wrote
into the run folder (shared storage in pool mode), whichever process or machine ran it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.states import Cancelled
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.slugify import slugify

from flows.runs import align_subflow_key
from flows.search_batch import BatchSummary, read_summary, search_batch
from flows.storage import result_storage_for
from ttsf_core.budget import Allowance
from ttsf_core.config import ConfigError, RunConfig

POLL_S = 2.0
TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@dataclass
class Batch:
    index: int
    start: int
    stop: int


@dataclass
class BatchResult:
    batch: Batch
    summary: BatchSummary | None
    error: str | None  # None: completed


class LocalBatches:
    def __init__(self, config: RunConfig, prompt_list: str, rpm_name: str | None, view_for: Callable,
                 allowance: Allowance | None = None, spent: Callable[[], tuple[int, float]] = lambda: (0, 0.0)):
        self.config, self.prompt_list, self.rpm_name, self.view_for = config, prompt_list, rpm_name, view_for
        self.allowance, self.spent = allowance, spent
        self.flow = search_batch.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.task_workers),
                                              result_storage=result_storage_for(config))

    def run(self, batches: list[Batch]) -> Iterator[BatchResult]:
        for position, batch in enumerate(batches):
            align_subflow_key(search_batch, batch.index)  # batch-N is batch N's run again on a retry
            later = [index for other in batches[position + 1:] for index in range(other.start, other.stop)]
            allowance = _batch_allowance(self.allowance, batch, later, *self.spent())
            state = self.flow(self.config, batch.index, self.prompt_list, batch.start, batch.stop, self.rpm_name,
                              self.view_for(), allowance, return_state=True)
            yield BatchResult(batch, read_summary(self.config, batch.index),
                              None if state.is_completed() else state.message)

    def stop(self) -> None:
        """Batches run one after another here: stopping is not starting the next (the caller's loop)."""


def _batch_allowance(allowance: Allowance | None, batch: Batch, others: list[int], spent_requests: int = 0,
                     spent_cost: float = 0.0) -> Allowance | None:
    if allowance is None:
        return None
    return allowance.for_batch(range(batch.start, batch.stop), others, spent_requests, spent_cost)


class PoolBatches:
    def __init__(self, config: RunConfig, prompt_list: str, rpm_name: str | None, on_tick: Callable[[], None],
                 allowance: Allowance | None = None):
        self.config, self.prompt_list, self.rpm_name, self.on_tick = config, prompt_list, rpm_name, on_tick
        self.allowance = allowance
        self.deployment = config.dispatch.deployment
        self.runs: dict[UUID, Batch] = {}

    def check(self) -> None:
        """The deployment batches go to must exist (before anything is submitted)."""
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name(self.deployment)
            except ObjectNotFound:
                raise ConfigError(f"dispatch.deployment: received {self.deployment!r} (no such deployment on this "
                                  "server), allowed: a deployed search-batch flow, e.g. search-batch/gpu from "
                                  "deployments/prefect.yaml (docs/scale-out.md)") from None

    def run(self, batches: list[Batch]) -> Iterator[BatchResult]:
        self.check()
        every = [index for batch in batches for index in range(batch.start, batch.stop)]
        for batch in batches:
            _align_deployment_key(self.deployment, batch.index)
            allowance = _batch_allowance(self.allowance, batch, every)  # the others run beside it
            flow_run = run_deployment(self.deployment, timeout=0, parameters={
                "config": self.config.model_dump(mode="json"), "batch_index": batch.index,
                "prompt_list": self.prompt_list, "start": batch.start, "stop": batch.stop,
                "rpm_limit_name": self.rpm_name, "view": None,
                "allowance": allowance.model_dump(mode="json") if allowance is not None else None})
            self.runs[flow_run.id] = batch
        deadline = time.monotonic() + self.config.dispatch.batch_timeout_s
        while self.runs:
            for run_id, state in self._states():
                if state.type in TERMINAL:
                    batch = self.runs.pop(run_id)
                    error = None if state.type == StateType.COMPLETED else (state.message or state.name)
                    yield BatchResult(batch, read_summary(self.config, batch.index), error)
            if not self.runs:
                break
            if time.monotonic() > deadline:
                for run_id, batch in list(self.runs.items()):
                    yield BatchResult(self.runs.pop(run_id), None, "no result within dispatch.batch_timeout_s "
                                      f"({self.config.dispatch.batch_timeout_s:g} s); its worker may be lost")
                break
            self.on_tick()
            time.sleep(POLL_S)

    def _states(self):
        with get_client(sync_client=True) as client:
            return [(run_id, client.read_flow_run(run_id).state) for run_id in list(self.runs)]

    def stop(self) -> None:
        """Cancel the batches no worker has started (a fatal error: every one would fail the same way)."""
        with get_client(sync_client=True) as client:
            for run_id in list(self.runs):
                if client.read_flow_run(run_id).state.type in (StateType.SCHEDULED, StateType.PENDING):
                    client.set_flow_run_state(run_id, Cancelled(message="another batch found the verifier "
                                                                        "refuses its configuration"), force=True)


def _align_deployment_key(deployment: str, index: int) -> None:
    """As align_subflow_key, for run_deployment's tracking task (keyed by the deployment's name)."""
    context = FlowRunContext.get()
    if context is None:
        return
    key = f"prefect.deployments.flow_runs.run_deployment.{slugify(deployment)}"
    if index == 0:
        context.task_run_dynamic_keys.pop(key, None)
    else:
        context.task_run_dynamic_keys[key] = index - 1
