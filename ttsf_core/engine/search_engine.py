"""The search loop, written once, for every strategy and every executor.

For one batch of prompts:
  1. skip recorded rounds (their records are read back, never redone);
  2. plan: every round of an independent strategy up front (largest first), else each prompt's next
     round once the one before it is recorded;
  3. generate: whenever the generator frees up it takes the next ready stage of any prompt in the
     batch, so a strategy waiting on grades never idles the GPU (images already stored are not redone);
  4. grade: each stage's images without a stored grade, in chunks of the verifier's batch size;
  5. select and write: when a round's last stage is graded, its record.
The executor decides where each job runs (threads, Prefect tasks); it returns futures with
`add_done_callback` and `result`, and the loop reacts to them on this one thread.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ttsf_core.budget import Allowance
from ttsf_core.candidates import Candidate
from ttsf_core.resolved import ResolvedRun, require_resolved
from ttsf_core.engine.jobs import GenerateJob, GradeJob, GradeResult, SelectJob
from ttsf_core.progress import TALLY
from ttsf_core.storage.records import RoundRecord, RunLayout, read_round_record
from ttsf_core.search import GradedCandidate, Strategy, build_strategy
from ttsf_core.storage.store import Store, StoredImage, Verdict
from ttsf_core.verifiers.base import VerifierConfigError

# Two generation jobs in flight: the next is queued on the generator while the current one runs, so an
# executor's own start-up cost (a Prefect task run's bookkeeping) overlaps the GPU's work.
GENERATIONS_IN_FLIGHT = 2


class Future(Protocol):
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...
    def result(self, timeout: float | None = None) -> Any: ...


class Executor(Protocol):
    def generate(self, job: GenerateJob) -> Future: ...
    def grade(self, job: GradeJob) -> Future: ...
    def select(self, job: SelectJob) -> Future: ...


class Observer:
    """Told as work completes (progress bars, UI artifacts). The defaults do nothing."""

    def images_generated(self, count: int) -> None: ...
    def images_graded(self, count: int) -> None: ...
    def round_recorded(self, record: RoundRecord, counts: "BatchCounts") -> None: ...


@dataclass
class BatchCounts:
    images_generated: int = 0
    images_found: int = 0  # already in the store: not generated again
    images_graded: int = 0  # sent to the verifier
    grades_found: int = 0  # already in the store: not asked again
    images_ungradeable: int = 0  # the verifier refused them for good (excluded from selection)
    rounds_recorded: int = 0
    nfe_recorded: int = 0  # denoiser evaluations of the rounds recorded (what budget.max_nfe counts)
    rounds_skipped: int = 0  # recorded before this run
    rate_limited: int = 0  # verifier requests refused with a 429
    retries: int = 0  # grading attempts beyond each chunk's first
    retry_wait_s: float = 0.0  # time grading waited before asking again
    # What this run was billed for by API graders (answers that did not fit included).
    verifier_requests: int = 0
    prompt_tokens: int = 0
    image_tokens: int = 0
    thought_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # at the price table's prices
    unpriced_requests: int = 0  # billed answers of a model without a price (not in cost_usd)
    rounds_over_budget: int = 0  # rounds not started because the budget would not cover them
    prompts_over_budget: int = 0  # prompts stopped before one of their rounds by the budget

    def add(self, other: "BatchCounts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd = round(self.cost_usd, 9)

    def bill(self, usage, cost_usd: float | None) -> None:
        """Count a grade job's billed answers (ttsf_core.verifiers.base.Usage) and their price."""
        for entry in usage:
            self.verifier_requests += entry.requests
            self.prompt_tokens += entry.prompt_tokens
            self.image_tokens += entry.image_tokens
            self.thought_tokens += entry.thought_tokens
            self.output_tokens += entry.output_tokens
        if cost_usd is None:
            self.unpriced_requests += sum(entry.requests for entry in usage)
        else:
            self.cost_usd = round(self.cost_usd + cost_usd, 9)


@dataclass
class RoundFailure:
    prompt_index: int
    search_round: int
    error: BaseException


@dataclass
class BatchOutcome:
    records: list[RoundRecord]
    failures: list[RoundFailure]
    counts: BatchCounts
    unfinished_prompts: list[int]
    # prompt index -> the first round it did not run because of the budget (its later ones neither)
    over_budget: dict[int, int] = field(default_factory=dict)

    def raise_first(self) -> None:
        if self.failures:
            raise self.failures[0].error


