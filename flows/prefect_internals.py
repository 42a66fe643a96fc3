"""The one place ttsf touches Prefect's internals (checked against Prefect 3.9.1's source).

A retried dataset run must find batch N's earlier subflow run again although finished batches are
skipped, so it sets where Prefect's per-flow-run call counter (the "dynamic key") stands before it
calls the subflow. Prefect has no public API for that. Two pieces are needed, and only here:

- the key Prefect counts a subflow's calls under: the task key of the tracking task the engine creates
  for a subflow call, `Task(name=flow.name, fn=flow.fn)` (prefect/flow_engine.py,
  FlowRunEngine.create_flow_run). Read through the public `Task.task_key` attribute, not by calling
  the private `prefect.tasks._generate_task_key` that computes it.
- the counter itself: `FlowRunContext.task_run_dynamic_keys`, a dict task key -> last key handed out,
  advanced by `prefect._internal.engine.dynamic_key_for_task_run` (absent: next is 0; n: next is n+1).

Batches sent to a work pool need neither: flows/dispatch.py creates their tracking task runs with
explicit keys through the public client (`create_task_run`, `create_flow_run_from_deployment`).
tests/test_prefect_internals.py fails, naming what moved, when a Prefect upgrade changes either piece.
"""

from __future__ import annotations

from prefect import Flow, Task
from prefect.context import FlowRunContext

CHECKED_WITH = "3.9.1"  # the Prefect version whose source the above was read in
COUNTER_FIELD = "task_run_dynamic_keys"


def subflow_task_key(subflow: Flow) -> str:
    """The key a call of `subflow` inside a flow run is counted under."""
    return Task(name=subflow.name, fn=subflow.fn).task_key


def set_next_call_index(subflow: Flow, index: int) -> None:
    """Make the next call of `subflow` in the current flow run its `index`-th (0-based), whatever was
    called or skipped before. Outside a flow run: nothing to align."""
    if index < 0:
        raise ValueError(f"index: received {index}, allowed: a call index >= 0")
    context = FlowRunContext.get()
    if context is None:
        return
    counters = getattr(context, COUNTER_FIELD)
    key = subflow_task_key(subflow)
    if index == 0:
        counters.pop(key, None)
    else:
        counters[key] = index - 1
