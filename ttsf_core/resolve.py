"""A config resolved: what a RunConfig leaves unset, decided, and what decides images, grades and records.

RunConfig is plain validated data. `resolve(config)` completes it once per process (cached by the
config's text): the pipeline class's default steps (read from model_index.json and diffusers' signature,
never weights), the verifier's default metric, the strategy's own arguments (validated by the model in
the strategy's file, a discriminated union on `search_method`), the rubric's text; and from these the
identities that name every folder:

- generation: the model, dtype and every call argument the config sets (unset ones are the model's own),
  a video's frame rate when set, fp8 and VAE tiling (they change pixels): the image store's folder;
- grading: the verifier's settings that decide a grade (not concurrency, timeouts or the endpoint), the
  rubric by its text, what the verifier sends beyond its args (a default model, Gemini's thinking and
  media settings), and how videos are graded when not the default: the grade store's folder;
- the run: both, the steps, the seed, the strategy's identity and the metric (never the round count):
  the run folder.

The engine, the store, the strategies and the records take only a ResolvedRun (ttsf_core.resolved,
below them all) and refuse a RunConfig; flows and tasks, which receive a config as a parameter, resolve
it once where they run (the cache makes that once per process) and hand the result down.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ttsf_core.config import TRANSPORT_OPTIONS, ConfigError, RunConfig, VerifierArgs, digest, merge
from ttsf_core.config_errors import format_validation_error
from ttsf_core.resolved import ResolvedRun
from ttsf_core.search import STRATEGIES, StrategyArgs, strategy_args

_lock = threading.Lock()
_resolved: dict[str, "ResolvedRun"] = {}


def resolve(config: RunConfig | ResolvedRun) -> ResolvedRun:
    """The resolved run of `config` (a ResolvedRun is returned as it is); ConfigError, in one line per
    problem, for what only resolving can find (a strategy's argument, drafts not cheaper than the
    steps, a rubric file that is not there, a model whose pipeline class cannot be read)."""
    if isinstance(config, ResolvedRun):
        return config
    key = config.model_dump_json()
    with _lock:
        found = _resolved.get(key)
    if found is None:
        found = _resolve(config)
        with _lock:  # the completed config resolves to the same run
            _resolved[key] = _resolved[found.config.model_dump_json()] = found
    return found


def _resolve(config: RunConfig) -> ResolvedRun:
    search = _strategy_args(config)
    completed = _completed(config, search)
    _check_drafts(completed)
    _check_path_search(completed, search)
    _check_rubric(completed.verifier_args)
    generation = generation_identity(completed)
    verifier = verifier_identity(completed.verifier_args)
    grading = {**verifier, **completed.export_args.grading_identity()}
    identity = {
        "generation": generation,
        "num_inference_steps": completed.pipeline_call_args.num_inference_steps,
        "seed": completed.seed,
        "search": search.identity(),
        "verifier": verifier,
        "choice_of_metric": completed.verifier_args.choice_of_metric,
        # Another way of grading videos grades (and so selects) differently.
        **completed.export_args.grading_identity(),
    }
    path_verifier = getattr(search, "path_verifier", None)
    path_run = None if path_verifier is None else resolve(_graded_by(completed, path_verifier))
    if path_run is not None:
        identity["search"]["path_verifier"] = {"name": path_verifier, **path_run.grading_identity,
                                               "choice_of_metric": path_run.metric}
    return ResolvedRun(completed, search, generation, grading, identity, digest(identity), path_run)


def _completed(config: RunConfig, search: StrategyArgs) -> RunConfig:
    """The config with what it left unset decided: steps, metric, the strategy's arguments in full."""
    update: dict[str, Any] = {"search_args": search.model_dump()}
    if config.pipeline_call_args.num_inference_steps is None:
        from ttsf_core.pipelines.signature import default_steps

        update["pipeline_call_args"] = {"num_inference_steps": default_steps(config.pretrained_model_name_or_path)}
    if config.verifier_args.choice_of_metric is None:
        from ttsf_core.verifiers.registry import default_metric_for

        metric = default_metric_for(config.verifier_args.name)
        if metric is not None:  # an unknown verifier is reported where the verifier is built
            update["verifier_args"] = {"choice_of_metric": metric}
    data = merge(config.model_dump(), update)
    data["search_args"] = update["search_args"]  # the strategy's own, not merged with another's
    return RunConfig.model_validate(data)


