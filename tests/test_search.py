"""Strategies and the direct runner: what each plans, what a round records, what a re-run redoes."""

import json

import pytest

from conftest import small_config
from ttsf_core.usecases import runner
from ttsf_core.config import ConfigError, build_config
from ttsf_core.config_files import read_config_file
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.noise import candidate_seed
from ttsf_core.storage.records import iter_round_records, resolve_image
from ttsf_core.search import build_strategy
from ttsf_core.storage.store import Store
from ttsf_core.verifiers.base import METRIC_NAMES, grades_from_scores
from ttsf_core.resolve import resolve

TT_SCALE_FLUX_KEYS = {"prompt", "search_round", "num_noises", "best_noise_seed", "best_score",
                      "choice_of_metric", "best_img_path"}
STRATEGY_ARGS = {
    "random": {"search_method": "random"},
    "zero-order": {"search_method": "zero-order", "num_neighbors": 3},
    "random+draft": {"search_method": "random", "draft_steps": 1, "draft_keep": 2},
    "zero-order+draft": {"search_method": "zero-order", "num_neighbors": 3, "draft_steps": 1, "draft_keep": 1},
}


def _grades(overall, accuracy=5.0):
    scores = {m: 5.0 for m in METRIC_NAMES} | {"overall_score": overall, "accuracy_to_prompt": accuracy}
    return grades_from_scores(scores, "test")


def _selector(metric: str):
    from ttsf_core.search.selection import Selector

    return Selector(build_config({"verifier_args": {"name": "imagestats", "choice_of_metric": metric}}))


def test_the_selector_picks_the_argmax_and_ties_go_to_the_first():
    """The one rule that picks each round's best (ttsf_core.search.selection), as the engine uses it."""
    grades = [_grades(1), _grades(9), _grades(9)]
    assert _selector("overall_score").best(grades) == 1  # a tie between 1 and 2: the first drawn
    assert _selector("accuracy_to_prompt").best(grades) == 0  # all tie at 5: the first drawn
    assert _selector("accuracy_to_prompt").best([_grades(1, 2), _grades(9, 7)]) == 1
    assert _selector("overall_score").best([None, _grades(5, 2)]) == 1  # an ungradeable image is never picked
    assert _selector("overall_score").best([]) is None and _selector("overall_score").best([None]) is None


def test_the_selector_refuses_a_metric_the_grades_lack():
    with pytest.raises(ValueError, match="metric: received 'beauty'"):
        _selector("beauty").best([_grades(1)])


def _run(tmp_path, pipe, **overrides):
    config = small_config(tmp_path, **overrides)
    generator = CandidateGenerator(pipe, resolve(config))
    prepared, outcome = runner.run(config, generator=generator)
    outcome.raise_first()
    return prepared, outcome, generator


def test_rounds_draw_doubling_pools_and_record_the_argmax(tmp_path, tiny_pipe):
    prepared, outcome, _ = _run(tmp_path, tiny_pipe)
    assert [r.num_noises for r in outcome.records] == [2, 4, 8]
    assert outcome.counts.images_generated == outcome.counts.images_graded == 14
    for path, record in iter_round_records(prepared.layout.run_dir):
        data = json.loads(path.read_text())
        assert TT_SCALE_FLUX_KEYS <= set(data)
        scores = [c["grades"]["overall_score"]["score"] for c in data["candidates"]]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        assert data["best_noise_seed"] == data["candidates"][best]["seed"]
        assert data["best_score"] == scores[best]
        assert data["nfe"] == data["num_noises"] * 2  # two steps an image
        assert len({c["seed"] for c in data["candidates"]}) == data["num_noises"]
        for candidate in data["candidates"]:
            assert set(candidate["grades"]) == set(METRIC_NAMES)
            assert candidate["noise"] == {"seed": candidate["seed"], "walk": []}
            assert resolve_image(path, candidate["img_path"]).is_file()


def _contents(prepared):
    root = prepared.config.output_dir
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.suffix in (".png", ".json")}


def test_same_config_reproduces_identical_files_and_a_new_seed_differs(tmp_path, tiny_pipe):
    first, _, _ = _run(tmp_path / "a", tiny_pipe)
    second, _, _ = _run(tmp_path / "b", tiny_pipe)
    other_seed, _, _ = _run(tmp_path / "c", tiny_pipe, seed=1)
    a, b = _contents(first), _contents(second)
    config_json = first.layout.config_path.relative_to(first.config.output_dir)
    # Records name images relative to themselves: two output folders hold byte-identical records.
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != config_json)
    c = _contents(other_seed)
    assert not ({p.name for p in a if p.suffix == ".png"} & {p.name for p in c if p.suffix == ".png"})


