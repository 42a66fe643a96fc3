"""The flow-matching families people search with today, on their offline tiny versions: FLUX.2 [dev]
(tiny-flux2), FLUX.2 [klein] (tiny-flux2-klein, and its Base stand-in), Qwen-Image (tiny-qwen-image),
Qwen-Image 2.1 (an in-memory tiny, tests/tiny_pipelines.py), Stable Diffusion 3.5 (tiny-sd3) and Z-Image
(tiny-z-image).

Each is selected by its `--model` name and loaded through load_pipeline (2.1: built in memory); its
noise is shaped from its own config and is the pipeline's own noise, so the first fresh-seed image equals
the pipeline's own image for that generator (float32 CPU: identical); batched calls equal one-at-a-time
ones within one 8-bit level; random, zero-order and drafts run through runner.run and the checked
candidates regenerate byte-identical; the configs/*.json of the real models load as they are and run
with the model swapped for its tiny version; the README's support table is the families' own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ttsf_core.usecases import runner
from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.config import build_config, merge
from ttsf_core.resolve import resolve
from ttsf_core.config_files import read_config_file
from ttsf_core.engine.generate import CandidateGenerator, seed_candidates
from ttsf_core.storage.records import iter_round_records, resolve_image
from ttsf_core.usecases.regenerate import regenerate

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a tiny astronaut hatching from an egg on the moon"
QWEN21 = "qwen-image-2.1"  # no --model name: built in memory by tests/tiny_pipelines.py
# Each family's call arguments at tiny sizes; the rest are the tiny model's defaults (config.py).
CALLS = {
    "tiny-flux2": {"height": 64, "width": 64},
    "tiny-flux2-klein": {"height": 64, "width": 64},
    "tiny-qwen-image": {"height": 64, "width": 64},
    "tiny-sd3": {"height": 64, "width": 64},
    "tiny-z-image": {"height": 64, "width": 64},
    QWEN21: {"height": 64, "width": 64},
}
CLASSES = {"tiny-flux2": "Flux2Pipeline", "tiny-flux2-klein": "Flux2KleinPipeline",
           "tiny-qwen-image": "QwenImagePipeline", "tiny-sd3": "StableDiffusion3Pipeline",
           "tiny-z-image": "ZImagePipeline", QWEN21: "QwenImage21Pipeline"}
_LOADED: dict[str, object] = {}


def _model(name: str) -> str:
    if name == QWEN21:
        from tiny_pipelines import ensure_tiny

        return str(ensure_tiny(QWEN21))  # its folder: model_index.json and configs for the checks
    return name


def _folder(name: str) -> Path:
    from ttsf_core.pipelines import resolve_model_path

    return Path(resolve_model_path(_model(name)))


def _config(name: str, tmp_path: Path, **overrides):
    base = {
        "pretrained_model_name_or_path": _model(name),
        "torch_dtype": "fp32",
        "device": "cpu",
        "pipeline_call_args": {**CALLS[name], "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats"},
        "prompts": {"prompt": PROMPT},
        "output_dir": str(tmp_path / "output"),
    }
    return build_config(merge(base, overrides))


def _pipe(name: str, **load):
    """Each tiny pipeline loaded once per session through ttsf's own loader (2.1: built in memory;
    `load` kwargs: a variant loaded with diffusers' config overrides)."""
    key = name + json.dumps(load, sort_keys=True)
    if key not in _LOADED:
        if name == QWEN21:
            from tiny_pipelines import build_qwen_image_21

            pipe = build_qwen_image_21()
            pipe.set_progress_bar_config(disable=True)
        elif load:
            from diffusers import DiffusionPipeline

            from ttsf_core.pipelines import resolve_model_path

            pipe = DiffusionPipeline.from_pretrained(resolve_model_path(name), **load)
            pipe.set_progress_bar_config(disable=True)
        else:
            from ttsf_core.pipelines import load_pipeline

            pipe = load_pipeline(build_config({"pretrained_model_name_or_path": name, "device": "cpu"}))
        _LOADED[key] = pipe
    return _LOADED[key]


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_tiny_models_are_selected_by_name_with_their_own_defaults():
    from ttsf_core.model_defaults import MODEL_DEFAULTS
    from ttsf_core.pipelines.signature import pipeline_class_name

    for name, class_name in CLASSES.items():
        if name == QWEN21:
            continue
        assert pipeline_class_name(name) == class_name  # known before anything is built
        config = build_config({"pretrained_model_name_or_path": name})
        assert config.torch_dtype == "fp32"
        assert config.pipeline_call_args.given() == {
            k: v for k, v in MODEL_DEFAULTS[name]["pipeline_call_args"].items() if k != "num_inference_steps"}
        assert config.pipeline_call_args.num_inference_steps == 4


