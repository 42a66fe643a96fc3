"""Search on the denoising path: the driver on each family's own sampler, the flow-matching math, and
what search over paths and FK steering decide from grades (tests/test_engine.py runs both through the
engine: both executors, a resume, every image regenerated)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from conftest import small_config
from ttsf_core.candidates import Candidate, Move, NoiseSpec, PathSpec
from ttsf_core.config import ConfigError, build_config
from ttsf_core.storage.files import png_bytes
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.engine.path_generation import MemoryStates
from ttsf_core.pipelines.paths import renoised, refreshed
from ttsf_core.resolve import resolve
from ttsf_core.search import GradedCandidate, build_strategy
from ttsf_core.storage.store import Recipe, StoredImage
from ttsf_core.verifiers.base import grades_from_scores

PROMPT = "a tiny astronaut hatching from an egg on the moon"
STEPS = 6
DRIVEN = ["tiny-flux", "tiny-flux2", "tiny-flux2-klein", "tiny-qwen-image", "tiny-z-image"]
_PIPES: dict[str, object] = {}


def _generator(model: str) -> CandidateGenerator:
    from ttsf_core.pipelines import load_pipeline

    config = build_config({"pretrained_model_name_or_path": model, "device": "cpu", "verifier_args": {"name": "imagestats"},
                           "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": STEPS}})
    if model not in _PIPES:
        _PIPES[model] = load_pipeline(config)
    return CandidateGenerator(_PIPES[model], resolve(config))


def _on_path(seed: int, *moves: Move, stage: str = "final") -> Candidate:
    return Candidate(noise=NoiseSpec(seed=seed), steps=STEPS, stage=stage, path=PathSpec(moves=moves))


def _run(to: int, context: str = "c") -> Move:
    return Move(kind="run", to=to, context=context)


def _sha(image) -> str:
    return hashlib.sha256(png_bytes(image)).hexdigest()


@pytest.mark.parametrize("model", DRIVEN)
def test_a_schedule_cut_in_two_calls_is_the_pipelines_own_image(model):
    """Driven through the pipeline (sigmas from a step, latents, callback interrupt): stopping at step 3
    and continuing from there gives, byte for byte, the pipeline's own uninterrupted image."""
    generator, states = _generator(model), MemoryStates()
    plain = generator.generate_batch(PROMPT, [Candidate(noise=NoiseSpec(seed=s), steps=STEPS) for s in (7, 8)])
    generator.generate_batch(PROMPT, [_on_path(s, _run(3), stage="path") for s in (7, 8)], states)
    resumed = generator.generate_batch(PROMPT, [_on_path(s, _run(3), _run(STEPS, "d")) for s in (7, 8)], states)
    assert [_sha(image) for image in resumed] == [_sha(image) for image in plain]


