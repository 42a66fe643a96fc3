"""Load any diffusers text-to-image pipeline by hub id or local folder, with dtype and device."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.pipelines.tiny import TINY_FLUX_NAME, ensure_tiny_flux

TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_model_path(name: str) -> str:
    """`tiny-flux` builds (once) and returns the offline tiny FLUX folder; anything else as given."""
    return str(ensure_tiny_flux()) if name == TINY_FLUX_NAME else name


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _read_component_config(model_path: str, subfolder: str, filename: str) -> dict | None:
    local = Path(model_path) / subfolder / filename
    if local.is_file():
        return json.loads(local.read_text())
    if Path(model_path).exists():
        return None
    from huggingface_hub import hf_hub_download  # a few KB of config, not weights

    try:
        return json.loads(Path(hf_hub_download(model_path, filename, subfolder=subfolder or None)).read_text())
    except Exception as error:  # noqa: BLE001 - any hub failure is reported as an unreadable model
        raise ConfigError(f"model: received {model_path!r} (unreadable: {type(error).__name__}), allowed: a diffusers "
                          "folder, a reachable hub id, or 'tiny-flux'") from None


def resolution_multiple(model_path: str) -> int:
    """The multiple height and width must be: the VAE downscale, times 2 where latents are packed."""
    index = _read_component_config(model_path, "", "model_index.json")
    if index is None:
        raise ConfigError(f"model: received {model_path!r}, allowed: a folder holding a diffusers model_index.json")
    vae = _read_component_config(model_path, "vae", "config.json") or {}
    scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    packs = "Flux" in str(index.get("_class_name", ""))
    return scale * 2 if packs else scale


def check_resolution(config: RunConfig) -> None:
    path = resolve_model_path(config.pretrained_model_name_or_path)
    multiple = resolution_multiple(path)
    for field in ("height", "width"):
        value = getattr(config.pipeline_call_args, field)
        if value % multiple:
            raise ConfigError(f"{field}: received {value}, allowed: a positive multiple of {multiple} for this model")


def load_pipeline(config: RunConfig):
    """The pipeline on its device; with use_low_gpu_vram, diffusers' model CPU offload instead."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from diffusers import DiffusionPipeline

    # Weight-loading bars interleave with run progress and flood worker logs in batch jobs.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    path = resolve_model_path(config.pretrained_model_name_or_path)
    pipe = DiffusionPipeline.from_pretrained(path, dtype=TORCH_DTYPE[config.torch_dtype])
    device = pick_device(config.device)
    if config.use_low_gpu_vram and device != "cpu":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
