"""What a model's pipeline class accepts, read without loading any weights.

The class is model_index.json's `_class_name` (a local folder's file, or a few KB downloaded from the
hub); its `__call__` signature says which keyword arguments a config may set and what the pipeline
does when one is not set. Signatures are kept per diffusers version in TTSF_CACHE_DIR, so checking a
config does not import torch and diffusers again once a class has been seen.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ttsf_core.config import RESERVED_CALL_ARGS, ConfigError, RunConfig
from ttsf_core.config_errors import shown

_lock = threading.Lock()
_signatures: dict[str, "CallSignature"] = {}


@dataclass(frozen=True)
class CallSignature:
    class_name: str
    names: tuple[str, ...]  # the keyword parameters of __call__ (not a catch-all **kwargs)
    defaults: dict[str, Any] = field(default_factory=dict)  # those with a plain (JSON) default value

    def settable(self) -> tuple[str, ...]:
        return tuple(name for name in self.names if name not in RESERVED_CALL_ARGS)


def read_component_config(model_path: str, subfolder: str, filename: str) -> dict | None:
    """A pipeline folder's JSON (model_index.json, or a component's config.json), local or from the hub;
    None when a local folder lacks it."""
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
                          "folder, a reachable hub id, or a tiny model (tiny-flux, tiny-flux2, ...)") from None


def pipeline_class_name(model: str) -> str:
    """The diffusers pipeline class a model loads as (model_index.json's `_class_name`)."""
    from ttsf_core.pipelines.families import family_of_tiny

    tiny = family_of_tiny(model)
    if tiny is not None:  # an offline tiny model: its class is known before it is built
        return tiny.classes[0]
    index = read_component_config(model, "", "model_index.json")
    if index is None or not isinstance(index.get("_class_name"), str):
        raise ConfigError(f"model: received {model!r}, allowed: a folder holding a diffusers model_index.json")
    return index["_class_name"]


def call_signature(class_name: str) -> CallSignature:
    """The `__call__` signature of diffusers' `class_name` (cached in memory and on disk)."""
    with _lock:
        if class_name in _signatures:
            return _signatures[class_name]
        cache = _cache_path()
        stored = _read_cache(cache)
        if class_name in stored:
            entry = stored[class_name]
            signature = CallSignature(class_name, tuple(entry["names"]), dict(entry["defaults"]))
        else:
            signature = signature_of(_diffusers_class(class_name))
            stored[class_name] = {"names": list(signature.names), "defaults": signature.defaults}
            _write_cache(cache, stored)
        _signatures[class_name] = signature
        return signature


def signature_of(pipeline_class: type) -> CallSignature:
    names, defaults = [], {}
    for name, parameter in inspect.signature(pipeline_class.__call__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        names.append(name)
        if parameter.default is not parameter.empty:
            try:
                json.dumps(parameter.default)
            except (TypeError, ValueError):
                continue
            defaults[name] = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
    return CallSignature(pipeline_class.__name__, tuple(names), defaults)


def default_steps(model: str) -> int:
    """The denoising steps a model's pipeline takes when none are given."""
    class_name = pipeline_class_name(model)
    steps = call_signature(class_name).defaults.get("num_inference_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"pipeline_call_args.num_inference_steps: received None ({class_name}.__call__ has no default "
                          "step count), allowed: an integer >= 1")
    return steps


def check_call_args(config: RunConfig, class_name: str | None = None,
                    signature: CallSignature | None = None) -> CallSignature:
    """Every call argument the config sets must be a keyword of the pipeline's __call__."""
    class_name = class_name or pipeline_class_name(config.pretrained_model_name_or_path)
    signature = signature or call_signature(class_name)
    arguments = {**config.pipeline_call_args.given(),
                 "num_inference_steps": config.pipeline_call_args.num_inference_steps}
    for name, value in arguments.items():
        if name not in signature.names:
            raise ConfigError(f"pipeline_call_args.{name}: received {shown(value)}, allowed: arguments of "
                              f"{class_name}.__call__: {', '.join(signature.settable())}")
    return signature


def _diffusers_class(class_name: str) -> type:
    import diffusers

    found = getattr(diffusers, class_name, None)
    if not isinstance(found, type) or not callable(getattr(found, "__call__", None)):
        raise ConfigError(f"model: received a model whose model_index.json names {class_name!r}, allowed: a pipeline "
                          f"class of diffusers {diffusers.__version__}")
    return found


def _cache_path() -> Path:
    root = os.environ.get("TTSF_CACHE_DIR") or Path.home() / ".cache" / "ttsf"
    return Path(root) / "call-signatures" / f"diffusers-{metadata.version('diffusers')}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    from ttsf_core.storage.files import write_json

    try:
        write_json(path, data)
    except OSError:  # a read-only cache only costs the import next time
        pass