def test_an_intermediate_image_is_the_decoded_flow_matching_clean_prediction():
    """x0 = x_t - sigma_t * v, with v the velocity of the call's last step: from the states at steps 2
    and 3 (same call shape), v = (x_3 - x_2) / (sigma_3 - sigma_2) and x0 = x_3 - sigma_3 * v."""
    generator, states = _generator("tiny-flux"), MemoryStates()
    two, three = _on_path(7, _run(2), stage="path"), _on_path(7, _run(2), _run(3, "d"), stage="path")
    generator.generate_batch(PROMPT, [two], states)
    preview = generator.generate_batch(PROMPT, [three], states)[0]
    at_two, at_three = states.find_state(PROMPT, two), states.find_state(PROMPT, three)
    sigma_2, sigma_3 = at_three.sigmas[2], at_three.sigmas[3]
    velocity = (at_three.latents - at_two.latents) / (sigma_3 - sigma_2)
    assert torch.allclose(at_three.clean, at_three.latents - sigma_3 * velocity, atol=1e-4)
    assert preview.size == (64, 64)  # decoded by the pipeline's VAE at the pipeline's size
    pipe = generator.pipe
    with torch.no_grad():
        unpacked = pipe._unpack_latents(at_three.clean, 64, 64, pipe.vae_scale_factor)
        pixels = pipe.vae.decode(unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
    decoded = pipe.image_processor.postprocess(pixels, "pil")[0]
    assert _sha(decoded) == _sha(preview)  # the clean prediction, not the noisy sample, is what is shown


def test_a_missing_parent_state_is_refused_not_guessed():
    generator = _generator("tiny-flux")
    with pytest.raises(RuntimeError, match="path state .* is missing"):
        generator.generate_batch(PROMPT, [_on_path(7, _run(2), _run(3, "d"))], MemoryStates())


def test_forward_noising_keeps_the_flow_matching_marginal():
    generator = torch.Generator("cpu").manual_seed(0)
    clean, noise = torch.randn(200_000, generator=generator), torch.randn(200_000, generator=generator)
    sample = (1 - 0.3) * clean + 0.3 * noise
    fresh = torch.randn(200_000, generator=generator)
    later = renoised(sample, 0.3, 0.6, fresh)
    # x_b = (1 - s_b) x0 + (noise of standard deviation s_b), independent of x0
    residual = later - (1 - 0.6) * clean
    assert abs(residual.std().item() - 0.6) < 0.005 and abs(torch.corrcoef(torch.stack([residual, clean]))[0, 1]) < 0.01
    refreshed_sample = refreshed(sample, clean, 0.3, 0.5, fresh)
    own = (refreshed_sample - 0.7 * clean) / 0.3
    assert abs(own.std().item() - 1.0) < 0.01  # still the noise level the step stands at
    assert abs(torch.corrcoef(torch.stack([own, noise]))[0, 1].item() - math.sqrt(0.75)) < 0.01


def _graded(candidates: list[Candidate], scores: list[float | None]) -> list[GradedCandidate]:
    graded = []
    for candidate, score in zip(candidates, scores):
        image = StoredImage(key=candidate.key(), path="x.png", sha256=candidate.key(),
                            recipe=Recipe(noise=candidate.noise, steps=candidate.steps, batch=(candidate.noise,),
                                          batch_position=0, path=candidate.path))
        grades = None if score is None else grades_from_scores({"overall_score": score}, "test")
        graded.append(GradedCandidate(candidate=candidate, image=image, grades=grades,
                                      ungradeable=None if score is not None else "refused"))
    return graded


def _strategy(tmp_path, **search):
    config = small_config(tmp_path, pipeline_call_args={"height": 64, "width": 64, "num_inference_steps": 8},
                          search_args={"search_rounds": 2, **search})
    return build_strategy(resolve(config))


def test_paths_keep_the_best_n_of_each_level_and_branch_each_m_times_with_its_own_seed(tmp_path):
    strategy = _strategy(tmp_path, search_method="paths", num_paths=2, path_branches=3)
    assert strategy.levels[0] == (2, 1, 3) and strategy.levels[-1][2] == 8
    first = strategy.next_stage(PROMPT, 1, [], [])
    assert len(first) == 6 and {c.stage for c in first} == {"path"}
    renoisings = {c.path.moves[1].seed for c in first}
    assert len(renoisings) == 6  # every branch its own seeded re-noising
    graded = _graded(first, [1.0, 5.0, None, 2.0, 4.0, 3.0])
    second = strategy.next_stage(PROMPT, 1, [], graded)
    # The best two (5.0 and 4.0: indices 1 and 4), three branches each, continuing their paths.
    assert [c.parent for c in second] == [1, 1, 1, 4, 4, 4]
    assert all(c.path.moves[: len(first[c.parent].path.moves)] == first[c.parent].path.moves for c in second)
    assert second[0].path.stop == strategy.levels[1][2]
    again = strategy.next_stage(PROMPT, 1, [], graded)
    assert [c.key() for c in again] == [c.key() for c in second]  # decided by the grades alone


def test_paths_with_a_path_verifier_grade_the_last_levels_best_n_again_as_finals(tmp_path):
    strategy = _strategy(tmp_path, search_method="paths", num_paths=1, path_branches=2, path_verifier="imagestats")
    graded: list[GradedCandidate] = []
    stage = strategy.next_stage(PROMPT, 1, [], graded)
    while stage[0].stage == "path":
        graded += _graded(stage, [float(i) for i in range(len(stage))])
        stage = strategy.next_stage(PROMPT, 1, [], graded)
    assert stage[0].path.stop == 8 and len(stage) == 1 and stage[0].stage == "final"
    assert stage[0].key() == graded[-1].candidate.key()  # the same image: no generation, a second grade
    assert strategy.next_stage(PROMPT, 1, [], graded + _graded(stage, [1.0])) is None


def test_fk_weights_follow_each_potential(tmp_path):
    for potential, expected in (("max", [9.0, 9.0]), ("sum", [13.0, 10.0]), ("difference", [-5.0, 8.0])):
        strategy = _strategy(tmp_path, search_method="fk", num_particles=2, fk_potential=potential, fk_lambda=1.0)
        first = strategy.next_stage(PROMPT, 1, [], [])
        graded = _graded(first, [9.0, 1.0])
        second = [c.model_copy(update={"parent": 0 if i == 0 else 1}) for i, c in
                  enumerate(strategy.next_stage(PROMPT, 1, [], graded))]
        # Particle 0 continues the 9.0 one and now scores 4.0; particle 1 the 1.0 one, now 9.0.
        graded += _graded(second, [4.0, 9.0])
        weights, ess, resample = strategy.weights(graded, list(enumerate(graded))[2:])
        logs = [math.log(w) for w in weights]
        assert logs[0] - logs[1] == pytest.approx(expected[0] - expected[1]), potential
        assert resample and 1.0 <= ess <= 2.0


def test_fk_draws_are_seeded_recorded_and_adaptive(tmp_path):
    strategy = _strategy(tmp_path, search_method="fk", num_particles=4, fk_lambda=1.0)
    first = strategy.next_stage(PROMPT, 1, [], [])
    graded = _graded(first, [8.0, 1.0, 1.0, 1.0])
    drawn = strategy.next_stage(PROMPT, 1, [], graded)
    assert drawn == strategy.next_stage(PROMPT, 1, [], graded)  # the same draw every time
    assert all(c.parent in range(4) and c.weight is not None for c in drawn)
    assert all(c.path.moves[-2].kind == "refresh" for c in drawn)  # every drawn particle refreshed
    assert len({c.path.moves[-2].seed for c in drawn}) == 4
    calm = _strategy(tmp_path, search_method="fk", num_particles=4, fk_lambda=1.0, fk_ess_threshold=0.5)
    kept = calm.next_stage(PROMPT, 1, [], _graded(first, [2.0, 2.0, 2.1, 2.0]))  # ESS near 4: no resampling
    assert [c.parent for c in kept] == [0, 1, 2, 3] and all(c.weight is None for c in kept)
    assert all(c.path.moves[-2].kind == "run" for c in kept)


def test_paths_and_fk_are_refused_where_they_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="search_args.draft_steps"):
        resolve(small_config(tmp_path, search_args={"search_method": "paths", "draft_steps": 1}))
    with pytest.raises(ConfigError, match="path_forward: received 0.6 .* allowed: less than path_start"):
        resolve(small_config(tmp_path, pipeline_call_args={"num_inference_steps": 10},
                             search_args={"search_method": "paths", "path_start": 0.5, "path_forward": 0.6,
                                          "path_backward": 0.7}))
    with pytest.raises(ConfigError, match="path_backward: received 0.1, allowed: more than path_forward"):
        resolve(small_config(tmp_path, search_args={"search_method": "paths", "path_backward": 0.1}))
    with pytest.raises(ConfigError, match="pipeline_call_args.sigmas"):
        resolve(small_config(tmp_path, pipeline_call_args={"num_inference_steps": 8, "sigmas": [1.0, 0.5]},
                             search_args={"search_method": "fk"}))