def test_output_folder_is_named_by_what_decides_the_records(tmp_path):
    def folder(**overrides):
        return runner.prepare_run(small_config(tmp_path, **overrides)).layout.run_dir

    base = folder()
    assert base == folder() == folder(search_args={"search_rounds": 5})  # a longer run extends this one
    assert base == folder(batch_size_for_img_gen=1, prompts_per_batch=3)  # orchestration decides nothing
    others = [folder(verifier_args={"choice_of_metric": "accuracy_to_prompt"}), folder(seed=1),
              folder(search_args={"search_method": "zero-order"}), folder(search_args={"draft_steps": 1}),
              folder(search_args={"initial_pool_size": 3}), folder(pipeline_call_args={"num_inference_steps": 3})]
    assert len({base, *others}) == 1 + len(others)
    # Drafts' keep without drafts, and another strategy's fields at their defaults (older config.json
    # files spell them out), decide nothing; another strategy's field set otherwise is refused (test_config).
    assert base == folder(search_args={"threshold": 0.95, "num_neighbors": 4, "draft_keep": 5})


def test_a_finished_run_redoes_nothing_and_a_lost_record_is_rewritten_from_the_store(tmp_path, tiny_pipe):
    prepared, first, _ = _run(tmp_path, tiny_pipe)
    _, again, generator = _run(tmp_path, tiny_pipe)
    assert generator.counts.images == 0 and again.records == first.records
    assert again.counts.rounds_skipped == 3 and again.counts.images_graded == 0
    prepared.layout.record_path(first.records[-1].prompt, 3).unlink()
    _, resumed, generator = _run(tmp_path, tiny_pipe)
    assert generator.counts.images == 0 and resumed.counts.images_graded == 0
    assert resumed.counts.images_found == resumed.counts.grades_found == 8
    assert resumed.records == first.records


def test_file_names_are_safe_whatever_the_prompt_says(tmp_path, tiny_pipe):
    nasty = "../../etc/passwd <b>\t\r\n \\ 'quote' \u00e9\u4e2d " + "x" * 300
    prepared, outcome, _ = _run(tmp_path, tiny_pipe, prompts={"prompt": nasty}, search_args={"search_rounds": 1})
    output = prepared.config.output_dir.resolve()
    for path in output.rglob("*"):
        assert path.resolve().is_relative_to(output)
        assert len(path.name) < 120 and all(ch.isalnum() or ch in "._-" for ch in path.name)
    assert outcome.records[0].prompt == nasty  # searched exactly as given: tabs and line breaks kept
    with pytest.raises(ConfigError, match="without control characters"):  # a NUL would have to be dropped
        small_config(tmp_path, prompts={"prompt": nasty + "\x00"})


@pytest.mark.parametrize("name", list(STRATEGY_ARGS))
def test_every_strategy_records_valid_rounds_and_resumes_with_nothing_redone(name, tmp_path, tiny_pipe):
    args = STRATEGY_ARGS[name] | {"search_rounds": 3}
    prepared, outcome, generator = _run(tmp_path, tiny_pipe, search_args=args)
    records = outcome.records
    assert [r.search_round for r in records] == [1, 2, 3] and {r.search_method for r in records} == {name}
    for record in records:
        best = record.best
        assert best.stage == "final" and best.steps == 2
        finals = record.final_candidates()
        assert best.score == max(c.score for c in finals)
        assert all(c.steps == (1 if c.stage == "draft" else 2) for c in record.candidates)
        assert record.nfe <= sum(c.steps for c in record.candidates)
    assert outcome.counts.images_generated == generator.counts.images
    _, again, generator = _run(tmp_path, tiny_pipe, search_args=args)
    assert generator.counts.images == 0 and again.records == records


def test_zero_order_walks_from_the_best_neighbour_or_starts_afresh(tmp_path, tiny_pipe):
    _, outcome, _ = _run(tmp_path, tiny_pipe, search_args=STRATEGY_ARGS["zero-order"] | {"search_rounds": 4})
    prompt = outcome.records[0].prompt
    for before, record in zip(outcome.records, outcome.records[1:]):
        pivot = record.candidates[0]
        assert pivot.role == "pivot" and [c.role for c in record.candidates[1:]] == ["neighbor"] * 3
        if before.neighbors_improvement:
            assert pivot.noise == before.best.noise and pivot.image_sha256 == before.best.image_sha256
            assert record.nfe == 3 * 2  # the carried pivot is last round's image: no new evaluations
        else:
            assert pivot.noise.walk == () and pivot.seed == candidate_seed(0, prompt, record.search_round, 0)
        for neighbour in record.candidates[1:]:
            assert neighbour.noise.walk[:-1] == pivot.noise.walk and neighbour.noise.walk[-1].cosine == 0.95
    for record in outcome.records:
        finals = record.final_candidates()
        expected = any(c.score > finals[0].score for c in finals[1:])
        assert record.neighbors_improvement is expected


