"""Generate a stage's missing images and write them to the store (each batch as it finishes).

Not cached by Prefect: the store is the cache. The job finds images already stored (written by an
earlier attempt, run or worker) and generates only the rest, so a retry pays for what is missing.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import runtime
from ttsf_core.engine import jobs
from ttsf_core.config import RunConfig
from ttsf_core.resolve import resolve
from ttsf_core.storage.store import Store, StoredImage


@task(name="generate", task_run_name="generate-p{job.prompt_index}-r{job.search_round}-{job.stage}",
      cache_policy=NO_CACHE, retries=1)
def generate_task(config: RunConfig, job: jobs.GenerateJob) -> list[StoredImage]:
    return jobs.generate(Store(resolve(config)), runtime.generator_for(config), job)
