"""The one search loop: both executors, growing runs, shared work, resumes, regeneration."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import small_config
from flows.search_dataset import search_dataset
from tasks import runtime
from ttsf_core.resolve import resolve
from ttsf_core.usecases import runner
from ttsf_core.engine.search_engine import SearchEngine
from ttsf_core.engine.executors import ThreadExecutor
from ttsf_core.storage.files import png_bytes
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.engine.jobs import load_images
from ttsf_core.storage.records import iter_round_records
from ttsf_core.usecases.regenerate import regenerate
from ttsf_core.usecases.report import build_report
from ttsf_core.search import build_strategy
from ttsf_core.storage.store import Store
from ttsf_core.verifiers import imagestats
from ttsf_core.verifiers.base import RetryableVerifierError, UngradeableError, VerifierConfigError, VerifierError

STRATEGIES = {
    "random": {"search_method": "random"},
    "zero-order": {"search_method": "zero-order", "num_neighbors": 3},
    "random+draft": {"search_method": "random", "draft_steps": 1, "draft_keep": 2},
    "zero-order+draft": {"search_method": "zero-order", "num_neighbors": 3, "draft_steps": 1, "draft_keep": 1},
    # On the denoising path: 6 steps, so that levels and resampling steps fall on distinct steps.
    "paths": {"search_method": "paths", "num_paths": 1, "path_branches": 2, "path_start": 0.34, "path_forward": 0.17,
              "path_backward": 0.34},
    "fk": {"search_method": "fk", "num_particles": 2, "fk_resample_every": 0.34},
}
SIX_STEPS = {"pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 6}}
PROMPTS = ["a red lighthouse on a cliff at dawn", "a bowl of ramen, studio photo", "an owl reading a map"]


def _config(tmp_path: Path, strategy: str = "random", rounds: int = 3, **overrides):
    data = tmp_path / "prompts.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(PROMPTS) + "\n")
    fields = {"search_args": STRATEGIES[strategy] | {"search_rounds": rounds}, "prompts_per_batch": 2,
              "prompts": {"prompt": None, "dataset": str(data), "num_prompts": "all"}, "task_workers": 4}
    if strategy in ("paths", "fk"):
        fields |= SIX_STEPS
    return small_config(tmp_path, **(fields | overrides))


def _direct(config, pipe, verifier=None, **engine_args):
    prepared = runner.prepare_run(config)
    generator = CandidateGenerator(pipe, prepared.run)
    with ThreadExecutor(prepared.run, verifier or prepared.verifier, lambda: generator, sleep=lambda s: None) as executor:
        outcome = SearchEngine(prepared.run, executor, grade_chunk=engine_args.pop("grade_chunk", 4), **engine_args) \
            .run_batch(prepared.indexed_prompts())
    return outcome, generator


def _records(config) -> dict[tuple[int, int], bytes]:
    run_dir = runner.prepare_run(config).layout.run_dir
    return {(r.prompt_index, r.search_round): path.read_bytes() for path, r in iter_round_records(run_dir)}


def _stored(config) -> tuple[int, int]:
    store = Store(resolve(config))
    return len(list(store.images_dir.rglob("*.png"))), len(list(store.grades_dir.rglob("*/*.json")))


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_thread_and_prefect_executors_write_identical_records(strategy, tmp_path, tiny_pipe, monkeypatch):
    direct_config = _config(tmp_path / "direct", strategy)
    outcome, _ = _direct(direct_config, tiny_pipe, grade_chunk=16)
    outcome.raise_first()
    flow_config = _config(tmp_path / "flow", strategy)
    shared = CandidateGenerator(tiny_pipe, resolve(flow_config))  # the session's pipeline, not a second load
    monkeypatch.setattr(runtime, "generator_for", lambda config: shared)
    result = search_dataset(flow_config)
    direct, flow = _records(direct_config), _records(flow_config)
    assert len(direct) == len(PROMPTS) * 3
    assert direct == flow  # byte for byte: same candidates, images, grades, selections and paths
    assert result["counts"]["images_generated"] == outcome.counts.images_generated


def test_a_longer_run_generates_only_its_new_round(tmp_path, tiny_pipe):
    first, _ = _direct(_config(tmp_path, rounds=3), tiny_pipe)
    longer, generator = _direct(_config(tmp_path, rounds=4), tiny_pipe)
    assert first.counts.images_generated == len(PROMPTS) * (2 + 4 + 8)
    assert longer.counts.rounds_skipped == len(PROMPTS) * 3 and longer.counts.rounds_recorded == len(PROMPTS)
    assert longer.counts.images_generated == generator.counts.images == longer.counts.images_graded == len(PROMPTS) * 16
    assert longer.records[:3] == first.records[:3]


def test_another_metric_reselects_from_stored_grades(tmp_path, tiny_pipe):
    _direct(_config(tmp_path), tiny_pipe)
    other = _config(tmp_path, verifier_args={"name": "imagestats", "choice_of_metric": "visual_quality_and_realism"})
    outcome, generator = _direct(other, tiny_pipe)
    assert generator.counts.images == outcome.counts.images_generated == outcome.counts.images_graded == 0
    assert outcome.counts.images_found == outcome.counts.grades_found == len(PROMPTS) * 14
    for record in outcome.records:
        assert record.best_score == max(c.grades.score("visual_quality_and_realism") for c in record.candidates)


def _pixel_sha(image) -> str:
    """What a verifier is sent for an image: its pixels as a plain PNG."""
    return hashlib.sha256(png_bytes(image)).hexdigest()


class PoisonedVerifier:
    """imagestats, but failing every image whose sha is in `poisoned`: with `error=VerifierError` an
    answer never valid, with RetryableVerifierError a server that keeps failing on it."""

    name = "imagestats"
    batch_size = 4

    def __init__(self, poisoned: set[str], error: type = RetryableVerifierError):
        self.inner = imagestats.ImageStatsVerifier(small_config(Path("/tmp")).verifier_args)
        self.poisoned, self.error = poisoned, error
        self.asked: list[str] = []

    def score(self, prompt, images):
        shas = [_pixel_sha(image) for image in images]
        self.asked += shas
        bad = [index for index, sha in enumerate(shas) if sha in self.poisoned]
        if bad:
            raise self.error(f"failed on image {bad[0]}", bad[0]) if issubclass(self.error, VerifierError) else \
                self.error(f"503 for image {bad[0]}")
        return self.inner.score(prompt, images)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_run_failed_mid_round_resumes_with_nothing_finished_redone(strategy, tmp_path, tiny_pipe):
    reference = _config(tmp_path / "reference", strategy)
    _direct(reference, tiny_pipe)
    total_images, total_grades = _stored(reference)
    # Poison one image of round 2 of the second prompt: that round (and, for a dependent strategy,
    # that prompt's later rounds) cannot finish; everything else can.
    poisoned_round = next(r for path, r in iter_round_records(runner.prepare_run(reference).layout.run_dir)
                          if r.prompt_index == 1 and r.search_round == 2)
    victim = poisoned_round.candidates[-1]
    (image,) = load_images([str(next(Store(resolve(reference)).images_dir.rglob(Path(victim.img_path).name)))])
    poison = {_pixel_sha(image)}

    config = _config(tmp_path / "resumed", strategy, verifier_retries=1)
    failed, _ = _direct(config, tiny_pipe, verifier=PoisonedVerifier(poison))
    assert [(f.prompt_index, f.search_round) for f in failed.failures] == [(1, 2)]
    assert isinstance(failed.failures[0].error, RetryableVerifierError) and failed.unfinished_prompts == [1]
    assert failed.counts.retries >= 1
    images_kept, grades_kept = _stored(config)
    resumed, generator = _direct(config, tiny_pipe)
    resumed.raise_first()
    # Only what the failure left undone is done now: no image or grade is paid for twice.
    assert resumed.counts.images_generated == generator.counts.images == total_images - images_kept
    assert resumed.counts.images_graded == total_grades - grades_kept
    assert resumed.counts.rounds_recorded == len(PROMPTS) * 3 - failed.counts.rounds_recorded
    assert _records(config) == _records(reference)


class SlowGrades:
    """imagestats after a delay, logging when each prompt's grading starts and ends."""

    name = "imagestats"
    batch_size = 16

    def __init__(self, delay_s: float):
        self.inner = imagestats.ImageStatsVerifier(small_config(Path("/tmp")).verifier_args)
        self.delay_s = delay_s
        self.events: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def score(self, prompt, images):
        with self.lock:
            self.events.append(("grade-start", prompt, time.monotonic()))
        time.sleep(self.delay_s)
        with self.lock:
            self.events.append(("grade-end", prompt, time.monotonic()))
        return self.inner.score(prompt, images)


