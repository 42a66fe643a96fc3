"""The Prefect executor: the engine's generate, grade and finish jobs as task runs.

Each call submits a task to the flow's task runner and returns its Prefect future (which has
`add_done_callback` and `result`, all the engine needs), so the Prefect path and the direct path run
the same loop (ttsf_core.engine.search_engine) and write the same records.
"""

from __future__ import annotations

from prefect.futures import PrefectFuture

from tasks.generate import generate_task
from tasks.select import select_task
from tasks.grade import grade_task
from ttsf_core.engine import jobs
from ttsf_core.config import RunConfig


class PrefectExecutor:
    def __init__(self, config: RunConfig, rpm_limit_name: str | None = None):
        self.config = config
        self.rpm_limit_name = rpm_limit_name

    def generate(self, job: jobs.GenerateJob) -> PrefectFuture:
        return generate_task.submit(config=self.config, job=job)

    def grade(self, job: jobs.GradeJob) -> PrefectFuture:
        return grade_task.submit(config=self.config, job=job, rpm_limit_name=self.rpm_limit_name)

    def select(self, job: jobs.SelectJob) -> PrefectFuture:
        return select_task.submit(config=self.config, job=job)
