"""Select a round's best candidate and write its record (the record marks the round finished)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from ttsf_core import jobs
from ttsf_core.config import RunConfig
from ttsf_core.records import RoundRecord, RunLayout
from ttsf_core.search import build_strategy


@task(name="select-and-write", task_run_name="select-p{job.prompt_index}-r{job.search_round}",
      cache_policy=NO_CACHE)
def finish_round_task(config: RunConfig, job: jobs.FinishJob) -> RoundRecord:
    return jobs.finish(config, RunLayout(config), build_strategy(config), job)
