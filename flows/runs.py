"""Keeping Prefect's run bookkeeping right across retries and crashes.

A retried dataset run (`prefect flow-run retry`, Retry in the UI) finds its batch subflows by the
order they are called in (Prefect's dynamic keys). Finished batches are skipped, so without help the
first batch called on a retry would take the first batch's old run, name and all. And a process that
was killed leaves its runs "Running" forever. Both are put right here, before any batch starts;
pooled batch runs, which may outlive the dataset run's process, are handed back to be watched instead.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterStateType,
    FlowRunFilterState,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.states import Crashed

from flows.prefect_internals import set_next_call_index

UNFINISHED = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED, StateType.PAUSED]


def align_subflow_key(subflow: Flow, index: int) -> None:
    """Make the next call of `subflow` in this flow run the `index`-th (0-based) whatever was skipped, so
    that on a retry it finds its own earlier run (Prefect's call counter: flows/prefect_internals.py)."""
    set_next_call_index(subflow, index)


def crash_orphaned_children(logger, spare: Callable[[FlowRun], bool] = lambda run: False) -> list[FlowRun]:
    """On a retried run: what the lost attempt left unfinished (this run's task runs, its subflow runs
    and theirs) is marked Crashed, so nothing stays Running and each batch starts a fresh run. Children
    `spare` says are not ours to judge (a pooled batch on a worker may well be alive: only the dataset
    run's process died) are left as they are, with their task runs, and returned for the caller to watch."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.run_count <= 1:
        return []
    crashed = Crashed(message="its process ended before finishing; the parent run was retried")
    found = 0
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[context.flow_run.id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))))
        spared = [child for child in children if spare(child)]
        orphans = [child for child in children if not spare(child)]
        for child in orphans:
            client.set_flow_run_state(child.id, crashed, force=True)
            found += 1
        run_ids = [context.flow_run.id] + [child.id for child in orphans]
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=run_ids),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED))))
        for task_run in tasks:
            client.set_task_run_state(task_run.id, crashed, force=True)
            found += 1
    if found:
        logger.warning("marked %d runs left unfinished by the previous attempt as Crashed", found)
    return spared