def test_a_dependent_strategy_generates_other_prompts_while_one_is_graded(tmp_path, tiny_pipe, monkeypatch):
    from ttsf_core.engine import jobs
    verifier = SlowGrades(0.4)
    started: list[tuple[str, int, float]] = []
    real_generate = jobs.generate

    def logged(store, generator, job):
        started.append((job.prompt, job.search_round, time.monotonic()))
        return real_generate(store, generator, job)

    monkeypatch.setattr(jobs, "generate", logged)
    config = _config(tmp_path, "zero-order", rounds=2)
    outcome, _ = _direct(config, tiny_pipe, verifier=verifier)
    outcome.raise_first()
    first_grading_ends = min(t for kind, prompt, t in verifier.events if kind == "grade-end")
    # While the first prompt's round 1 was being graded, the other prompts' round 1 was generated.
    overlapping = {prompt for prompt, search_round, t in started if search_round == 1 and t < first_grading_ends}
    assert overlapping == set(PROMPTS)


def test_a_rejected_key_stops_the_batch_before_more_images(tmp_path, tiny_pipe):
    class Rejecting:
        name, batch_size = "imagestats", 16

        def score(self, prompt, images):
            raise VerifierConfigError("the API key was rejected")

    outcome, generator = _direct(_config(tmp_path, rounds=3), tiny_pipe, verifier=Rejecting())
    assert outcome.failures and isinstance(outcome.failures[0].error, VerifierConfigError)
    # Two generation jobs may be in flight when the answer comes; none is started after it.
    assert generator.counts.pipeline_calls <= 2 * 4
    assert generator.counts.images < len(PROMPTS) * 14


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_image_regenerates_byte_identical_from_its_record(strategy, tmp_path, tiny_pipe):
    config = _config(tmp_path, strategy, rounds=2, prompts={"prompt": PROMPTS[0], "num_prompts": None},
                     batch_size_for_img_gen=3)
    outcome, _ = _direct(config, tiny_pipe)
    outcome.raise_first()
    checked = 0
    for path, record in iter_round_records(runner.prepare_run(config).layout.run_dir):
        for index, candidate in enumerate(record.candidates):
            generator = CandidateGenerator(tiny_pipe, resolve(config))
            result = regenerate(path, index, tmp_path / "again" / f"{checked}.png", generator=generator)
            assert result.identical, (strategy, record.search_round, index)
            checked += 1
    assert checked == sum(len(r.candidates) for r in outcome.records)


