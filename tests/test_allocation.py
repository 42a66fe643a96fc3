"""Allocation across a dataset: an NFE budget taken exactly, adaptive rounds decided the same way every
time and written down, a killed adaptive run resumed with nothing finished redone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import small_config
from ttsf_core.resolve import resolve
from ttsf_core.usecases import runner
from ttsf_core.allocation import ALLOCATION_FILENAME, TOP_STOP, expected_improvement
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.storage.records import iter_round_records
from ttsf_core.storage.store import Store
from ttsf_core.verifiers import imagestats
from ttsf_core.verifiers.base import RetryableVerifierError, grades_from_scores

PROMPTS = ["a red fox", "a blue car", "an old map", "a castle at night", "a bowl of soup", "two cats"]


def _config(tmp_path: Path, **budget):
    data = tmp_path / "prompts.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(PROMPTS) + "\n")
    return small_config(tmp_path, search_args={"search_rounds": 4},
                        pipeline_call_args={"height": 64, "width": 64, "num_inference_steps": 2},
                        prompts={"prompt": None, "dataset": str(data), "num_prompts": "all"}, budget=budget)


def _run(config, pipe, verifier=None):
    prepared = runner.prepare_run(config)
    if verifier is not None:
        prepared.verifier = verifier
    generator = CandidateGenerator(pipe, resolve(config))
    _, outcome = runner.run(prepared, generator)
    return prepared, outcome, generator


def _files(run_dir: Path) -> dict[str, bytes]:
    found = {str(path.relative_to(run_dir)): path.read_bytes() for path, _ in iter_round_records(run_dir)}
    return found | {ALLOCATION_FILENAME: (run_dir / ALLOCATION_FILENAME).read_bytes()}


def test_expected_improvement_is_the_normal_best_of_m_gain():
    scores = [-1.0, 1.0]  # mean 0, sample variance 2: sd sqrt(2), no pooled prior
    sd = math.sqrt(2.0)
    assert expected_improvement(scores, 0.0, 1, None) == pytest.approx(sd / math.sqrt(2 * math.pi), rel=1e-3)
    gains = [expected_improvement(scores, 0.0, m, None) for m in (1, 2, 4, 8)]
    assert gains == sorted(gains) and gains[-1] > 2 * gains[0]  # more draws, more expected gain
    assert expected_improvement(scores, 2.0, 4, None) < gains[2]  # a higher best leaves less to gain
    # Little history borrows the dataset's spread: a wide pool lifts a prompt whose two scores agree.
    assert expected_improvement([5.0, 5.0], 5.0, 4, 1.0) > expected_improvement([5.0, 5.0], 5.0, 4, 0.01)
    # A grader's scale with a top: a prompt already there has nothing left to gain, one near it little.
    assert expected_improvement([9.0, 10.0], 10.0, 8, None, ceiling=10.0) == 0.0
    assert 0 < expected_improvement([9.0, 9.5], 9.5, 8, None, ceiling=10.0) < expected_improvement([9.0, 9.5], 9.5, 8,
                                                                                                  None)


def test_uniform_rounds_stop_where_the_nfe_budget_would_go_over(tmp_path, tiny_pipe):
    prepared, outcome, _ = _run(_config(tmp_path, max_nfe=100), tiny_pipe)
    outcome.raise_first()
    nfe = {(r.prompt_index, r.search_round): r.nfe for r in outcome.records}
    # Rounds in order: 6 x 4, 6 x 8 (72), then round 3 (16 NFEs) fits once (88); nothing else does.
    assert sum(nfe.values()) == 88 and len([k for k in nfe if k[1] == 3]) == 1
    assert outcome.counts.prompts_over_budget == 6 and outcome.counts.rounds_over_budget == 6 * 4 - len(nfe)
    again = _run(_config(tmp_path, max_nfe=100), tiny_pipe)[1]
    assert (again.counts.images_generated, again.counts.rounds_recorded) == (0, 0)  # the budget counts records


def test_adaptive_allocation_is_exact_deterministic_and_written_down(tmp_path, tiny_pipe):
    budget = {"max_nfe": 150, "allocation": "adaptive", "plateau_rounds": 1, "plateau_delta": 0.005}
    first, outcome, _ = _run(_config(tmp_path / "a", **budget), tiny_pipe)
    outcome.raise_first()
    second, again, _ = _run(_config(tmp_path / "b", **budget), tiny_pipe)
    files = _files(first.layout.run_dir)
    assert files == _files(second.layout.run_dir)  # the same records, the same decisions
    decisions = json.loads(files[ALLOCATION_FILENAME])
    spent = sum(r.nfe for r in outcome.records)
    assert spent == sum(d["nfe"] for d in decisions["rounds"].values()) <= 150  # every NFE accounted for
    assert {key for key in decisions["rounds"]} == {f"p{r.prompt_index}-r{r.search_round}" for r in outcome.records}
    assert all(d["reason"] == "first round" for k, d in decisions["rounds"].items() if k.endswith("-r1"))
    later = [d for k, d in decisions["rounds"].items() if not k.endswith("-r1")]
    assert later and all(d["reason"] == "expected gain" and d["gain_per_nfe"] is not None for d in later)
    rounds = {r.prompt_index: r.search_round for r in outcome.records}
    assert len(set(rounds.values())) > 1  # prompts got different numbers of rounds
    assert set(decisions["stops"]) == {str(index) for index in range(len(PROMPTS))}  # each says why it ended


class TopForSome:
    """imagestats on its 0-10 scale, except that the prompts in `easy` score the top, 10, every time."""

    name, batch_size, score_max = "imagestats", 16, 10.0

    def __init__(self, config, easy):
        self.inner, self.easy = imagestats.ImageStatsVerifier(config.verifier_args), set(easy)

    def score(self, prompt, images):
        if prompt not in self.easy:
            return self.inner.score(prompt, images)
        return [grades_from_scores({"overall_score": 10.0}, "at the top") for _ in images]


def test_a_prompt_at_the_top_of_the_scale_gets_no_further_round(tmp_path, tiny_pipe):
    easy = PROMPTS[::2]
    config = _config(tmp_path, max_nfe=150, allocation="adaptive")
    prepared, outcome, _ = _run(config, tiny_pipe, TopForSome(config, easy))
    outcome.raise_first()
    rounds = {PROMPTS[r.prompt_index]: r.search_round for r in outcome.records}
    assert all(rounds[prompt] == 1 for prompt in easy)  # their budget went to the others
    assert all(rounds[prompt] > 1 for prompt in PROMPTS if prompt not in easy)
    stops = json.loads((prepared.layout.run_dir / ALLOCATION_FILENAME).read_text())["stops"]
    assert all(stops[str(PROMPTS.index(prompt))].startswith(TOP_STOP) for prompt in easy)


class FailsOnce:
    """imagestats, but the first call for round 3 of any prompt fails for good (a killed run's stand-in)."""

    name, batch_size = "imagestats", 16

    def __init__(self, config):
        self.inner = imagestats.ImageStatsVerifier(config.verifier_args)
        self.failed = False

    def score(self, prompt, images):
        if len(images) == 8 and not self.failed:  # a round 3 (8 images)
            self.failed = True
            raise RetryableVerifierError("503: the service went away")
        return self.inner.score(prompt, images)


def test_an_adaptive_run_stopped_mid_way_resumes_with_nothing_finished_redone(tmp_path, tiny_pipe):
    budget = {"max_nfe": 150, "allocation": "adaptive"}
    clean_config = _config(tmp_path / "clean", **budget)
    clean, outcome, _ = _run(clean_config, tiny_pipe)
    outcome.raise_first()
    stored = len(list(Store(resolve(clean_config)).images_dir.rglob("*.png")))
    config = _config(tmp_path / "resumed", **budget).model_copy(update={"verifier_retries": 0})
    broken, failed, _ = _run(config, tiny_pipe, FailsOnce(config))
    assert failed.failures
    kept = len(list(Store(resolve(config)).images_dir.rglob("*.png")))
    resumed, done, generator = _run(config, tiny_pipe)
    done.raise_first()
    assert done.counts.images_generated == generator.counts.images == stored - kept
    assert _files(resumed.layout.run_dir) == _files(clean.layout.run_dir)
