"""Grade a chunk of a stage's images (the verifier's own batch size) and store each grade.

Not cached by Prefect: the store is the cache, keyed by (verifier grading settings, prompt, image
sha256); a retry re-asks only images without a stored grade. Rate limits, 5xx and timeouts retry
with exponential backoff and jitter, never sooner than the server's Retry-After; a wrong key fails
at once; an invalid answer retries a bounded number of times (ttsf_core.retry, shared with the
thread executor).
"""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import rate_limit
from prefect.tasks import exponential_backoff

from tasks import runtime
from ttsf_core import jobs
from ttsf_core.config import RunConfig
from ttsf_core.retry import JITTER, is_retryable, server_wait
from ttsf_core.store import Store
from ttsf_core.verifiers.base import RateLimitError


def retry_condition(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn, deciding by ttsf_core.retry's policy."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - the policy decides on every kind
        return is_retryable(error, task_run.run_count)
    return False


@task(name="verify", task_run_name="verify-p{job.prompt_index}-r{job.search_round}-c{job.chunk}",
      cache_policy=NO_CACHE, retries=6, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=JITTER, retry_condition_fn=retry_condition)
def verify_task(config: RunConfig, job: jobs.GradeJob, rpm_limit_name: str | None = None) -> jobs.GradeResult:
    store = Store(config)
    if rpm_limit_name:
        asking = sum(store.find_grade(job.prompt, image.sha256) is None for image in job.images)
        for _ in range(asking):  # one slot a request, taken one at a time: a chunk may exceed the burst
            rate_limit(rpm_limit_name, strict=True)
    try:
        return jobs.grade(store, runtime.verifier_for(config.verifier_args), job)
    except RateLimitError as error:
        # Prefect's backoff starts after this: together they wait at least what the server asked.
        time.sleep(server_wait(error))
        raise


def configured_verify_task(config: RunConfig):
    return verify_task.with_options(
        retries=config.verifier_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.verifier_retry_backoff_s),
    )