def test_strategies_name_themselves_and_their_dependence(tmp_path):
    for name in STRATEGIES:
        strategy = build_strategy(resolve(_config(tmp_path, name)))
        assert strategy.name == name
        assert strategy.independent_rounds is (name.split("+")[0] in ("random", "paths", "fk"))


@pytest.mark.parametrize("error", [VerifierError, UngradeableError])
def test_an_image_never_graded_is_recorded_as_such_and_the_run_finishes(error, tmp_path, tiny_pipe):
    reference = _config(tmp_path / "reference", "random", rounds=2)
    _direct(reference, tiny_pipe)
    record = next(r for _, r in iter_round_records(runner.prepare_run(reference).layout.run_dir)
                  if r.prompt_index == 0 and r.search_round == 2)
    victim = record.best  # the image that would have won
    (image,) = load_images([str(next(Store(resolve(reference)).images_dir.rglob(Path(victim.img_path).name)))])
    verifier = PoisonedVerifier({_pixel_sha(image)}, error)
    config = _config(tmp_path / "blocked", "random", rounds=2, verifier_invalid_retries=2)
    outcome, _ = _direct(config, tiny_pipe, verifier=verifier)
    assert not outcome.failures and outcome.counts.images_ungradeable == 1
    blocked = next(r for r in outcome.records if r.prompt_index == 0 and r.search_round == 2)
    ungradeable = [c for c in blocked.candidates if c.ungradeable]
    assert len(ungradeable) == 1 == blocked.ungradeable and ungradeable[0].noise == victim.noise
    assert ungradeable[0].score is None and ungradeable[0].grades is None and error.__name__ in ungradeable[0].ungradeable
    assert blocked.best.noise != victim.noise  # excluded from selection: the next best wins
    # A safety block is final at once; an invalid answer is asked 1 + verifier_invalid_retries times.
    assert verifier.asked.count(_pixel_sha(image)) == (1 if error is UngradeableError else 3)
    files = build_report(runner.prepare_run(config).layout.run_dir)
    assert pd.read_csv(files.csv)["ungradeable"].sum() == 1
    again, generator = _direct(config, tiny_pipe, verifier=verifier)
    assert generator.counts.images == 0 and again.counts.images_graded == 0  # the verdict is stored too


