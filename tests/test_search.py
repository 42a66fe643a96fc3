import json

import pytest

from conftest import small_config
from ttsf_core import runner
from ttsf_core.generate import CandidateGenerator
from ttsf_core.records import iter_round_records
from ttsf_core.search import select_best
from ttsf_core.verifiers.base import grades_from_scores, METRIC_NAMES

TT_SCALE_FLUX_KEYS = {"prompt", "search_round", "num_noises", "best_noise_seed", "best_score",
                      "choice_of_metric", "best_img_path"}


def _grades(overall, accuracy=5.0):
    scores = {m: 5.0 for m in METRIC_NAMES} | {"overall_score": overall, "accuracy_to_prompt": accuracy}
    return grades_from_scores(scores, "test")


def test_select_best_is_the_argmax_and_ties_go_to_the_first():
    grades = [_grades(3), _grades(8), _grades(8), _grades(1)]
    assert select_best(grades, "overall_score") == 1
    assert select_best(grades, "accuracy_to_prompt") == 0  # all tie at 5: first drawn wins
    assert select_best([_grades(1, 9), _grades(9, 1)], "accuracy_to_prompt") == 0


def test_select_best_refuses_nothing_and_unknown_metrics():
    with pytest.raises(ValueError, match="at least one"):
        select_best([], "overall_score")
    with pytest.raises(ValueError, match="metric: received 'beauty'"):
        select_best([_grades(1)], "beauty")


def _run(tmp_path, pipe, **overrides):
    config = small_config(tmp_path, **overrides)
    prepared = runner.prepare_run(config)
    generator = CandidateGenerator(pipe, config)
    return prepared, runner.run_search(prepared, generator), generator


def test_rounds_draw_doubling_pools_and_record_the_argmax(tmp_path, tiny_pipe):
    prepared, records, _ = _run(tmp_path, tiny_pipe)
    assert [r.num_noises for r in records] == [2, 4, 8]
    pngs = sorted(prepared.layout.run_dir.rglob("*.png"))
    assert len(pngs) == 14
    for path, record in iter_round_records(prepared.layout.run_dir):
        data = json.loads(path.read_text())
        assert TT_SCALE_FLUX_KEYS <= set(data)
        scores = [c["grades"]["overall_score"]["score"] for c in data["candidates"]]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        assert data["best_noise_seed"] == data["candidates"][best]["seed"]
        assert data["best_score"] == scores[best]
        assert len({c["seed"] for c in data["candidates"]}) == data["num_noises"]
        for candidate in data["candidates"]:
            assert set(candidate["grades"]) == set(METRIC_NAMES)


def test_same_config_reproduces_identical_files_and_a_new_seed_differs(tmp_path, tiny_pipe):
    first, _, _ = _run(tmp_path / "a", tiny_pipe)
    second, _, _ = _run(tmp_path / "b", tiny_pipe)
    other_seed, _, _ = _run(tmp_path / "c", tiny_pipe, seed=1)

    def contents(prepared):
        root = prepared.layout.run_dir
        files = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.suffix in (".png", ".json")}
        return {path: data for path, data in files.items() if path.name != "config.json"}

    a, b = contents(first), contents(second)
    # JSON records hold image paths under each run's own output dir: compare them with it removed.
    strip = lambda blob, prepared: blob.replace(str(prepared.config.output_dir).encode(), b"OUT")  # noqa: E731
    assert a.keys() == b.keys()
    assert all(strip(a[k], first) == strip(b[k], second) for k in a)
    c = contents(other_seed)
    assert not (set(p.name for p in a) & set(p.name for p in c if p.suffix == ".png"))


def test_output_folder_is_deterministic_not_a_timestamp(tmp_path):
    one = runner.prepare_run(small_config(tmp_path)).layout.run_dir
    two = runner.prepare_run(small_config(tmp_path)).layout.run_dir
    metric = runner.prepare_run(small_config(tmp_path, verifier_args={"choice_of_metric": "accuracy_to_prompt"}))
    assert one == two and metric.layout.run_dir != one


def test_a_finished_run_redoes_nothing_and_a_lost_record_is_regraded_from_its_images(tmp_path, tiny_pipe):
    prepared, records, _ = _run(tmp_path, tiny_pipe)
    _, again, generator = _run(tmp_path, tiny_pipe)
    assert generator.counts.images == 0 and again == records
    prepared.layout.record_path(records[-1].prompt, 3).unlink()
    _, resumed, generator = _run(tmp_path, tiny_pipe)
    assert generator.counts.images == 0  # round 3's 8 images were on disk: graded, not regenerated
    assert resumed == records


def test_file_names_are_safe_whatever_the_prompt_says(tmp_path, tiny_pipe):
    nasty = "../../etc/passwd <b>\x00 \\ 'quote' \u00e9\u4e2d " + "x" * 300
    prepared, records, _ = _run(tmp_path, tiny_pipe, prompts={"prompt": nasty}, search_args={"search_rounds": 1})
    for path in prepared.layout.run_dir.rglob("*"):
        assert path.resolve().is_relative_to(prepared.layout.run_dir.resolve())
        assert len(path.name) < 120 and all(ch.isalnum() or ch in "._-" for ch in path.name)
    assert records[0].prompt == nasty


def test_independent_rounds_are_generated_largest_first():
    from ttsf_core.search import round_order

    assert round_order("random", 4) == [4, 3, 2, 1]
