"""`ttsf run`'s flags: each one's field in RunConfig and its help (a strategy's own flags come from its
arguments model), how its value is named in --help, how flags become a config, and how an error line
names the flag a user typed."""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from ttsf_core.config import RunConfig, build_config, merge
from ttsf_core.config_files import read_config_file
from ttsf_core.model_defaults import DEFAULT_MODEL, MODEL_DEFAULTS
from ttsf_core.search import STRATEGIES
from ttsf_core.verifiers.base import METRIC_NAMES
from ttsf_core.verifiers.gemini_models import DEFAULT_GEMINI_MODEL

TINY_MODELS = tuple(model for model in MODEL_DEFAULTS if model.startswith("tiny-"))


def model_defaults(name: str) -> str:
    """What a call argument defaults to, said per model: "1024 for FLUX.1-dev, 128 for tiny-flux, ...;
    any other model: its pipeline's own" (MODEL_DEFAULTS, the one source of these defaults)."""
    values: dict[str, list[str]] = {}
    for model, defaults in MODEL_DEFAULTS.items():
        value = defaults.get("pipeline_call_args", {}).get(name)
        if value is not None:
            values.setdefault(f"{value:g}" if isinstance(value, float) else str(value), []).append(
                "FLUX.1-dev" if model == DEFAULT_MODEL else model)
    said = "; ".join(f"{value} for {', '.join(models)}" for value, models in values.items())
    return f"{said}; any other model: its pipeline's own" if said else "the pipeline's own"


# flag -> (path in RunConfig, help). Values reach pydantic as given, so every flag is validated,
# and reported, the same way as the same field in a config file.
RUN_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "prompt": (("prompts", "prompt"), "Search this one prompt (instead of a dataset)."),
    "num_prompts": (("prompts", "num_prompts"), "How many dataset prompts: a positive integer or 'all' [2]. "
                    "'None' is accepted with --prompt, as in tt-scale-flux."),
    "dataset": (("prompts", "dataset"), "Hub dataset id, or a local .txt/.csv/.jsonl/.parquet file "
                "[data-is-better-together/open-image-preferences-v1-binarized]."),
    "dataset_split": (("prompts", "dataset_split"), "Split of a hub dataset [train]."),
    "prompt_column": (("prompts", "prompt_column"), "Column holding prompts (hub, CSV, JSONL, parquet) [prompt]."),
    "model": (("pretrained_model_name_or_path",), "Diffusers pipeline: hub id, local folder, or an offline tiny "
              f"model for CPU runs ({', '.join(TINY_MODELS)}) [black-forest-labs/FLUX.1-dev]."),
    "torch_dtype": (("torch_dtype",), "bf16, fp16 or fp32 [bf16; the tiny models: fp32]."),
    "device": (("device",), "Device for the pipeline: auto, cuda, cuda:N, cpu, mps [auto]."),
    "height": (("pipeline_call_args", "height"), "Image height in pixels [" + model_defaults("height") + "]."),
    "width": (("pipeline_call_args", "width"), "Image width in pixels [" + model_defaults("width") + "]."),
    "num_inference_steps": (("pipeline_call_args", "num_inference_steps"),
                            "Denoising steps [" + model_defaults("num_inference_steps") + "]."),
    "guidance_scale": (("pipeline_call_args", "guidance_scale"), "Guidance scale [" + model_defaults("guidance_scale")
                       + "]."),
    "max_sequence_length": (("pipeline_call_args", "max_sequence_length"),
                            "Text encoder's max tokens [" + model_defaults("max_sequence_length") + "]."),
    "search_rounds": (("search_args", "search_rounds"), "Search rounds R; round r draws 2**r noises [4]."),
    "search_method": (("search_args", "search_method"), "; ".join(f"{name}: {cls.summary}" for name, cls in
                                                              STRATEGIES.items()) + " [random]."),
    # Each strategy's own arguments, from the model in its file (ttsf_core.search).
    **{name: (("search_args", name), field.description or "") for cls in STRATEGIES.values()
       for name, field in cls.Args.model_fields.items() if name in cls.Args.own},
    "draft_steps": (("search_args", "draft_steps"), "Cheap drafts: generate every candidate with this many steps "
                    "first, and only the best --draft_keep again at full steps [off]."),
    "draft_keep": (("search_args", "draft_keep"), "Drafts regenerated at full steps each round [2]."),
    "verifier_to_use": (("verifier_args", "name"), "gemini, qwen, openai, imagestats, clip, pickscore, "
                        "laion_aesthetic, image_reward, an installed plugin, or several comma-separated (an "
                        "ensemble) [gemini]."),
    "verifier_model": (("verifier_args", "model_name"), "The verifier's model [its own default; gemini: "
                       f"{DEFAULT_GEMINI_MODEL}]."),
    "verifier_thinking_level": (("verifier_args", "thinking_level"), "gemini: minimal, low, medium or high: how much "
                                "the model thinks before grading (thought tokens are billed as output) [the lowest "
                                "level the model takes]."),
    "verifier_media_resolution": (("verifier_args", "media_resolution"), "gemini: low, medium or high: the tokens an "
                                  "image costs (about 280/560/1120 on Gemini 3) [the model's own]."),
    "max_verifier_requests": (("budget", "max_verifier_requests"), "Stop each prompt before the first round that "
                              "would take the verifier requests this run makes past N (rounds in order; finished "
                              "rounds are kept) [no limit]."),
    "max_verifier_cost": (("budget", "max_verifier_cost_usd"), "The same, in US dollars at the price table's prices "
                          "(ttsf estimate shows them) [no limit]."),
    "nfe_budget": (("budget", "max_nfe"), "Denoiser evaluations the whole dataset may spend, recorded rounds "
                   "included: rounds stop where the next would go over [no limit]."),
    "allocation": (("budget", "allocation"), "uniform: every prompt's round 1, then round 2, ...; adaptive: round 1 "
                   "for every prompt, then each next round to the prompts expected to gain most per NFE "
                   "(README: Allocation across a dataset) [uniform]."),
    "plateau_rounds": (("budget", "plateau_rounds"), "adaptive: stop a prompt once its best rose by less than "
                       "--plateau_delta over its last K rounds [never]."),
    "plateau_delta": (("budget", "plateau_delta"), "adaptive: the rise --plateau_rounds asks for [0]."),
    "choice_of_metric": (("verifier_args", "choice_of_metric"),
                         "Metric that picks each round's best: one the verifier scores (VLM graders: "
                         f"{', '.join(METRIC_NAMES)}; clip: clip_score; an ensemble: ensemble) [its default]."),
    "ensemble": (("verifier_args", "ensemble"), "With several verifiers: rank (the unweighted mean of their ranks, "
                 "Ma et al.'s rule) or mean_score (the mean of their min-max scaled scores) [rank]."),
    "verifier_concurrency": (("verifier_args", "max_concurrency"), "Verifier requests in flight at once [8]."),
    "batch_size_for_img_gen": (("batch_size_for_img_gen",), "Candidates generated per pipeline call [4]."),
    "seed": (("seed",), "Base seed; every candidate's seed derives from it, the prompt, round, index [0]."),
    "output_dir": (("output_dir",), "Where run folders go [output]."),
    "prompts_per_batch": (("prompts_per_batch",), "Prompts per search-batch flow run [8]."),
    "attention_backend": (("attention_backend",), "diffusers' attention backend: native, _native_cudnn, flash "
                          "(flash-attn installed), ... (same pixels) [the model's own]."),
    "quantize": (("quantize",), "none, or fp8: float8 weights and activations of the denoiser (torchao; cards with "
                 "fp8, compute capability 8.9+; changes pixels, so a different run) [none]."),
    "dispatch": (("dispatch", "mode"), "local: batches one after another in this run's process; pool: each "
                 "batch a run of the search-batch deployment on a work pool (docs/scale-out.md) [local]."),
    "verifier_rpm": (("verifier_rpm",), "Verifier requests per minute, shared by all batches and workers "
                     "through a Prefect global concurrency limit [no cap]."),
    "output_url": (("output_url",), "Where OUTPUT_DIR is served over HTTP (e.g. by `ttsf serve`), so the Prefect "
                   "UI links full-size images [none: thumbnails only]."),
    "result_storage": (("result_storage",), "Where cached task results persist: a folder, or a Prefect "
                       "storage block slug like s3-bucket/name [OUTPUT_DIR/.prefect-results]."),
}
EXECUTORS = ("auto", "prefect", "threads")


