"""Select a round's best candidate and write its record (the record marks the round finished)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from ttsf_core.engine import jobs
from ttsf_core.config import RunConfig
from ttsf_core.resolve import resolve
from ttsf_core.storage.records import RoundRecord, RunLayout
from ttsf_core.search import build_strategy


@task(name="select", task_run_name="select-p{job.prompt_index}-r{job.search_round}",
      cache_policy=NO_CACHE)
def select_task(config: RunConfig, job: jobs.SelectJob) -> RoundRecord:
    run = resolve(config)  # once per process: cached
    return jobs.select(run, RunLayout(run), build_strategy(run), job)
