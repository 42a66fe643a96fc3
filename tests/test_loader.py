import pytest

from ttsf_core.config import ConfigError, build_config
from ttsf_core.pipelines import loader


def test_low_vram_uses_diffusers_model_cpu_offload_not_a_device_shuffle(tiny_flux_dir, monkeypatch):
    from diffusers import DiffusionPipeline

    calls = []
    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload",
                        lambda self, device=None, **kw: calls.append(("offload", str(device))))
    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *a, **kw: calls.append(("to", a)) or self)
    config = build_config({"pretrained_model_name_or_path": "tiny-flux", "device": "cuda:0", "use_low_gpu_vram": True})
    loader.load_pipeline(config)
    assert calls == [("offload", "cuda:0")]


def test_the_pipeline_goes_to_the_configured_device(tiny_flux_dir, monkeypatch):
    from diffusers import DiffusionPipeline

    moved = []
    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *a, **kw: moved.append(a) or self)
    loader.load_pipeline(build_config({"pretrained_model_name_or_path": "tiny-flux", "device": "cuda:1"}))
    assert moved == [("cuda:1",)]


def test_resolution_multiple_comes_from_the_vae_config(tiny_flux_dir):
    # 4 VAE blocks: 8x downscale, times 2 for FLUX's 2x2 latent packing.
    assert loader.resolution_multiple(str(tiny_flux_dir)) == 16


def test_a_folder_that_is_not_a_pipeline_is_named(tmp_path):
    with pytest.raises(ConfigError, match="model: received .*allowed: a folder holding a diffusers model_index.json"):
        loader.resolution_multiple(str(tmp_path))
