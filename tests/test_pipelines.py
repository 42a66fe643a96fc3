"""Every pipeline family of tt-scale-flux's configs, on tiny random versions built offline
(tests/tiny_pipelines.py): SD 1.5, SDXL, PixArt-Sigma, LTX-Video and Wan (FLUX: the rest of the suite).

Each loads through load_pipeline from its saved folder; its noise is shaped from its own config and is
the noise the pipeline draws itself; batched calls equal one-at-a-time ones within one 8-bit level; a
search (random, zero-order, drafts) runs through runner.run and every checked candidate regenerates
byte-identical (videos: the mp4); call arguments a config does not set are never passed; tt-scale-flux's
own config files load, and run with the model swapped for the tiny folder.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tiny_pipelines import ensure_tiny
from ttsf_core.usecases import runner
from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.config import RunConfig, build_config, digest, merge
from ttsf_core.config_files import read_config_file
from ttsf_core.engine.generate import CandidateGenerator, seed_candidates
from ttsf_core.storage.records import iter_round_records, resolve_image
from ttsf_core.usecases.regenerate import regenerate
from ttsf_core.resolve import resolve

PROMPT = "a tiny astronaut hatching from an egg on the moon"
NEGATIVE = "bad quality, worse quality, degenerate quality"
# Each pipeline's call arguments as tt-scale-flux's config sets them, sizes shrunk for the tiny models.
CALLS = {
    "sd15": {"height": 32, "width": 32, "negative_prompt": NEGATIVE},
    "sdxl": {"height": 32, "width": 32, "negative_prompt": NEGATIVE},
    "pixart-sigma": {"height": 128, "width": 128},  # binned to the 256x256 bin, resized back
    "ltx-video": {"height": 32, "width": 32, "num_frames": 9, "negative_prompt": "worst quality, blurry"},
    "wan": {"height": 16, "width": 16, "num_frames": 9, "guidance_scale": 5.0, "negative_prompt": "static, blurred"},
}
CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
           "pixart-sigma": "PixArtSigmaPipeline", "ltx-video": "LTXPipeline", "wan": "WanPipeline"}
VIDEO = ("ltx-video", "wan")
_LOADED: dict[str, object] = {}


def _config(name: str, tmp_path: Path, **overrides) -> RunConfig:
    base = {
        "pretrained_model_name_or_path": str(ensure_tiny(name)),
        "torch_dtype": "fp32",
        "device": "cpu",
        "pipeline_call_args": {**CALLS[name], "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats"},
        "prompts": {"prompt": PROMPT},
        "output_dir": str(tmp_path / "output"),
    }
    return build_config(merge(base, overrides))


def _pipe(name: str):
    """Each tiny pipeline loaded once per session, through ttsf's own loader."""
    if name not in _LOADED:
        from ttsf_core.pipelines import load_pipeline

        _LOADED[name] = load_pipeline(build_config({"pretrained_model_name_or_path": str(ensure_tiny(name)),
                                                    "torch_dtype": "fp32", "device": "cpu"}))
    return _LOADED[name]


def _pixels(media) -> np.ndarray:
    frames = media if isinstance(media, list) else [media]
    return np.stack([np.asarray(frame.convert("RGB"), dtype=np.int16) for frame in frames])


def test_default_flux_identities_are_unchanged():
    # Computed before unset call arguments became the pipeline's own: FLUX.1-dev keeps tt-scale-flux's
    # FLUX config (1024, 3.5, 50 steps, 512 tokens) and tiny-flux its CPU defaults, so their run folders
    # and stored images stay where they were. (The run hash also covers the verifier's grading identity.)
    # (The run hash of the default config moved once, on purpose: gemini's grading identity now holds
    # the rubric's text, which this version rewrote; its images stay where they were.)
    assert digest(resolve(RunConfig()).generation_identity) == "9a7b3ba5d77b"
    tiny = build_config({"pretrained_model_name_or_path": "tiny-flux"})
    assert digest(resolve(tiny).generation_identity) == "f646a08cec9a"
    assert tiny.pipeline_call_args.num_inference_steps == 4