def _strategy_args(config: RunConfig) -> StrategyArgs:
    """search_args validated by its strategy's own model. A field of another strategy left at that
    strategy's default is dropped (config.json files of earlier versions spell out every strategy's
    fields); one set to something else is refused, saying whose it is."""
    data = config.search_args.model_dump()
    method = data.get("search_method")
    if method not in STRATEGIES:
        raise ConfigError(f"search_args.search_method: received {method!r}, allowed: one of {', '.join(STRATEGIES)}")
    own = STRATEGIES[method].Args.model_fields
    for name in list(data):
        if name in own:
            continue
        owners = [cls for cls in STRATEGIES.values() if name in cls.Args.model_fields]
        if owners and all(data[name] == cls.Args.model_fields[name].default for cls in owners):
            del data[name]
        elif owners:
            raise ConfigError(f"search_args.{name}: received {data[name]!r} with search_method {method!r}, allowed: "
                              f"unset ({name} belongs to {', '.join(cls.name for cls in owners)}; {method} takes "
                              f"{', '.join(own)})")
    try:
        return strategy_args(data)
    except ValidationError as error:
        lines = format_validation_error(error, STRATEGIES[method].Args).splitlines()
        raise ConfigError("\n".join(f"search_args.{line}".replace("(did you mean ", "(did you mean search_args.")
                                    for line in lines)) from None


def _check_drafts(config: RunConfig) -> None:
    draft, full = config.search_args.draft_steps, config.pipeline_call_args.num_inference_steps
    if draft is not None and draft >= full:
        raise ConfigError(f"search_args.draft_steps: received {draft}, allowed: an integer >= 1 and < "
                          f"pipeline_call_args.num_inference_steps ({full})")


def _graded_by(config: RunConfig, verifier: str) -> RunConfig:
    """The config with `verifier` (at its own defaults, on the run verifier's device) grading instead."""
    data = config.model_dump()
    data["verifier_args"] = {"name": verifier, "device": config.verifier_args.device}
    data["search_args"]["path_verifier"] = None
    return RunConfig.model_validate(data)


def _check_path_search(config: RunConfig, search: StrategyArgs) -> None:
    """A search on the denoising path drives the schedule itself: its shares must fit the steps, and the
    config cannot set the sigmas."""
    check = getattr(search, "check_steps", None)
    if check is None:
        return
    problem = check(config.pipeline_call_args.num_inference_steps)
    if problem is not None:
        raise ConfigError(f"search_args.{problem}")
    if "sigmas" in config.pipeline_call_args.given():
        raise ConfigError(f"pipeline_call_args.sigmas: received {config.pipeline_call_args.given()['sigmas']!r} with "
                          f"search_method {search.search_method!r}, allowed: unset ({search.search_method} starts "
                          "pipeline calls part way through the pipeline's own sigmas)")


def _check_rubric(args: VerifierArgs) -> None:
    if args.prompt_path is not None and not Path(args.prompt_path).is_file():
        raise ConfigError(f"verifier_args.prompt_path: received {args.prompt_path!r}, allowed: an existing text file "
                          "holding a grading rubric")


def generation_identity(config: RunConfig) -> dict[str, Any]:
    """What decides an image's pixels besides its noise and its steps (both part of its file name)."""
    identity = {"model": config.pretrained_model_name_or_path, "torch_dtype": config.torch_dtype,
                **config.pipeline_call_args.given()}
    if config.export_args.fps is not None:
        identity["fps"] = config.export_args.fps
    if config.quantize != "none":
        identity["quantize"] = config.quantize
    if config.vae_tiling:
        identity["vae_tiling"] = True
    return identity


def verifier_identity(args: VerifierArgs) -> dict[str, Any]:
    """What decides a grade: not concurrency, timeouts or where the API is reached; the rubric by its
    text (an edited rubric file grades anew); what the verifier sends beyond its args."""
    from ttsf_core.verifiers.registry import grading_settings_for, reads_rubric

    options = {k: v for k, v in args.options.items() if k not in TRANSPORT_OPTIONS}
    identity = {"name": args.name, "model_name": args.model_name, "max_new_tokens": args.max_new_tokens,
                "options": options}
    if args.prompt_path is not None or reads_rubric(args.name):
        identity["rubric_sha256"] = hashlib.sha256(_rubric_bytes(args)).hexdigest()
    if args.seed is not None:
        identity["seed"] = args.seed
    return identity | grading_settings_for(args)


def _rubric_bytes(args: VerifierArgs) -> bytes:
    if args.prompt_path is not None:
        return Path(args.prompt_path).read_bytes()
    from ttsf_core.verifiers.rubric import load_rubric

    return load_rubric().encode("utf-8")


def forget() -> None:
    """Drop the cache (tests that change what a resolution reads, like a rubric file)."""
    with _lock:
        _resolved.clear()
