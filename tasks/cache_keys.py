"""Cache keys: what determines a task's output, and nothing else (no run id, no models, no clients)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ttsf_core.records import RunLayout


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def generation_key(_context, parameters: dict[str, Any]) -> str:
    """Model, pipeline arguments, prompt and candidate seeds decide the pixels; the run folder the paths."""
    config = parameters["config"]
    return "ttsf-generate-" + _digest({
        "model": config.pretrained_model_name_or_path,
        "torch_dtype": config.torch_dtype,
        "pipeline_call_args": config.pipeline_call_args.model_dump(),
        "prompt": parameters["prompt"],
        "search_round": parameters["search_round"],
        "seeds": parameters["seeds"],
        "run_dir": str(RunLayout(config).run_dir.resolve()),
    })


def verification_key(_context, parameters: dict[str, Any]) -> str:
    """The verifier's configuration, the prompt and the image's content decide its grades."""
    args = parameters["verifier_args"]
    return "ttsf-verify-" + _digest({
        "verifier": args.grading_identity(),
        "prompt": parameters["prompt"],
        "image_sha256": parameters["image_sha256"],
    })
