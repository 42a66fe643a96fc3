"""`ttsf` command line. Flags keep tt-scale-flux's names where it had them; a config file sets any
field and flags override it. Every bad input is reported as one line before any model loads."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import click

# Library chatter (torchvision fallbacks, CLIP truncation) would drown the progress bar.
for _name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
    os.environ.setdefault(_name, "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from ttsf_core.config import DEFAULT_MODEL, MODEL_DEFAULTS, ConfigError, RunConfig, build_config, merge, read_config_file
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
    "initial_pool_size": (("search_args", "initial_pool_size"), "random: noises in round 1; doubles each round [2]."),
    "search_method": (("search_args", "search_method"), "random, or zero-order (a pivot and its neighbours each "
                      "round; the best neighbour becomes the next pivot) [random]."),
    "threshold": (("search_args", "threshold"), "zero-order: cosine similarity of each neighbour to the pivot [0.95]."),
    "num_neighbors": (("search_args", "num_neighbors"), "zero-order: neighbours graded each round [4]."),
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
EXECUTORS = ("prefect", "threads")


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


def _flag_names(line: str) -> str:
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


def fail(message: str, code: int = 2) -> None:
    for line in message.splitlines():
        click.echo(f"ttsf: error: {_flag_names(line)}", err=True)
    sys.exit(code)


class RunCommand(click.Command):
    """`ttsf run`, with click's own usage errors (unknown flag, flag without its value, stray argument)
    in the same one-line shape as every other bad input."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            extra = super().parse_args(ctx, args)
        except click.UsageError as error:
            fail(_usage_problem(self, error))
        if extra:
            fail(f"arguments: received {' '.join(extra)!r}, allowed: none (every input is a --flag)")
        return extra


def _usage_problem(command: click.Command, error: click.UsageError) -> str:
    if isinstance(error, click.NoSuchOption):
        close = ", ".join(error.possibilities or ()) or "the flags `ttsf run --help` lists"
        return f"flags: received unknown flag {error.option_name!r}, allowed: {close}"
    if not isinstance(error, click.BadOptionUsage):  # none other arises: every option takes a plain string
        raise error
    name = error.option_name
    if any(getattr(param, "is_flag", False) and name in param.opts for param in command.params):
        return f"{name.lstrip('-')}: received a value, allowed: {name} alone"
    return f"{name.lstrip('-')}: received nothing, allowed: a value after {name}"


def metavar(path: tuple[str, ...]) -> str:
    """How `--help` names a flag's value, from its field's type: INTEGER, FLOAT, TEXT, PATH, a choice
    [a|b], or INTEGER|all. Flags still reach pydantic as text, so a bad value is one line like any other."""
    model, info = RunConfig, None
    for name in path:
        info = model.model_fields[name]
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