@pytest.mark.parametrize("model", DRIVEN[1:])  # tiny-flux: tests/test_engine.py, every image
def test_each_driven_family_searches_paths_and_regenerates_its_best(model, tmp_path):
    from ttsf_core.usecases import runner
    from ttsf_core.storage.records import iter_round_records
    from ttsf_core.usecases.regenerate import regenerate

    generator = _generator(model)
    for method, args in (("fk", {"num_particles": 2, "fk_resample_every": 0.34}),
                         ("paths", {"num_paths": 1, "path_start": 0.34, "path_forward": 0.17, "path_backward": 0.34})):
        config = build_config({"pretrained_model_name_or_path": model, "device": "cpu",
                               "verifier_args": {"name": "imagestats"}, "output_dir": str(tmp_path / method),
                               "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": STEPS},
                               "search_args": {"search_rounds": 1, "search_method": method, **args},
                               "prompts": {"prompt": PROMPT, "num_prompts": None}})
        prepared, outcome = runner.run(config, generator=CandidateGenerator(generator.pipe, resolve(config)))
        outcome.raise_first()
        ((path, record),) = iter_round_records(prepared.layout.run_dir)
        again = regenerate(path, record.best_index, tmp_path / f"{method}.png",
                           generator=CandidateGenerator(generator.pipe, resolve(config)))
        assert again.identical, (model, method)
        assert record.nfe == resolve(config).search.nfe(1, STEPS)


