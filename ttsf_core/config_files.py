"""Config files: JSON, TOML or YAML into the nested dict RunConfig validates (tt-scale-flux's JSON keys
included: its prompt-source keys sit at the top level)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from ttsf_core.config import ConfigError, PromptSource


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON, TOML or YAML config file into a nested dict (tt-scale-flux's JSON keys included)."""
    path = Path(path)
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None or not path.is_file():
        raise ConfigError(f"config: received {str(path)!r}, allowed: an existing .json, .toml, .yaml or .yml file")
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:  # JSON, TOML and decoding errors are ValueErrors
        detail = " ".join(str(error).split())  # YAML's spans several lines
        raise ConfigError(f"config: received {str(path)!r} (it could not be parsed: {detail}), allowed: "
                          f"a valid {path.suffix.lower().lstrip('.').upper()} file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: received {str(path)!r} (it holds a {type(data).__name__}), allowed: "
                          "a mapping of field names to values")
    return _lift_tt_scale_flux_keys(data)


def _load_yaml(text: str) -> Any:
    return yaml.safe_load(text) or {}  # an empty file sets nothing


_PARSERS = {".json": json.loads, ".toml": tomllib.loads, ".yaml": _load_yaml, ".yml": _load_yaml}


def _lift_tt_scale_flux_keys(data: dict[str, Any]) -> dict[str, Any]:
    """tt-scale-flux puts prompt-source keys at the top level; ours nest them under `prompts`."""
    data = dict(data)
    prompt_keys = set(PromptSource.model_fields) & set(data)
    if prompt_keys:
        prompts = dict(data.get("prompts") or {})
        prompts.update({key: data.pop(key) for key in prompt_keys})
        data["prompts"] = prompts
    return data
