"""What a worker process loads once and reuses across tasks and flow runs.

The pipeline and the verifier are never task inputs, cache keys or results: tasks look them up here
by the config fields that decide them. The pipeline is loaded by the first task that generates, so a
run with nothing left to generate never loads it.
"""

from __future__ import annotations

import threading

from ttsf_core.config import RunConfig, VerifierArgs
from ttsf_core.generate import CandidateGenerator
from ttsf_core.pipelines import load_pipeline
from ttsf_core.verifiers.base import Verifier
from ttsf_core.verifiers.registry import build_verifier

_lock = threading.Lock()
_pipelines: dict[tuple, object] = {}
_generators: dict[tuple, CandidateGenerator] = {}
_verifiers: dict[str, Verifier] = {}


def _pipeline_key(config: RunConfig) -> tuple:
    return (config.pretrained_model_name_or_path, config.torch_dtype, config.device, config.use_low_gpu_vram)


def generator_for(config: RunConfig) -> CandidateGenerator:
    key = (_pipeline_key(config), config.pipeline_call_args, config.batch_size_for_img_gen)
    with _lock:
        if key not in _generators:
            if key[0] not in _pipelines:
                _pipelines[key[0]] = load_pipeline(config)
            _generators[key] = CandidateGenerator(_pipelines[key[0]], config)
        return _generators[key]


def verifier_for(args: VerifierArgs) -> Verifier:
    key = args.model_dump_json()
    with _lock:
        if key not in _verifiers:
            _verifiers[key] = build_verifier(args)
        return _verifiers[key]


def pipelines_loaded() -> int:
    with _lock:
        return len(_pipelines)


def forget_all() -> None:
    """Drop loaded models (tests; a long-lived worker switching models)."""
    with _lock:
        _pipelines.clear()
        _generators.clear()
        _verifiers.clear()
