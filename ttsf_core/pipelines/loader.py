"""Load any diffusers text-to-image pipeline by hub id or local folder, with dtype and device."""

from __future__ import annotations

import json
from pathlib import Path

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.pipelines.tiny import TINY_FLUX_NAME, ensure_tiny_flux

# torch is imported inside the functions that need it: checking a config (or finding a run already
# finished) never pays for importing it.


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def resolve_model_path(name: str) -> str:
    """`tiny-flux` builds (once) and returns the offline tiny FLUX folder; anything else as given."""
    return str(ensure_tiny_flux()) if name == TINY_FLUX_NAME else name


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

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


def check_devices(config: RunConfig) -> None:
    """Each device a config names must exist here (before anything is loaded onto it)."""
    for field, device in (("device", config.device), ("verifier_args.device", config.verifier_args.device)):
        if device is None or device in ("auto", "cpu"):
            continue
        problem = _device_problem(device)
        if problem:
            raise ConfigError(f"{field}: received {device!r} ({problem}), allowed: auto, cpu{_visible_devices()}")


def _device_problem(device: str) -> str | None:
    import torch

    if device == "mps":
        available = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        return None if available else "no Apple GPU is visible here"
    if not torch.cuda.is_available():
        return "no CUDA device is visible here"
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    return None if index < count else f"only {count} CUDA device(s) are visible"


def _visible_devices() -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "".join(f", cuda:{index}" for index in range(count))


def prompt_length_warnings(config: RunConfig, prompts: list[str]) -> list[str]:
    """Prompts the T5 encoder will cut at max_sequence_length tokens (the verifier grades the full
    text). Only prompts long enough to possibly exceed it are tokenized; the tokenizer, not the
    model, is loaded, and not at all when no prompt is that long or it cannot be read offline."""
    limit = config.pipeline_call_args.max_sequence_length
    suspects = [(index, prompt) for index, prompt in enumerate(prompts) if len(prompt) >= limit - 1]
    if not suspects:
        return []
    tokenizer = _long_text_tokenizer(resolve_model_path(config.pretrained_model_name_or_path))
    if tokenizer is None:
        return []
    warnings = []
    for index, prompt in suspects:
        tokens = len(tokenizer(prompt).input_ids)
        if tokens > limit:
            warnings.append(f"prompt {index} is {tokens} tokens long, max_sequence_length is {limit}: the text "
                            f"encoder reads its first {limit} tokens while the verifier grades the whole prompt")
    return warnings


def _long_text_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    for subfolder in ("tokenizer_2", "tokenizer"):
        try:
            return AutoTokenizer.from_pretrained(model_path, subfolder=subfolder)
        except (OSError, ValueError):  # not in this model, or not cached offline
            continue
    return None


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
    pipe = DiffusionPipeline.from_pretrained(path, dtype=torch_dtype(config.torch_dtype))
    device = pick_device(config.device)
    if config.use_low_gpu_vram and device != "cpu":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