@dataclass(eq=False)
class _Round:
    prompt_index: int
    prompt: str
    search_round: int
    graded: list[GradedCandidate] = field(default_factory=list)
    stages: list[list[Candidate]] = field(default_factory=list)  # graded ones, in order
    stage: list[Candidate] = field(default_factory=list)
    images: list[StoredImage | None] = field(default_factory=list)
    verdicts: list[Verdict | None] = field(default_factory=list)
    outstanding: int = 0
    failed: bool = False


class SearchEngine:
    """Runs batches of prompts through one strategy with one executor."""

    def __init__(self, run: ResolvedRun, executor: Executor, *, grade_chunk: int,
                 observer: Observer | None = None, strategy: Strategy | None = None,
                 path_grade_chunk: int | None = None):
        run = require_resolved(run, "SearchEngine(run)")
        for name, chunk in (("grade_chunk", grade_chunk), ("path_grade_chunk", path_grade_chunk or 1)):
            if chunk < 1:
                raise ValueError(f"{name}: received {chunk}, allowed: a positive integer")
        self.run = run
        self.config = run.config
        self.executor = executor
        self.grade_chunk = grade_chunk
        self.path_grade_chunk = path_grade_chunk or grade_chunk  # the path verifier's batch size
        self.observer = observer or Observer()
        self.strategy = strategy or build_strategy(run)
        self.layout = RunLayout(run)
        self.store = Store(run)
        # Intermediate images of a search on the denoising path, graded by --path_verifier.
        self.path_store = Store(run.path_run) if run.path_run is not None else None

    def grading_of(self, stage: list[Candidate]) -> tuple[Store, int, bool]:
        """Where a stage's grades are stored, the chunk size they are asked in, and whether the path
        verifier grades them."""
        if self.path_store is not None and stage and stage[0].stage == "path":
            return self.path_store, self.path_grade_chunk, True
        return self.store, self.grade_chunk, False

    def run_batch(self, prompts: list[tuple[int, str]], allowance: Allowance | None = None) -> BatchOutcome:
        """Search the prompts. `allowance` (ttsf_core.budget): the rounds the budget gives each prompt,
        and the most this batch may spend (a hard stop should estimates prove low)."""
        return _BatchRun(self, prompts, allowance).run()