def test_zero_order_round_one_pivot_is_random_searchs_first_noise(tmp_path, tiny_pipe):
    _run(tmp_path, tiny_pipe, search_args={"search_rounds": 1})
    _, outcome, generator = _run(tmp_path, tiny_pipe, search_args=STRATEGY_ARGS["zero-order"] | {"search_rounds": 1})
    # The shared pivot is found (its image and grade are reused, not replaced); its slot in the pipeline
    # call is computed again so that the neighbours' call is the one a run without it would make.
    assert outcome.counts.images_found == 1 and outcome.counts.images_generated == 3
    assert outcome.counts.grades_found == 1 and generator.counts.images == 4


def test_drafts_keep_the_best_and_regenerate_them_at_full_steps(tmp_path, tiny_pipe):
    _, outcome, _ = _run(tmp_path, tiny_pipe, search_args=STRATEGY_ARGS["random+draft"])
    for record in outcome.records[1:]:  # round 1 draws 2 noises and keeps 2: no drafts (see test_engine)
        drafts = [c for c in record.candidates if c.stage == "draft"]
        finals = record.final_candidates()
        assert len(drafts) == record.num_noises and len(finals) == 2
        ranked = sorted(drafts, key=lambda c: (-c.score, c.index))
        assert {c.noise for c in finals} == {c.noise for c in ranked[:2]}
        assert all(f.image_sha256 != d.image_sha256 for f in finals for d in drafts)
        assert record.nfe == len(drafts) * 1 + len(finals) * 2


def test_zero_order_drafts_always_judge_the_pivot_at_full_steps(tmp_path, tiny_pipe):
    _, outcome, _ = _run(tmp_path, tiny_pipe, search_args=STRATEGY_ARGS["zero-order+draft"])
    for record in outcome.records:
        assert [c.role for c in record.final_candidates()][0] == "pivot"


def test_tt_scale_flux_zero_order_search_args_load_as_they_are(tmp_path):
    path = tmp_path / "flux_zero_order.json"
    path.write_text(json.dumps({
        "pretrained_model_name_or_path": "black-forest-labs/FLUX.1-dev", "torch_dtype": "bf16",
        "pipeline_call_args": {"height": 1024, "width": 1024, "max_sequence_length": 512, "guidance_scale": 3.5,
                               "num_inference_steps": 50},
        "verifier_args": {"name": "gemini", "max_new_tokens": 800, "choice_of_metric": "overall_score"},
        "search_args": {"search_method": "zero-order", "search_rounds": 8, "threshold": 0.95, "num_neighbors": 4},
    }))
    config = build_config(read_config_file(path))
    assert build_strategy(resolve(config)).name == "zero-order" and resolve(config).search.pool_size(3) == 5


def test_the_store_is_shared_and_named_by_identity(tmp_path, tiny_pipe):
    prepared, _, _ = _run(tmp_path, tiny_pipe, search_args={"search_rounds": 1})
    store = Store(resolve(prepared.config))
    images = list(store.images_dir.rglob("*.png"))
    assert len(images) == 2 and all(p.name.endswith("-st2.png") for p in images)
    assert json.loads((store.images_dir / "identity.json").read_text())["covers"]["model"] == "tiny-flux"
    assert len(list(store.grades_dir.rglob("*.json"))) == 2 + 1  # two grades and identity.json


def test_the_strategy_registry_is_the_one_list_of_names_for_config_cli_and_readme():
    import re
    from pathlib import Path

    from click.testing import CliRunner

    from ttsf.cli import main
    from ttsf_core.search import STRATEGIES

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.partition("## Search strategies")[2].partition("\n## ")[0]
    rows = re.findall(r"^\| `([a-z-]+)`", section, flags=re.MULTILINE)
    assert rows == list(STRATEGIES) and len(rows) >= 2
    help_text = " ".join(CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output.split())
    assert f"--search_method [{'|'.join(STRATEGIES)}]" in help_text
    flags = {field for cls in STRATEGIES.values() for field in cls.Args.model_fields}
    assert {"threshold", "num_neighbors", "initial_pool_size"} <= flags  # each strategy's own arguments
    assert [field for field in sorted(flags) if f"--{field} " not in help_text] == []
    with pytest.raises(ConfigError, match="search_args.search_method: received 'beam', allowed: one of "
                                          + ", ".join(STRATEGIES)):
        resolve(build_config({"search_args": {"search_method": "beam"}}))
