"""The Prefect internals ttsf relies on (flows/prefect_internals.py), checked against the installed
Prefect. When one of these fails after a Prefect upgrade, a retried dataset run would no longer find
its batches' earlier subflow runs: read the new Prefect's flow_engine.create_flow_run and
_internal/engine.dynamic_key_for_task_run, and change flows/prefect_internals.py (only there)."""

from __future__ import annotations

from types import SimpleNamespace

import prefect
import pytest
from prefect import flow
from prefect.context import FlowRunContext

from flows.prefect_internals import CHECKED_WITH, COUNTER_FIELD, set_next_call_index, subflow_task_key

MOVED = (f"Prefect {prefect.__version__} changed what flows/prefect_internals.py relies on (checked with "
         f"{CHECKED_WITH}): ")


@flow(name="internals-child")
def _child(x: int) -> int:
    return x


def test_the_call_counter_is_still_a_field_of_the_flow_run_context():
    assert COUNTER_FIELD in FlowRunContext.model_fields, MOVED + f"FlowRunContext has no {COUNTER_FIELD!r}"


def test_the_counter_still_counts_calls_from_zero_under_the_task_key():
    """dynamic_key_for_task_run: absent -> 0, n -> n + 1, kept in the context's dict by task key."""
    from prefect._internal.engine import dynamic_key_for_task_run

    task = prefect.Task(name=_child.name, fn=_child.fn)
    context = SimpleNamespace(detached=False, flow_run=object(), **{COUNTER_FIELD: {}})
    assert [dynamic_key_for_task_run(context, task) for _ in range(3)] == [0, 1, 2], MOVED + "call counting"
    getattr(context, COUNTER_FIELD)[subflow_task_key(_child)] = 6  # what set_next_call_index(_child, 7) writes
    assert dynamic_key_for_task_run(context, task) == 7, MOVED + "the counter is not keyed by Task.task_key"


@pytest.mark.usefixtures("prefect_harness")
def test_a_subflow_call_takes_the_index_set_before_it():
    """End to end on a Prefect server: the subflow's tracking task run gets exactly the key we set."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    @flow(name="internals-parent")
    def parent() -> str:
        _child(0)  # key 0
        set_next_call_index(_child, 5)
        _child(1)  # key 5, as a retry skipping batches 1-4 would need
        return str(FlowRunContext.get().flow_run.id)

    parent_id = parent()
    with get_client(sync_client=True) as client:
        tracking = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent_id])))
    keys = sorted(t.dynamic_key for t in tracking if t.task_key == subflow_task_key(_child))
    assert keys == ["0", "5"], MOVED + f"subflow tracking tasks got keys {keys} " \
                               f"(task keys seen: {sorted({t.task_key for t in tracking})})"


def test_outside_a_flow_run_there_is_nothing_to_align_and_a_bad_index_is_refused():
    set_next_call_index(_child, 3)  # no flow run: a no-op
    with pytest.raises(ValueError, match="index: received -1"):
        set_next_call_index(_child, -1)