def _own_call(pipe, config, seed: int, output_type: str):
    import torch

    return pipe(prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(seed),
                num_inference_steps=config.pipeline_call_args.num_inference_steps, output_type=output_type,
                **config.pipeline_call_args.given()).images[0]


# Each family with its default guidance, and with the other prompt path of its pipeline (negative
# prompts, true CFG on or off, klein Base's CFG against the empty prompt, the second and third prompts).
VARIANTS = [  # (tiny model, call arguments, load overrides, whether the pipeline runs CFG with a negative)
    ("tiny-flux2", {}, {}, False),
    ("tiny-flux2", {"guidance_scale": 2.5, "max_sequence_length": 300}, {}, False),
    ("tiny-flux2-klein", {}, {}, False),
    ("tiny-flux2-klein", {"guidance_scale": 4.0}, {"is_distilled": False}, True),  # [klein] Base: true CFG
    ("tiny-qwen-image", {}, {}, True),  # true CFG against " "
    ("tiny-qwen-image", {"true_cfg_scale": 1.0}, {}, False),
    ("tiny-sd3", {}, {}, True),
    ("tiny-sd3", {"negative_prompt": "blurry", "negative_prompt_2": "dark", "prompt_3": "an egg on the moon"}, {},
     True),
    ("tiny-z-image", {}, {}, False),  # Turbo: no CFG
    ("tiny-z-image", {"guidance_scale": 3.0, "negative_prompt": "blurry"}, {}, True),
    (QWEN21, {}, {}, False),
    (QWEN21, {"true_cfg_scale": 3.0, "negative_prompt": "blurry"}, {}, True),
]


@pytest.mark.parametrize(("name", "arguments", "load", "cfg"), VARIANTS)
def test_first_fresh_seed_image_is_the_pipelines_own(name, arguments, load, cfg, tmp_path):
    pipe = _pipe(name, **load)
    assert type(pipe).__name__ == CLASSES[name]
    config = _config(name, tmp_path, pipeline_call_args=arguments)
    generator = CandidateGenerator(pipe, resolve(config))
    (ours,) = generator.generate(PROMPT, seed_candidates([5], 2))
    assert generator.counts.prompt_encodings == 1
    # The negative prompt is encoded (once) exactly when the pipeline itself runs CFG.
    assert ("negative_prompt_embeds" in generator.encode(PROMPT)) == cfg
    own = _own_call(pipe, config, 5, "pil")
    assert ours.size == own.size and np.array_equal(_pixels(ours), _pixels(own))
    # The float image too: the README's tolerance (float32 on the CPU) is 1e-6; measured 0.
    ours_float = pipe(**{**generator.call_kwargs(PROMPT, seed_candidates([5], 2)), "output_type": "np"}).images[0]
    assert np.abs(ours_float - _own_call(pipe, config, 5, "np")).max() <= 1e-6
    assert _pixels(ours).std() > 1  # an image, not a blank