def run_options(function):
    for flag in reversed(RUN_FLAGS):
        path, text = RUN_FLAGS[flag]
        function = click.option(f"--{flag}", flag, default=None, metavar=metavar(path), help=text)(function)
    function = click.option("--compile", "compile_", is_flag=True, default=False,
                            help="Regional torch.compile of the denoiser's repeated blocks (same pixels; compiles "
                                 "in seconds to a minute on first use).")(function)
    function = click.option("--vae_tiling", is_flag=True, default=False,
                            help="Decode in tiles (less memory at large sizes; changes pixels slightly).")(function)
    function = click.option("--use_low_gpu_vram", is_flag=True, default=False,
                            help="Diffusers' model CPU offload: each component on the GPU only while it runs.")(function)
    function = click.option("--config", "--pipeline_config_path", "config", default=None,
                            help="JSON, TOML or YAML file setting any field (tt-scale-flux configs load as they are); "
                                 "flags override it.")(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ttsf: inference-time scaling for text-to-image diffusion by searching over initial noises."""


@main.command("run", cls=RunCommand, context_settings={"allow_extra_args": True},
              short_help="Search noises per prompt, grade them, record each round's best.")
@run_options
@click.option("--executor", default="prefect", show_default=True, metavar="[" + "|".join(EXECUTORS) + "]",
              help=f"{' or '.join(EXECUTORS)}. prefect: the search-dataset flow, every job a task run (visible in "
                   "the Prefect UI); threads: the same search loop on local threads, no orchestrator.")
def run_command(executor: str, **options: Any) -> None:
    """Search noises for each prompt, grade every image, record each round's best."""
    from ttsf.cli_run import run_and_print

    if executor not in EXECUTORS:
        fail(f"executor: received {executor!r}, allowed: one of {', '.join(EXECUTORS)}")
    try:
        config = config_from_options(options)
    except ConfigError as error:
        fail(str(error))
    run_and_print(config, executor)


@main.command("estimate", cls=RunCommand, context_settings={"allow_extra_args": True},
              short_help="What `ttsf run` with these flags would spend, before it runs.")
@run_options
@click.option("--executor", default="prefect", show_default=True, help="As for `ttsf run` (ignored here).")
def estimate_command(executor: str, **options: Any) -> None:
    """Print what `ttsf run` with the same flags would spend (images, denoiser evaluations, verifier
    requests, tokens, cost), before anything runs: nothing is generated, graded or sent."""
    from ttsf.cli_estimate import estimate_and_print

    try:
        config = config_from_options(options)
    except ConfigError as error:
        fail(str(error))
    estimate_and_print(config)


@main.command("report", short_help="Rebuild the report of every run in OUTPUT_DIR from its records.")
@click.argument("output_dir", type=click.Path(path_type=Path))
def report_command(output_dir: Path) -> None:
    """Rebuild report.parquet/csv/html, the scaling curve, collages and the image archive of every run
    in OUTPUT_DIR (a run folder or a folder above runs), from the records on disk alone."""
    from ttsf.cli_run import report_and_print

    report_and_print(output_dir)


@main.command("regenerate", short_help="Remake a recorded image and check it is byte-identical.")
@click.argument("record", type=click.Path(path_type=Path))
@click.option("--index", type=int, default=None, help="Candidate index in the record [the round's best].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the PNG [./<noise tag>-st<steps>.png].")
@click.option("--device", default=None, help="Device for the pipeline [the run's].")
def regenerate_command(record: Path, index: int | None, out: Path | None, device: str | None) -> None:
    """Regenerate one candidate's image from its round RECORD alone (noise spec, steps, batch) and
    check it is byte-identical to the recorded image (exit 1 if not)."""
    from ttsf.cli_run import regenerate_and_print
    from ttsf_core.records import read_round_record

    if index is None:
        found = read_round_record(record) if record.is_file() else None
        index = found.best_index if found is not None else 0
    regenerate_and_print(record, index, out, device)


@main.command("serve", short_help="Serve OUTPUT_DIR over HTTP (full-size images for the UI).")
@click.argument("output_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
def serve_command(output_dir: Path, host: str, port: int) -> None:
    """Serve OUTPUT_DIR (images, records, reports) read-only over HTTP, so that links in the Prefect UI
    open full-size images: run with --output_url http://HOST:PORT/ pointing here."""
    from ttsf.cli_run import serve_output

    serve_output(output_dir, host, port)


@main.command("export", short_help="Write a run's records in tt-scale-flux's layout.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "format_", type=click.Choice(["tt-scale-flux"]), default="tt-scale-flux", show_default=True,
              help="tt-scale-flux: its flat folder of per-round JSON datapoints and best images, as its "
                   "process_results.py reads them.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The folder to write.")
def export_command(run_dir: Path, format_: str, out: Path) -> None:
    """Write RUN_DIR's records in another tool's layout (the run folder is left as it is)."""
    from ttsf_core.export import export_tt_scale_flux

    exported = export_tt_scale_flux(run_dir, out)
    click.echo(f"Exported {exported.rounds} rounds to {exported.folder}"
               + (f" ({exported.skipped} rounds without a gradeable image left out)" if exported.skipped else ""))


@main.command("migrate", short_help="Bring a run folder from before the image store up to date.")
@click.argument("old_run_dir", type=click.Path(path_type=Path))
def migrate_command(old_run_dir: Path) -> None:
    """Bring a run folder written before the image store (images beside their records) into the
    current layout: its images and grades go into the store, its records are rewritten beside them.
    Nothing is generated or graded; running the same command afterwards resumes from there."""
    from ttsf.cli_run import migrate_and_print

    migrate_and_print(old_run_dir)


if __name__ == "__main__":  # pragma: no cover
    main()
