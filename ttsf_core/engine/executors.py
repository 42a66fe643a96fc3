"""The thread-pool executor: the engine's jobs on local threads, no orchestrator.

Generation runs on two threads that share one pipeline (its lock lets one call run at a time), so a
job's PNG writes overlap the next job's pipeline calls; grading runs on a small pool (the verifier
bounds its own requests); records are written on one thread. Grade jobs retry verifier failures by
ttsf_core.engine.retry's policy, inside the job, as under Prefect.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from ttsf_core.engine import jobs
from ttsf_core.resolved import ResolvedRun, require_resolved
from ttsf_core.engine.search_engine import GENERATIONS_IN_FLIGHT
from ttsf_core.storage.records import RunLayout
from ttsf_core.search import Strategy, build_strategy
from ttsf_core.storage.store import Store
from ttsf_core.verifiers.base import Verifier

if TYPE_CHECKING:
    from ttsf_core.engine.generate import CandidateGenerator

GRADE_WORKERS = 4


class ThreadExecutor:
    """Runs jobs on local threads. `load_generator` is called once, on the first generation job."""

    def __init__(self, run: ResolvedRun, verifier: Verifier,
                 load_generator: Callable[[], "CandidateGenerator"], strategy: Strategy | None = None,
                 sleep: Callable[[float], None] = time.sleep, path_verifier: Verifier | None = None):
        run = require_resolved(run, "ThreadExecutor(run)")
        self.run, self.config, self.verifier = run, run.config, verifier
        self.store, self.layout = Store(run), RunLayout(run)
        self.path_verifier = path_verifier
        self.path_store = Store(run.path_run) if run.path_run is not None else None
        self.strategy = strategy or build_strategy(run)
        self._load_generator, self._generator = load_generator, None
        self._load_lock = threading.Lock()
        self._sleep = sleep
        self._generation = ThreadPoolExecutor(GENERATIONS_IN_FLIGHT, thread_name_prefix="ttsf-generate")
        self._grading = ThreadPoolExecutor(GRADE_WORKERS, thread_name_prefix="ttsf-grade")
        self._selecting = ThreadPoolExecutor(1, thread_name_prefix="ttsf-select")

    def generate(self, job: jobs.GenerateJob) -> Future:
        return self._generation.submit(lambda: jobs.generate(self.store, self.generator(), job))

    def grade(self, job: jobs.GradeJob) -> Future:
        if job.by_path_verifier:
            if self.path_verifier is None:
                raise ValueError("a grade job for the path verifier, but none was given to the executor")
            return self._grading.submit(jobs.grade, self.path_store, self.path_verifier, job,
                                        jobs.RetryPolicy.of(self.config), self._sleep)
        return self._grading.submit(jobs.grade, self.store, self.verifier, job, jobs.RetryPolicy.of(self.config),
                                    self._sleep)

    def select(self, job: jobs.SelectJob) -> Future:
        return self._selecting.submit(jobs.select, self.run, self.layout, self.strategy, job)

    def generator(self) -> "CandidateGenerator":
        with self._load_lock:
            if self._generator is None:
                self._generator = self._load_generator()
            return self._generator

    def close(self) -> None:
        for pool in (self._generation, self._grading, self._selecting):
            pool.shutdown(wait=True)

    def __enter__(self) -> "ThreadExecutor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
