"""Load any diffusers text-to-image (or text-to-video) pipeline by hub id or local folder, with dtype and device."""

from __future__ import annotations


from ttsf_core.devices import device_problem, pick_device, visible_devices
from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.pipelines.signature import check_call_args, pipeline_class_name, read_component_config
from ttsf_core.pipelines.speed import apply_speed_options
from ttsf_core.pipelines.tiny import ensure_tiny_model

# torch is imported inside the functions that need it: checking a config (or finding a run already
# finished) never pays for importing it.


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def resolve_model_path(name: str) -> str:
    """A tiny model's name (`tiny-flux`, `tiny-flux2`, ...) builds (once) and returns its offline folder;
    anything else (a hub id, a local folder) as given."""
    from ttsf_core.pipelines.families import family_of_tiny

    return str(ensure_tiny_model(name)) if family_of_tiny(name) is not None else name


def _read_component_config(model_path: str, subfolder: str, filename: str) -> dict | None:
    return read_component_config(model_path, subfolder, filename)


def resolution_multiple(model_path: str, call_args: dict | None = None) -> int:
    """The multiple height and width must be for this model's pipeline (its family's rule over the VAE
    and denoiser configs, e.g. the VAE downscale, times 2 where FLUX packs latents)."""
    from ttsf_core.pipelines.families import GENERIC, family_of

    class_name = pipeline_class_name(model_path)
    family = family_of(class_name)

    def read(subfolder: str) -> dict:
        return _read_component_config(model_path, subfolder, "config.json") or {}

    multiple = family.multiple(read, call_args or {})
    if family is GENERIC and "Flux" in class_name:  # FLUX variants ttsf has no family for: packed 2x2
        multiple *= 2
    return multiple


def check_devices(config: RunConfig) -> None:
    """Each device a config names must exist here (before anything is loaded onto it)."""
    for field, device in (("device", config.device), ("verifier_args.device", config.verifier_args.device)):
        if device is None or device in ("auto", "cpu"):
            continue
        problem = device_problem(device)
        if problem:
            raise ConfigError(f"{field}: received {device!r} ({problem}), allowed: auto, cpu{visible_devices()}")


def prompt_length_warnings(config: RunConfig, prompts: list[str]) -> list[str]:
    """Prompts the text encoder will cut at max_sequence_length tokens (the verifier grades the full
    text). Only prompts long enough to possibly exceed it are tokenized; the tokenizer, not the
    model, is loaded, and not at all when no prompt is that long or it cannot be read offline."""
    limit = config.pipeline_call_args.max_sequence_length
    path = None
    if limit is None:  # the pipeline's own default, or (CLIP-only pipelines) the tokenizer's length
        path = resolve_model_path(config.pretrained_model_name_or_path)
        from ttsf_core.pipelines.signature import call_signature

        limit = call_signature(pipeline_class_name(path)).defaults.get("max_sequence_length")
    suspects = [(index, prompt) for index, prompt in enumerate(prompts) if limit is None or len(prompt) >= limit - 1]
    if not suspects:
        return []
    tokenizer = _long_text_tokenizer(path or resolve_model_path(config.pretrained_model_name_or_path))
    if tokenizer is None:
        return []
    if limit is None:
        limit = getattr(tokenizer, "model_max_length", None)
        if not isinstance(limit, int) or limit > 100_000:  # transformers' "no limit" sentinel
            return []
        suspects = [(index, prompt) for index, prompt in suspects if len(prompt) >= limit - 1]
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
    """The call arguments against the pipeline class's __call__, then height and width against the
    model's multiple (only those given: unset ones are the pipeline's own, valid by construction)."""
    from ttsf_core.pipelines.families import family_of

    path = resolve_model_path(config.pretrained_model_name_or_path)
    class_name = pipeline_class_name(path)
    signature = check_call_args(config, class_name)
    given = config.pipeline_call_args.given()
    family_of(class_name).check({**signature.defaults, **given})
    multiple = resolution_multiple(path, {**signature.defaults, **given})
    for field in ("height", "width"):
        value = given.get(field)
        if value is not None and value % multiple:
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
    apply_speed_options(pipe, config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
