"""What a worker process loads once and reuses across tasks and flow runs.

The pipeline and the verifier are never task inputs, cache keys or results: tasks look them up here
by the config fields that decide them. The pipeline is loaded by the first task that generates, so a
run with nothing left to generate never loads it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ttsf_core.resolve import resolve
from ttsf_core.config import RunConfig, VerifierArgs
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.pipelines import load_pipeline
from ttsf_core.verifiers.base import Verifier
from ttsf_core.verifiers.registry import build_verifier

if TYPE_CHECKING:
    from ttsf_core.usecases.runner import PreparedRun

_lock = threading.Lock()
_pipelines: dict[tuple, object] = {}
_generators: dict[tuple, CandidateGenerator] = {}
_verifiers: dict[str, Verifier] = {}
_prepared: dict[str, "PreparedRun"] = {}


def _pipeline_key(config: RunConfig) -> tuple:
    """Everything load_pipeline decides the loaded pipeline by: the model, dtype, device, offload, and
    every speed option it applies (two configs that differ in one get two pipelines)."""
    return (config.pretrained_model_name_or_path, config.torch_dtype, config.device, config.use_low_gpu_vram,
            config.quantize, config.vae_tiling, config.compile, config.attention_backend)


def generator_for(config: RunConfig) -> CandidateGenerator:
    key = (_pipeline_key(config), config.pipeline_call_args, config.batch_size_for_img_gen)
    with _lock:
        if key not in _generators:
            if key[0] not in _pipelines:
                _pipelines[key[0]] = load_pipeline(config)
            _generators[key] = CandidateGenerator(_pipelines[key[0]], resolve(config))
        return _generators[key]


def adopt(config: RunConfig, prepared: "PreparedRun") -> None:
    """What `ttsf run` prepared (verifier built, its access checked), handed to the flow it starts in this
    process for `config`: the flow and its tasks use it rather than preparing and building again."""
    with _lock:
        _prepared[config.model_dump_json()] = prepared
        _verifiers[prepared.config.verifier_args.model_dump_json()] = prepared.verifier
        if prepared.path_verifier is not None:
            _verifiers[prepared.run.path_run.config.verifier_args.model_dump_json()] = prepared.path_verifier


def prepared_for(config: RunConfig) -> "PreparedRun | None":
    with _lock:
        return _prepared.get(config.model_dump_json())


def verifier_for(args: VerifierArgs) -> Verifier:
    key = args.model_dump_json()
    with _lock:
        if key not in _verifiers:
            _verifiers[key] = build_verifier(args)
        return _verifiers[key]


def pipelines_loaded() -> int:
    with _lock:
        return len(_pipelines)