class _BatchRun:
    def __init__(self, engine: SearchEngine, prompts: list[tuple[int, str]], allowance: Allowance | None):
        self.engine, self.strategy, self.store = engine, engine.strategy, engine.store
        self.prompts = dict(prompts)
        self.allowance = allowance
        self.over_budget: dict[int, int] = {}
        self.events: queue.Queue = queue.Queue()
        self.generation_queue: deque[tuple[_Round, GenerateJob]] = deque()
        self.generating = 0
        self.in_flight = 0
        self.aborted = False
        self.history: dict[int, list[RoundRecord]] = {index: [] for index in self.prompts}
        self.todo: dict[int, deque[int]] = {}
        self.records: list[RoundRecord] = []
        self.failures: list[RoundFailure] = []
        self.counts = BatchCounts()

    def run(self) -> BatchOutcome:
        # 1. Skip recorded rounds.
        rounds = list(range(1, self.engine.config.search_args.search_rounds + 1))
        for index, prompt in self.prompts.items():
            for search_round in rounds:
                record = read_round_record(self.engine.layout.record_path(prompt, search_round))
                if record is None and not self._allowed(index, search_round):
                    self.over_budget.setdefault(index, search_round)
                    self.counts.rounds_over_budget += 1
                elif record is None:
                    self.todo.setdefault(index, deque()).append(search_round)
                else:
                    self.history[index].append(record)
                    self.records.append(record)
                    self.counts.rounds_skipped += 1
        # 2. Plan. Independent rounds all now, largest first across the batch, so that only the
        #    smallest pools are graded after the last image; dependent ones each prompt's next round.
        if self.strategy.independent_rounds:
            pending = [(index, r) for index, todo in self.todo.items() for r in todo]
            pool = self.strategy.pool_size
            for index, search_round in sorted(pending, key=lambda item: (-pool(item[1]), -item[1])):
                self._start_round(index, search_round)
            self.todo.clear()
        else:
            for index, todo in self.todo.items():
                self._start_round(index, todo.popleft())
        # 3-5. Generate, grade, select and write, as results arrive.
        self._pump()
        while self.in_flight:
            handler, work, future = self.events.get()
            self.in_flight -= 1
            handler(work, future)
            self._pump()
        unfinished = sorted(index for index in self.prompts
                            if len({r.search_round for r in self.history[index]}) < len(rounds))
        records = sorted(self.records, key=lambda r: (r.prompt_index, r.search_round))
        self.counts.prompts_over_budget = len(self.over_budget)
        return BatchOutcome(records, self.failures, self.counts, unfinished, dict(sorted(self.over_budget.items())))

    def _found(self, images: int = 0, grades: int = 0) -> None:
        """Work found already done: counted for the batch, and for whoever shows this process's progress."""
        self.counts.images_found += images
        self.counts.grades_found += grades
        TALLY.add(images_found=images, grades_found=grades)

    def _allowed(self, prompt_index: int, search_round: int) -> bool:
        return self.allowance is None or self.allowance.allows(prompt_index, search_round)

    def _budget_spent(self) -> bool:
        return self.allowance is not None and self.allowance.spent_out(self.counts)

    # -- plan ----------------------------------------------------------------------------------

    def _start_round(self, prompt_index: int, search_round: int) -> None:
        self._advance(_Round(prompt_index, self.prompts[prompt_index], search_round))

    def _advance(self, work: _Round) -> None:
        """The round's next stage, or its record when the strategy has no further stage."""
        history = sorted(self.history[work.prompt_index], key=lambda r: r.search_round)
        try:
            stage = self.strategy.next_stage(work.prompt, work.search_round, history, work.graded)
        except Exception as error:  # noqa: BLE001 - a planning bug fails its round, not the batch
            self._fail(work, error)
            return
        if stage is None:
            job = SelectJob(prompt_index=work.prompt_index, prompt=work.prompt, search_round=work.search_round,
                            graded=work.graded, nfe=self._nfe(work, history))
            self._submit(self.engine.executor.select(job), self._on_selected, work)
            return
        work.stage, work.verdicts = stage, [None] * len(stage)
        work.images = [self.store.find_image(work.prompt, candidate) for candidate in stage]
        self._found(images=sum(image is not None for image in work.images))
        if all(image is not None for image in work.images):
            self._request_grades(work)
            return
        # The generation plan: the stage less what earlier rounds of this prompt already made (a
        # carried zero-order pivot). It is the same whatever the store holds, so every pipeline call,
        # and so every image, is the same in a resumed run as in a clean one.
        earlier = self._earlier_keys(work, history)
        planned = [c for c, image in zip(stage, work.images) if c.key() not in earlier or image is None]
        on_path = bool(stage) and stage[0].path is not None
        sizes = self.strategy.batch_size_for
        job = GenerateJob(prompt_index=work.prompt_index, prompt=work.prompt, search_round=work.search_round,
                          candidates=planned, batch_size=sizes(stage),
                          earlier=work.stages if on_path else [],
                          earlier_batch_sizes=[sizes(done) for done in work.stages] if on_path else [])
        # A later stage finishes a round already begun: it goes ahead of rounds not yet started.
        (self.generation_queue.appendleft if work.graded else self.generation_queue.append)((work, job))

    def _earlier_keys(self, work: _Round, history: list[RoundRecord]) -> set[str]:
        default_steps = self.engine.run.steps
        return {c.candidate(default_steps).key() for r in history if r.search_round < work.search_round
                for c in r.candidates}

    def _nfe(self, work: _Round, history: list[RoundRecord]) -> int:
        earlier = self._earlier_keys(work, history)
        fresh = dict(run for item in work.graded for run in item.candidate.runs())
        return sum(nfe for key, nfe in fresh.items() if key not in earlier)

    # -- generate ------------------------------------------------------------------------------

    def _pump(self) -> None:
        if self.generation_queue and self._budget_spent():
            while self.generation_queue:  # no image is made that could not be graded
                self._stop_for_budget(self.generation_queue.popleft()[0])
        while self.generation_queue and self.generating < GENERATIONS_IN_FLIGHT and not self.aborted:
            work, job = self.generation_queue.popleft()
            self.generating += 1
            self._submit(self.engine.executor.generate(job), self._on_generated, work)

    def _on_generated(self, work: _Round, future: Future) -> None:
        self.generating -= 1
        try:
            made = list(future.result())
        except Exception as error:  # noqa: BLE001 - recorded; the batch goes on
            self._fail(work, error)
            return
        generated = sum(image.generated for image in made)
        self.counts.images_generated += generated
        made_by_key = {image.key: image for image in made}
        was_missing = sum(image is None for image in work.images)
        self._found(images=was_missing - generated)  # written meanwhile by another worker
        work.images = [image or made_by_key[c.key()] for c, image in zip(work.stage, work.images)]
        self.engine.observer.images_generated(generated)
        self._request_grades(work)

    # -- grade ---------------------------------------------------------------------------------

    def _request_grades(self, work: _Round) -> None:
        if self.aborted:
            return
        store, size, by_path_verifier = self.engine.grading_of(work.stage)
        work.verdicts = [store.find_grade(work.prompt, image.sha256) for image in work.images]
        missing = [position for position, verdict in enumerate(work.verdicts) if verdict is None]
        if missing and self._budget_spent():
            self._stop_for_budget(work)
            return
        self._found(grades=len(work.verdicts) - len(missing))
        chunks = [missing[start : start + size] for start in range(0, len(missing), size)]
        work.outstanding = len(chunks)
        for number, positions in enumerate(chunks):
            job = GradeJob(prompt_index=work.prompt_index, prompt=work.prompt, search_round=work.search_round,
                           chunk=number, images=[work.images[p] for p in positions],
                           by_path_verifier=by_path_verifier)
            self._submit(self.engine.executor.grade(job), self._on_graded, (work, positions))
        if not chunks:
            self._stage_graded(work)

    def _on_graded(self, item: tuple[_Round, list[int]], future: Future) -> None:
        work, positions = item
        work.outstanding -= 1
        try:
            result: GradeResult = future.result()
        except Exception as error:  # noqa: BLE001 - recorded; the batch goes on
            stats = dict(getattr(error, "grading_stats", {}))
            usage = stats.pop("usage", ())
            self.counts.bill(usage, self.store.prices.cost(usage))
            self._count_attempts(**stats)
            self._fail(work, error)
            return
        for position, verdict in zip(positions, result.verdicts, strict=True):
            work.verdicts[position] = verdict
        self.counts.images_graded += result.asked
        self._found(grades=len(positions) - result.asked)
        self.counts.bill(result.usage, result.cost_usd)
        self._count_attempts(result.attempts, result.rate_limited, result.waited_s)
        self.engine.observer.images_graded(len(positions))
        if work.outstanding == 0 and not work.failed:
            self._stage_graded(work)

    def _count_attempts(self, attempts: int = 1, rate_limited: int = 0, waited_s: float = 0.0) -> None:
        self.counts.retries += attempts - 1
        self.counts.rate_limited += rate_limited
        self.counts.retry_wait_s = round(self.counts.retry_wait_s + waited_s, 3)

    def _stage_graded(self, work: _Round) -> None:
        work.graded += [GradedCandidate(candidate=c, image=i, grades=v.grades, ungradeable=v.ungradeable,
                                        usage=v.usage, cost_usd=v.cost_usd)
                        for c, i, v in zip(work.stage, work.images, work.verdicts, strict=True)]
        self.counts.images_ungradeable += sum(v.ungradeable is not None for v in work.verdicts)
        work.stages.append(list(work.stage))
        self._advance(work)

    # -- select and write ----------------------------------------------------------------------

    def _on_selected(self, work: _Round, future: Future) -> None:
        try:
            record: RoundRecord = future.result()
        except Exception as error:  # noqa: BLE001 - recorded; the batch goes on
            self._fail(work, error)
            return
        self.history[work.prompt_index].append(record)
        self.records.append(record)
        self.counts.rounds_recorded += 1
        self.counts.nfe_recorded += record.nfe or 0
        self.engine.observer.round_recorded(record, self.counts)
        if not self.strategy.independent_rounds and self.todo.get(work.prompt_index) and not self.aborted:
            self._start_round(work.prompt_index, self.todo[work.prompt_index].popleft())

    # -- bookkeeping ---------------------------------------------------------------------------

    def _submit(self, future: Future, handler: Callable, work: Any) -> None:
        self.in_flight += 1
        future.add_done_callback(lambda done: self.events.put((handler, work, done)))

    def _stop_for_budget(self, work: _Round) -> None:
        """The budget is spent (estimates proved low): this round and the prompt's later ones are not
        graded. Its images and any grades already made are stored, so a later run pays only the rest."""
        if work.failed:
            return
        work.failed = True
        rounds = self.engine.config.search_args.search_rounds
        self.over_budget[work.prompt_index] = min(self.over_budget.get(work.prompt_index, rounds + 1),
                                                  work.search_round)
        later = self.todo.pop(work.prompt_index, deque())
        self.counts.rounds_over_budget += 1 + len(later)

    def _fail(self, work: _Round, error: BaseException) -> None:
        if work.failed:
            return
        work.failed = True
        self.failures.append(RoundFailure(work.prompt_index, work.search_round, error))
        if isinstance(error, VerifierConfigError):
            # The verifier cannot work as configured (a rejected key): no more images, no more requests.
            self.aborted = True
            self.generation_queue.clear()