@pytest.mark.parametrize("name", list(CALLS))
def test_noise_is_shaped_from_the_config_and_is_the_pipelines_own(name, tmp_path):
    pipe = _pipe(name)
    assert type(pipe).__name__ == CLASSES[name]
    config = _config(name, tmp_path)
    generator = CandidateGenerator(pipe, resolve(config))
    latents = generator.call_kwargs(PROMPT, seed_candidates([5], 2))["latents"]
    folder = ensure_tiny(name)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    denoiser = json.loads((folder / ("unet" if name in ("sd15", "sdxl") else "transformer") / "config.json").read_text())
    args = CALLS[name]
    if name in ("sd15", "sdxl"):
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        expected = (1, denoiser["in_channels"], args["height"] // scale, args["width"] // scale)
    elif name == "pixart-sigma":  # 128x128 goes to the 256x256 bin of a sample-size-32 transformer
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        expected = (1, denoiser["in_channels"], 256 // scale, 256 // scale)
    elif name == "ltx-video":  # packed: (frames x height x width) tokens of C channels (patch size 1)
        spatial = vae["patch_size"] * 2 ** sum(vae["spatio_temporal_scaling"])
        temporal = vae["patch_size_t"] * 2 ** sum(vae["spatio_temporal_scaling"])
        tokens = ((args["num_frames"] - 1) // temporal + 1) * (args["height"] // spatial) * (args["width"] // spatial)
        expected = (1, tokens, denoiser["in_channels"])
    else:  # wan: (C, frames, height, width)
        expected = (1, denoiser["in_channels"], (args["num_frames"] - 1) // vae["scale_factor_temporal"] + 1,
                    args["height"] // vae["scale_factor_spatial"], args["width"] // vae["scale_factor_spatial"])
    assert tuple(latents.shape) == expected
    # The very noise (and further randomness) the pipeline draws itself from generator seed 5.
    import torch

    (ours,) = generator.generate(PROMPT, seed_candidates([5], 2))
    own = pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(5), num_inference_steps=2, output_type="pil",
               **args)
    own = own.frames[0] if name in VIDEO else own.images[0]
    assert np.abs(_pixels(ours) - _pixels(own)).max() <= 1


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
    if name in VIDEO:
        assert all(isinstance(video, list) and len(video) == CALLS[name]["num_frames"] for video in batched)


SEARCHES = {
    "random": {"search_rounds": 2, "initial_pool_size": 1},
    "zero-order": {"search_method": "zero-order", "search_rounds": 2, "num_neighbors": 2},
    "drafts": {"search_rounds": 1, "initial_pool_size": 3, "draft_steps": 1, "draft_keep": 1},
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_search_runs_and_regenerates_byte_identical(name, tmp_path):
    from ttsf_core.usecases.report import build_report
    from ttsf_core.verifiers.registry import build_verifier
    from ttsf_core.video import grading_frames, poster_path, read_frames

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
            best = resolve_image(path, record.best_img_path)
            assert best.is_file() and record.best_score is not None
            if name in VIDEO:
                assert best.suffix == ".mp4" and poster_path(best).is_file()
                assert len(read_frames(best)) == CALLS[name]["num_frames"]
            for index in {0, len(record.candidates) - 1}:
                if search == "random":
                    continue  # the same calls as the drafts' finals and zero-order's pivots
                result = regenerate(path, index, tmp_path / "again" / f"{checked}", generator=generator)
                assert result.identical, (search, record.search_round, index)
                checked += 1
        if search == "zero-order":
            assert any(c.noise.walk for _, record in records for c in record.candidates)
        if search == "drafts":
            (_, record), = records
            assert [c.stage for c in record.candidates].count("draft") == 3
    assert checked >= 4
    if name in VIDEO:
        # Frame-averaged grades: the mean of imagestats over the evenly spaced frames of the mp4.
        path, record = records[0]
        best = record.best
        video = resolve_image(path, best.img_path)
        indices, frames = grading_frames(video, config.export_args.grade_frames)
        assert len(indices) == min(4, len(read_frames(video))) and indices[0] == 0
        per_frame = build_verifier(config.verifier_args).score(PROMPT, frames)
        for metric, grade in best.grades.root.items():
            assert grade.score == pytest.approx(np.mean([g.root[metric].score for g in per_frame]))
            assert grade.explanation.startswith("mean over frames 0, ")
        report = build_report(prepared.layout.run_dir)
        with zipfile.ZipFile(report.best_images_zip) as archive:
            assert all(entry.endswith(".mp4") for entry in archive.namelist())
        assert "data:image/jpeg;base64," in report.html.read_text()


def test_gemini_grades_each_video_whole_when_asked(tmp_path, monkeypatch):
    from fake_gemini import FakeGeminiServer, expected_grades
    from ttsf_core.storage.store import Store

    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    with FakeGeminiServer() as server:
        gemini = {"name": "gemini", "options": {"base_url": server.url}}
        config = _config("wan", tmp_path, verifier_args=gemini, export_args={"video_grading": "whole"},
                         search_args={"search_rounds": 2})
        prepared, outcome = runner.run(config, generator=CandidateGenerator(_pipe("wan"), resolve(config)))
        outcome.raise_first()
        requests = server.requests
    # One request a video (2 + 4), each carrying that mp4 itself: no frames, no PNG.
    media = [[part.get("inlineData") or part.get("inline_data") for part in request.body["contents"][0]["parts"]
              if "inlineData" in part or "inline_data" in part] for request in requests]
    assert len(requests) == 6
    assert all(len(parts) == 1 and (parts[0].get("mimeType") or parts[0].get("mime_type")) == "video/mp4"
               for parts in media)
    records = iter_round_records(prepared.layout.run_dir)
    for path, record in records:
        for candidate in record.candidates:
            video = resolve_image(path, candidate.img_path)
            assert video.suffix == ".mp4" and candidate.grades == expected_grades(video.read_bytes())
    # Whole-video grades are other grades than frame-averaged ones: their own folder and run identity.
    by_frames = _config("wan", tmp_path, verifier_args=gemini, search_args={"search_rounds": 2})
    assert Store(resolve(by_frames)).grades_dir != Store(resolve(config)).grades_dir
    assert resolve(by_frames).identity_hash != resolve(config).identity_hash


def test_whole_video_grading_is_refused_for_a_verifier_that_reads_no_video(tmp_path):
    from ttsf_core.config import ConfigError

    config = _config("wan", tmp_path, export_args={"video_grading": "whole"})
    with pytest.raises(ConfigError, match=r"^export_args.video_grading: received 'whole' with "
                                          r"verifier_args.name='imagestats', allowed: 'frames'"):
        runner.prepare_run(config)


@pytest.mark.parametrize("name", list(CALLS))
def test_call_arguments_a_config_does_not_set_stay_the_pipelines_own(name, tmp_path, monkeypatch):
    import inspect

    pipe = _pipe(name)
    signature = inspect.signature(type(pipe).__call__).parameters
    config = build_config({"pretrained_model_name_or_path": str(ensure_tiny(name)), "torch_dtype": "fp32",
                           "device": "cpu", "output_dir": str(tmp_path)})
    # The steps are the class's own default, read before loading anything.
    assert resolve(config).steps == signature["num_inference_steps"].default
    assert config.pipeline_call_args.given() == {}
    passed = []
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        passed.append(kwargs)
        if name in VIDEO:  # the defaults are 161 frames of 512x704 (LTX) / 81 of 480x832 (Wan): kwargs only
            raise _Recorded
        return original(self, *args, **{**kwargs, "num_inference_steps": 1})

    generator = CandidateGenerator(pipe, resolve(config))
    monkeypatch.setattr(type(pipe), "__call__", spy)
    try:
        (image,) = generator.generate(PROMPT, seed_candidates([3], resolve(config).steps))
    except _Recorded:
        image = None
    (kwargs,) = passed
    own = ("height", "width", "guidance_scale", "max_sequence_length", "num_frames", "negative_prompt", "frame_rate",
           "use_resolution_binning", "clip_skip", "guidance_rescale")
    assert not [argument for argument in own if kwargs.get(argument) is not None]
    assert kwargs["num_inference_steps"] == signature["num_inference_steps"].default
    defaults = {argument: parameter.default for argument, parameter in signature.items()}
    if name in ("sd15", "sdxl", "pixart-sigma"):
        denoiser = pipe.unet if name != "pixart-sigma" else pipe.transformer
        size = denoiser.config.sample_size * pipe.vae_scale_factor
        assert image.size == (size, size)
    elif name == "ltx-video":
        spatial, temporal = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
        tokens = ((defaults["num_frames"] - 1) // temporal + 1) * (defaults["height"] // spatial) * \
            (defaults["width"] // spatial)
        assert tuple(kwargs["latents"].shape) == (1, tokens, pipe.transformer.config.in_channels)
    else:
        spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        assert tuple(kwargs["latents"].shape) == (1, pipe.transformer.config.in_channels,
                                                  (defaults["num_frames"] - 1) // temporal + 1,
                                                  defaults["height"] // spatial, defaults["width"] // spatial)


class _Recorded(Exception):
    pass


@pytest.mark.parametrize(("name", "arguments", "message"), [
    ("ltx-video", {"num_frame": 9}, "pipeline_call_args.num_frame: received 9, allowed: arguments of "
                                    "LTXPipeline.__call__: negative_prompt, height, width, num_frames"),
    ("sd15", {"max_sequence_length": 77}, "pipeline_call_args.max_sequence_length: received 77, allowed: arguments "
                                          "of StableDiffusionPipeline.__call__: height, width"),
    ("ltx-video", {"height": 48}, "height: received 48, allowed: a positive multiple of 32 for this model"),
    ("wan", {"width": 24}, "width: received 24, allowed: a positive multiple of 16 for this model"),
    ("sdxl", {"height": 36}, "height: received 36, allowed: a positive multiple of 8 for this model"),
])
def test_bad_call_arguments_are_refused_before_the_model_loads(name, arguments, message, tmp_path, monkeypatch):
    from ttsf_core.config import ConfigError
    from ttsf_core.pipelines import loader

    monkeypatch.setattr(loader, "load_pipeline", lambda config: pytest.fail("the model was loaded"))
    config = _config(name, tmp_path, pipeline_call_args=arguments)
    with pytest.raises(ConfigError) as error:
        runner.prepare_run(config)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


# tt-scale-flux's configs/*.json as its users have them (sayakpaul/tt-scale-flux; sd1.5, sdxl and
# pixart_sigma as they were when they carried pipeline_call_args).
TT_SCALE_FLUX_CONFIGS = {
    "flux.1_dev.json": {
        "pretrained_model_name_or_path": "black-forest-labs/FLUX.1-dev", "torch_dtype": "bf16",
        "pipeline_call_args": {"height": 1024, "width": 1024, "max_sequence_length": 512, "guidance_scale": 3.5,
                               "num_inference_steps": 50},
        "verifier_args": {"name": "gemini", "max_new_tokens": 800, "choice_of_metric": "overall_score"},
        "search_args": {"search_method": "random", "search_rounds": 4},
    },
    "sd1.5.json": {
        "pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5", "torch_dtype": "fp16",
        "pipeline_call_args": {"height": 512, "width": 512, "negative_prompt": NEGATIVE},
        "verifier_args": {"name": "gemini", "max_new_tokens": 800, "choice_of_metric": "overall_score"},
        "search_args": {"search_method": "random", "search_rounds": 4},
    },
    "sdxl.json": {
        "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0", "torch_dtype": "fp16",
        "pipeline_call_args": {"height": 1024, "width": 1024, "negative_prompt": NEGATIVE},
        "verifier_args": {"name": "gemini", "max_new_tokens": 800, "choice_of_metric": "overall_score"},
        "search_args": {"search_method": "random", "search_rounds": 4},
    },
    "pixart_sigma.json": {
        "pretrained_model_name_or_path": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "torch_dtype": "fp16",
        "pipeline_call_args": {"height": 1024, "width": 1024},
        "verifier_args": {"name": "gemini", "max_new_tokens": 800, "choice_of_metric": "overall_score"},
        "search_args": {"search_method": "random", "search_rounds": 4},
    },
    "ltx_video.json": {
        "pretrained_model_name_or_path": "a-r-r-o-w/LTX-Video-0.9.1-diffusers", "torch_dtype": "bf16",
        "pipeline_call_args": {"height": 480, "width": 704, "num_frames": 161,
                               "negative_prompt": "worst quality, inconsistent motion, blurry, jittery, distorted",
                               "num_inference_steps": 50},
        "verifier_args": {"name": "laion_aesthetic", "choice_of_metric": "laion_aesthetic_score"},
        "search_args": {"search_method": "zero-order", "search_rounds": 4, "threshold": 0.95, "num_neighbors": 4},
        "export_args": {"fps": 24},
    },
    "wan.json": {
        "pretrained_model_name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "torch_dtype": "bf16",
        "pipeline_call_args": {"height": 480, "width": 832, "num_frames": 81, "guidance_scale": 5.0,
                               "negative_prompt": "Bright tones, overexposed, static, blurred details, subtitles",
                               "num_inference_steps": 50},
        "verifier_args": {"name": "laion_aesthetic", "choice_of_metric": "laion_aesthetic_score"},
        "search_args": {"search_method": "random", "search_rounds": 4},
        "export_args": {"fps": 15},
    },
}
TINY_OF = {"black-forest-labs/FLUX.1-dev": "tiny-flux", "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
           "stabilityai/stable-diffusion-xl-base-1.0": "sdxl", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "pixart-sigma",
           "a-r-r-o-w/LTX-Video-0.9.1-diffusers": "ltx-video", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan"}
SHRUNK = {"tiny-flux": {"height": 64, "width": 64}, "sd15": {"height": 32, "width": 32},
          "sdxl": {"height": 32, "width": 32}, "pixart-sigma": {"height": 128, "width": 128},
          "ltx-video": {"height": 32, "width": 32, "num_frames": 9}, "wan": {"height": 16, "width": 16, "num_frames": 9}}


def _tiny_folder(tiny: str) -> Path:
    from ttsf_core.pipelines.tiny import ensure_tiny_flux

    return ensure_tiny_flux() if tiny == "tiny-flux" else ensure_tiny(tiny)


@pytest.mark.parametrize("filename", list(TT_SCALE_FLUX_CONFIGS))
def test_tt_scale_flux_config_files_load_and_run(filename, tmp_path, monkeypatch):
    import huggingface_hub

    path = tmp_path / filename
    path.write_text(json.dumps(TT_SCALE_FLUX_CONFIGS[filename], indent=4))
    data = read_config_file(path)
    model = data["pretrained_model_name_or_path"]
    tiny = TINY_OF[model]

    # As the file is: the hub answers model_index.json (here from the tiny folder) and nothing else is read.
    def hub(repo_id, filename, subfolder=None, **_):
        assert repo_id == model
        return str(_tiny_folder(tiny) / (subfolder or "") / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    as_is = build_config(data)
    call = TT_SCALE_FLUX_CONFIGS[filename]["pipeline_call_args"]
    assert {k: v for k, v in as_is.pipeline_call_args.given().items()} == \
        {k: v for k, v in call.items() if k != "num_inference_steps"}
    default_steps = {"sd1.5.json": 50, "sdxl.json": 50, "pixart_sigma.json": 20}
    assert resolve(as_is).steps == call.get("num_inference_steps", default_steps.get(filename))
    # Then run on the tiny equivalent: model swapped for its folder, sizes and search shrunk, a local verifier.
    small = merge(data, {
        "pretrained_model_name_or_path": str(_tiny_folder(tiny)), "torch_dtype": "fp32", "device": "cpu",
        "pipeline_call_args": {**SHRUNK[tiny], "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats", "choice_of_metric": "overall_score"},
        "search_args": {"search_rounds": 1, **({"num_neighbors": 1} if data["search_args"]["search_method"] ==
                                               "zero-order" else {"initial_pool_size": 1})},
        "prompts": {"prompt": PROMPT}, "output_dir": str(tmp_path / "output"),
    })
    config = build_config(small)
    pipe = _pipe(tiny) if tiny != "tiny-flux" else None
    if pipe is None:
        from ttsf_core.pipelines import load_pipeline

        pipe = load_pipeline(config)
    prepared, outcome = runner.run(config, generator=CandidateGenerator(pipe, resolve(config)))
    outcome.raise_first()
    (record,) = outcome.records
    assert resolve_image(prepared.layout.record_path(PROMPT, 1), record.best_img_path).is_file()
    if tiny in VIDEO:
        fps = TT_SCALE_FLUX_CONFIGS[filename]["export_args"]["fps"]
        assert resolve(config).generation_identity["fps"] == fps


def test_path_search_config_is_refused_in_one_line(tmp_path):
    """tt-scale-flux's sdxl_path_search.json asks for a strategy ttsf does not have (yet)."""
    from ttsf_core.config import ConfigError

    path = tmp_path / "sdxl_path_search.json"
    path.write_text(json.dumps({
        "pretrained_model_name_or_path": str(ensure_tiny("sdxl")), "torch_dtype": "fp16",
        "pipeline_call_args": {"height": 1024, "width": 1024, "negative_prompt": NEGATIVE},
        "search_args": {"search_method": "path-search", "N": 4, "M": 8, "sigma_start": 0.11, "delta_b": 0.81,
                        "delta_f": 0.78, "L": 10},
    }))
    with pytest.raises(ConfigError) as error:
        resolve(build_config(read_config_file(path)))
    assert "search_args.search_method: received 'path-search', allowed: one of random, zero-order" in str(error.value)
