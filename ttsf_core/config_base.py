"""What every part of the config is made of: frozen models that refuse unknown fields and booleans where
numbers belong, the one error type of bad input, the device rule, a stable digest, a deep merge."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ttsf_core.config_errors import _kind, _leaf_types


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info) -> Any:
        # pydantic reads true as 1: YAML's `search_rounds: true` would run one round.
        if isinstance(value, bool) and bool not in _leaf_types(cls.model_fields[info.field_name].annotation):
            raise ValueError("allowed: " + _kind(cls.model_fields[info.field_name].annotation))
        return value


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICES_ALLOWED = "auto, cpu, cuda, cuda:N or mps"


def _device(value: Any) -> Any:
    if isinstance(value, str) and not DEVICE_PATTERN.match(value.strip().lower()):
        raise ValueError(f"allowed: {DEVICES_ALLOWED}")
    return value.strip().lower() if isinstance(value, str) else value


def digest(payload: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-able payload (sorted keys): names folders and cache entries."""
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


class ConfigError(ValueError):
    """A bad input, with one line per problem naming the field, what was received and what is allowed."""


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` (e.g. CLI flags) over `base` (e.g. a config file)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