def _flags_to_overrides(values: dict[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, value in values.items():
        if value is None or flag not in RUN_FLAGS:
            continue
        *parents, leaf = RUN_FLAGS[flag][0]
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return overrides


def _flag_heads() -> dict[str, str]:
    """Each name a message may give a flag's field by (its leaf, the flag, its dotted path) ->
    how an error line names it: `--flag (dotted.path)`."""
    paths = {flag: path for flag, (path, _) in RUN_FLAGS.items()} | {"use_low_gpu_vram": ("use_low_gpu_vram",)}
    return {head: f"--{flag} ({'.'.join(path)})" for flag, path in paths.items()
            for head in (path[-1], flag, ".".join(path))}


_FLAG_HEADS = _flag_heads()


def flag_names(line: str) -> str:
    """Name the flag a user typed next to the config field it sets."""
    head, sep, rest = line.partition(": ")
    if rest.startswith("received unknown field"):  # a key the config file misplaced: no flag set it
        return line
    return f"{_FLAG_HEADS[head]}: {rest}" if sep and head in _FLAG_HEADS else line


def config_from_options(options: dict[str, Any]):
    file_data = read_config_file(options["config"]) if options.get("config") else {}
    overrides = _flags_to_overrides(options)
    if options.get("use_low_gpu_vram"):
        overrides["use_low_gpu_vram"] = True
    for flag, field in (("compile_", "compile"), ("vae_tiling", "vae_tiling")):
        if options.get(flag):
            overrides[field] = True
    if options.get("prompt") is not None and options.get("num_prompts") is None:
        overrides.setdefault("prompts", {})["num_prompts"] = None  # one prompt: no dataset count
    return build_config(merge(file_data, overrides))


def metavar(path: tuple[str, ...]) -> str:
    """How `--help` names a flag's value, from its field's type: INTEGER, FLOAT, TEXT, PATH, a choice
    [a|b], or INTEGER|all. Flags still reach pydantic as text, so a bad value is one line like any other."""
    if path == ("search_args", "search_method"):
        return "[" + "|".join(STRATEGIES) + "]"
    model, info = RunConfig, None
    for name in path:
        info = model.model_fields.get(name) or next(  # a strategy's own argument
            cls.Args.model_fields[name] for cls in STRATEGIES.values() if name in cls.Args.model_fields)
        model = info.annotation
    names = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH", bool: "BOOLEAN"}
    parts = []
    for kind in _members(info.annotation):
        if get_origin(kind) is Literal:
            parts.append("|".join(map(str, get_args(kind))))
        elif kind is not type(None):
            parts.append(names.get(kind, "TEXT"))
    text = "|".join(dict.fromkeys(parts))
    return f"[{text}]" if all(get_origin(kind) is Literal for kind in _members(info.annotation)
                              if kind is not type(None)) else text


def _members(annotation) -> tuple:
    return get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