@pytest.mark.usefixtures("prefect_harness")
def test_fk_with_an_ensemble_and_a_path_verifier_writes_the_same_records_under_both_executors(tmp_path, monkeypatch):
    """The run's verifier an ensemble (clip + imagestats, ranks combined); intermediate images graded by
    --path_verifier imagestats, stored in its own grade folder; Prefect's grade tasks pick the verifier
    per job like the thread executor; a re-run does nothing."""
    import tiny_rewards
    from flows.search_dataset import search_dataset
    from tasks import runtime
    from ttsf_core.usecases import runner
    from ttsf_core.storage.records import iter_round_records
    from ttsf_core.storage.store import Store

    generator = _generator("tiny-flux")

    def config_in(folder):
        return build_config({
            "pretrained_model_name_or_path": "tiny-flux", "device": "cpu", "output_dir": str(tmp_path / folder),
            "verifier_args": {"name": "clip,imagestats", "options": {"clip": {"model_name": str(
                tiny_rewards.tiny_clip("random"))}}},
            "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": STEPS},
            "search_args": {"search_rounds": 2, "search_method": "fk", "num_particles": 2, "fk_resample_every": 0.34,
                            "path_verifier": "imagestats"},
            "prompts": {"prompt": PROMPT, "num_prompts": None}})

    direct = config_in("direct")
    prepared, outcome = runner.run(direct, generator=CandidateGenerator(generator.pipe, resolve(direct)))
    outcome.raise_first()
    records = {r.search_round: path.read_bytes() for path, r in iter_round_records(prepared.layout.run_dir)}
    first = next(r for _, r in iter_round_records(prepared.layout.run_dir))
    assert (first.verifier_calls, first.path_verifier_calls) == (2, 4)  # 2 final particles; 2 a resampling step
    run = resolve(direct)
    assert Store(run.path_run).grades_dir != Store(run).grades_dir
    assert len(list(Store(run.path_run).grades_dir.rglob("*/*.json"))) == 4 + 8

    flow = config_in("flow")
    monkeypatch.setattr(runtime, "generator_for", lambda config: CandidateGenerator(generator.pipe, resolve(flow)))
    result = search_dataset(flow)
    flow_dir = runner.prepare_run(flow).layout.run_dir
    assert {r.search_round: path.read_bytes() for path, r in iter_round_records(flow_dir)} == records
    assert result["counts"]["images_generated"] == outcome.counts.images_generated
    _, again = runner.run(direct, generator=CandidateGenerator(generator.pipe, resolve(direct)))
    assert (again.counts.images_generated, again.counts.images_graded) == (0, 0)