def _expected_shape(name: str, pipe, height: int, width: int) -> tuple:
    folder = _folder(name)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    channels = transformer["in_channels"]
    if name in ("tiny-flux2", "tiny-flux2-klein"):  # patchified 2x2 into channels, 4-D as the call takes it
        scale = 2 * 2 ** (len(vae["block_out_channels"]) - 1)
        return (1, channels, height // scale, width // scale)
    if name == "tiny-qwen-image":  # one frame, 2x2 packed into tokens of 4C
        scale = 2 * 2 ** len(vae["temperal_downsample"])
        return (1, (height // scale) * (width // scale), channels)
    if name == QWEN21:  # 16x VAE, one token per latent pixel
        scale = vae["scale_factor_spatial"]
        return (1, (height // scale) * (width // scale), channels)
    scale = 2 ** (len(vae["block_out_channels"]) - 1)  # sd3, z-image: unpacked
    return (1, channels, height // scale, width // scale)


@pytest.mark.parametrize("name", list(CALLS))
def test_noise_is_shaped_from_the_config(name, tmp_path):
    pipe = _pipe(name)
    for height, width in ((64, 64), (96, 64)):
        config = _config(name, tmp_path, pipeline_call_args={"height": height, "width": width})
        latents = CandidateGenerator(pipe, resolve(config)).call_kwargs(PROMPT, seed_candidates([5], 2))["latents"]
        assert tuple(latents.shape) == _expected_shape(name, pipe, height, width)


@pytest.mark.parametrize("name", list(CALLS))
def test_batched_equals_one_at_a_time(name, tmp_path):
    pipe, config = _pipe(name), _config(name, tmp_path, batch_size_for_img_gen=3)
    candidates = seed_candidates([1, 2], 2) + [Candidate(noise=NoiseSpec(seed=1).neighbour(7, 0.9), steps=2)]
    batched = CandidateGenerator(pipe, resolve(config)).generate(PROMPT, candidates)
    single = CandidateGenerator(pipe, resolve(config.model_copy(update={"batch_size_for_img_gen": 1}))).generate(PROMPT,
                                                                                                       candidates)
    for a, b in zip(batched, single, strict=True):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1
    assert np.abs(_pixels(single[2]) - _pixels(single[0])).mean() > 0.5  # the neighbour is another noise


SEARCHES = {
    "random": {"search_rounds": 2, "initial_pool_size": 1},
    "zero-order": {"search_method": "zero-order", "search_rounds": 2, "num_neighbors": 2},
    "drafts": {"search_rounds": 1, "initial_pool_size": 3, "draft_steps": 1, "draft_keep": 1},
}


@pytest.mark.parametrize("name", list(CALLS))
def test_every_search_runs_and_regenerates_byte_identical(name, tmp_path):
    pipe = _pipe(name)
    checked = 0
    for search, args in SEARCHES.items():
        config = _config(name, tmp_path, search_args=args, batch_size_for_img_gen=4)
        generator = CandidateGenerator(pipe, resolve(config))
        prepared, outcome = runner.run(config, generator=generator)
        outcome.raise_first()
        assert outcome.counts.rounds_recorded == args["search_rounds"]
        records = iter_round_records(prepared.layout.run_dir)
        for path, record in records:
            assert resolve_image(path, record.best_img_path).is_file() and record.best_score is not None
            for index in sorted({0, len(record.candidates) - 1}):
                result = regenerate(path, index, tmp_path / "again" / f"{checked}.png", generator=generator)
                assert result.identical, (search, record.search_round, index)
                checked += 1
        if search == "zero-order":
            assert any(c.noise.walk for _, record in records for c in record.candidates)
        if search == "drafts":
            (_, record), = records
            assert [c.stage for c in record.candidates].count("draft") == 3
    assert checked >= 6


def test_regenerate_from_the_record_alone_reloads_the_tiny_model_by_name(tmp_path):
    """`ttsf regenerate` with no generator in hand: the run's config names tiny-flux2-klein, which is
    rebuilt (here: found in the session cache) and loaded, and the image comes back byte-identical."""
    config = _config("tiny-flux2-klein", tmp_path, search_args=SEARCHES["zero-order"])
    prepared, outcome = runner.run(config, generator=CandidateGenerator(_pipe("tiny-flux2-klein"), resolve(config)))
    outcome.raise_first()
    path, record = iter_round_records(prepared.layout.run_dir)[-1]
    assert regenerate(path, len(record.candidates) - 1, tmp_path / "again.png").identical


# The real models' configs (configs/*.json, tt-scale-flux's format), each with the tiny version it runs on.
CONFIG_FILES = {
    "flux.2_dev.json": "tiny-flux2",
    "flux.2_klein_4b.json": "tiny-flux2-klein",
    "qwen_image.json": "tiny-qwen-image",
    "qwen_image_2.1.json": QWEN21,
    "sd3.5_large.json": "tiny-sd3",
    "z_image_turbo.json": "tiny-z-image",
}


def test_each_new_family_ships_a_config_file_for_one_of_its_hub_ids():
    from ttsf_core.pipelines.families import family_of

    assert {path.name for path in (ROOT / "configs").glob("*.json")} >= set(CONFIG_FILES)
    for filename, tiny in CONFIG_FILES.items():
        model = json.loads((ROOT / "configs" / filename).read_text())["pretrained_model_name_or_path"]
        assert model in family_of(CLASSES[tiny]).hub_ids, filename


@pytest.mark.parametrize("filename", list(CONFIG_FILES))
def test_model_config_files_load_and_run(filename, tmp_path, monkeypatch):
    import huggingface_hub

    from ttsf_core.pipelines import check_resolution

    data = read_config_file(ROOT / "configs" / filename)
    model, tiny = data["pretrained_model_name_or_path"], CONFIG_FILES[filename]
    folder = _folder(tiny)

    # As the file is: the hub answers model_index.json (here from the tiny folder) and nothing else is read.
    def hub(repo_id, filename, subfolder=None, **_):
        assert repo_id == model
        return str(folder / (subfolder or "") / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    as_is = build_config(data)
    call = data["pipeline_call_args"]
    assert as_is.pipeline_call_args.given() == {k: v for k, v in call.items() if k != "num_inference_steps"}
    assert as_is.pipeline_call_args.num_inference_steps == call["num_inference_steps"]
    check_resolution(as_is)  # the call arguments against the class and the size against its multiple
    # Then run on the tiny version: model swapped, size and search shrunk, a local verifier.
    config = build_config(merge(data, {
        "pretrained_model_name_or_path": _model(tiny), "torch_dtype": "fp32", "device": "cpu",
        "pipeline_call_args": {**CALLS[tiny], "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats", "choice_of_metric": "overall_score"},
        "search_args": {"search_rounds": 1, "initial_pool_size": 1},
        "prompts": {"prompt": PROMPT}, "output_dir": str(tmp_path / "output"),
    }))
    prepared, outcome = runner.run(config, generator=CandidateGenerator(_pipe(tiny), resolve(config)))
    outcome.raise_first()
    (record,) = outcome.records
    assert resolve_image(prepared.layout.record_path(PROMPT, 1), record.best_img_path).is_file()


def test_readme_support_table_is_the_families_own():
    from ttsf_core.pipelines.families import support_table

    text = (ROOT / "README.md").read_text()
    section = text[text.index("| family | pipeline classes |"):]
    lines = []
    for line in section.splitlines()[2:]:  # the rows under the header and its separator, up to the table's end
        if not line.startswith("|"):
            break
        lines.append(line)
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    yes = {True: "yes", False: "no"}
    for row in support_table():
        cells = rows[row["family"]]
        assert cells[1] == ", ".join(f"`{name}`" for name in row["classes"]), row["family"]
        assert cells[2:9] == [yes[row["noise_search"]], yes[row["zero_order"]], yes[row["drafts"]],
                              yes[row["flow_matching"]], row["paths"], row["fk"], yes[row["video"]]], row["family"]
        assert cells[9] == (f"`{row['tiny']}`" if row["tiny"] else "—"), row["family"]
    assert len(rows) == len(support_table())


def test_flow_matching_is_read_from_the_schedulers():
    """The declared flag (the pipeline classes' __init__ annotations) against each tiny model's loaded
    scheduler, and against diffusers' classes themselves (not a list kept by hand)."""
    import diffusers

    from ttsf_core.pipelines.families import FAMILIES, declared_scheduler, family_of, uses_flow_matching

    for family in FAMILIES:
        declared = [declared_scheduler(name) for name in family.classes]
        assert family.flow_matching == all(
            isinstance(s, type) and issubclass(s, (diffusers.FlowMatchEulerDiscreteScheduler,
                                                   diffusers.FlowMatchHeunDiscreteScheduler)) for s in declared)
    for name in CALLS:
        pipe = _pipe(name)
        assert family_of(pipe).flow_matching and uses_flow_matching(pipe)
    assert not family_of("StableDiffusionXLPipeline").flow_matching
    assert family_of("WanPipeline").flow_matching and family_of("WanPipeline").video


def test_prompt_upsampling_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from ttsf_core.config import ConfigError
    from ttsf_core.pipelines import loader

    monkeypatch.setattr(loader, "load_pipeline", lambda config: pytest.fail("the model was loaded"))
    config = _config("tiny-flux2", tmp_path, pipeline_call_args={"caption_upsample_temperature": 0.15})
    with pytest.raises(ConfigError) as error:
        runner.prepare_run(config)
    assert str(error.value).startswith("pipeline_call_args.caption_upsample_temperature: received 0.15, allowed: "
                                       "unset or 0")


def test_a_checkpoint_with_a_fixed_schedule_refuses_other_step_counts(tmp_path):
    """Qwen-Image 2.1 ignores num_inference_steps when the checkpoint sets sample_sigmas: drafts (and any
    other count) would be recorded with steps they did not take, so they are refused."""
    from ttsf_core.config import ConfigError

    pipe = _pipe(QWEN21)
    pipe.register_to_config(sample_sigmas=[1.0, 0.75, 0.5])
    try:
        with pytest.raises(ConfigError, match=r"^pipeline_call_args.num_inference_steps: received 2, allowed: 3 "):
            CandidateGenerator(pipe, resolve(_config(QWEN21, tmp_path)))
        config = _config(QWEN21, tmp_path, pipeline_call_args={"num_inference_steps": 3},
                         search_args={"draft_steps": 1})
        with pytest.raises(ConfigError, match=r"^search_args.draft_steps: received 1, allowed: 3 "):
            CandidateGenerator(pipe, resolve(config))
    finally:
        pipe.register_to_config(sample_sigmas=None)


def test_bad_sizes_are_refused_with_the_familys_multiple(tmp_path):
    from ttsf_core.config import ConfigError

    for name, multiple in (("tiny-flux2", 16), ("tiny-qwen-image", 16), ("tiny-sd3", 16), ("tiny-z-image", 16),
                           (QWEN21, 32)):
        config = _config(name, tmp_path, pipeline_call_args={"height": 72})
        with pytest.raises(ConfigError, match=rf"^height: received 72, allowed: a positive multiple of {multiple} "):
            runner.prepare_run(config)


def test_adding_a_family_is_one_module():
    """The registry finds every module of ttsf_core/pipelines/families/ and each class belongs to one family."""
    from ttsf_core.pipelines import families

    modules = {path.stem for path in Path(families.__file__).parent.glob("*.py")} - {"__init__", "base"}
    assert {type(family).__module__.rsplit(".", 1)[1] for family in families.FAMILIES} == modules
    assert len({name for family in families.FAMILIES for name in family.classes}) == \
        sum(len(family.classes) for family in families.FAMILIES)