def test_a_round_with_no_gradeable_image_is_recorded_without_a_best(tmp_path, tiny_pipe):
    class Refusing:
        name, batch_size = "imagestats", 16

        def score(self, prompt, images):
            raise UngradeableError("blocked: SAFETY", 0)

    config = _config(tmp_path, "zero-order", rounds=2, prompts={"prompt": PROMPTS[0], "num_prompts": None})
    outcome, _ = _direct(config, tiny_pipe, verifier=Refusing())
    assert not outcome.failures and [r.best_index for r in outcome.records] == [None, None]
    assert all(r.neighbors_improvement is False for r in outcome.records)
    frame = pd.read_csv(build_report(runner.prepare_run(config).layout.run_dir).csv)
    assert frame["best_score"].isna().all() and list(frame["ungradeable"]) == [4, 4]


def test_independent_rounds_are_generated_largest_first_across_the_batch(tmp_path, tiny_pipe, monkeypatch):
    """So that only the smallest pools are left to grade after the generator's last image."""
    from ttsf_core.engine import jobs
    started: list[tuple[int, int]] = []
    real_generate = jobs.generate

    def logged(store, generator, job):
        started.append((job.prompt_index, job.search_round))
        return real_generate(store, generator, job)

    monkeypatch.setattr(jobs, "generate", logged)
    _direct(_config(tmp_path, "random", rounds=3), tiny_pipe)
    assert started == [(p, r) for r in (3, 2, 1) for p in range(len(PROMPTS))]


def test_a_draft_round_that_keeps_every_noise_skips_its_drafts(tmp_path, tiny_pipe):
    outcome, _ = _direct(_config(tmp_path, "random+draft", rounds=2), tiny_pipe)  # pools 2 and 4, keep 2
    first, second = (r for r in outcome.records if r.prompt_index == 0)
    assert {c.stage for c in first.candidates} == {"final"} and first.nfe == 2 * 2
    assert {c.stage for c in second.candidates} == {"draft", "final"} and second.nfe == 4 * 1 + 2 * 2


def test_progress_moves_once_per_image_of_a_sixteen_image_round(tmp_path, tiny_pipe, monkeypatch):
    """What the terminal's bars read (ttsf_core.progress): one step per image made, one per image graded."""
    from ttsf_core import progress

    steps = []
    monkeypatch.setattr(progress.TALLY, "add", lambda **counts: steps.append(counts))
    config = small_config(tmp_path, search_args={"search_rounds": 1, "initial_pool_size": 16})
    _, outcome = runner.run(config, generator=CandidateGenerator(tiny_pipe, resolve(config)))
    outcome.raise_first()
    assert steps.count({"images_generated": 1}) == 16 and steps.count({"images_graded": 1}) == 16
