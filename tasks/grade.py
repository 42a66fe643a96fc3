"""Grade a chunk of a stage's images (the verifier's own batch size) and store each verdict.

Not cached by Prefect: the store is the cache, keyed by (verifier grading settings, prompt, image
sha256), so a re-run re-asks only images without a stored verdict. Retries happen inside the job
(ttsf_core.engine.jobs.grade, the same loop as without Prefect) rather than as Prefect retries: only there
can each wait honour the server's Retry-After, be logged with its true length, and be counted (429s,
attempts, time waited) for the batch's table and summary. Every attempt takes its requests' slots of
the shared requests-per-minute limit first.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import rate_limit

from tasks import runtime
from tasks.rate_limit import rpm_burst
from ttsf_core.engine import jobs
from ttsf_core.config import RunConfig
from ttsf_core.resolve import resolve
from ttsf_core.storage.store import Store


@task(name="grade", task_run_name="grade-p{job.prompt_index}-r{job.search_round}-c{job.chunk}",
      cache_policy=NO_CACHE)
def grade_task(config: RunConfig, job: jobs.GradeJob, rpm_limit_name: str | None = None) -> jobs.GradeResult:
    def pace(requests: int) -> None:
        # One slot a request, taken in as few calls to the server as the burst allows (a chunk may
        # exceed it): each call is a round trip, and a fleet of workers pays them on every chunk.
        burst = rpm_burst(config.verifier_rpm)
        while requests > 0:
            rate_limit(rpm_limit_name, occupy=min(requests, burst), strict=True)
            requests -= min(requests, burst)

    run = resolve(config)
    graded_by = run.path_run if job.by_path_verifier else run  # intermediate images: --path_verifier's
    return jobs.grade(Store(graded_by), runtime.verifier_for(graded_by.config.verifier_args), job,
                      jobs.RetryPolicy.of(config), logger=get_run_logger(), pace=pace if rpm_limit_name else None)
