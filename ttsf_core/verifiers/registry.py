"""Verifiers by name: the built-ins plus any installed under the `ttsf.verifiers` entry-point group.

A verifier class is constructed as `cls(args: VerifierArgs)`. Construction must be cheap and check
what can be checked without loading a model (API key, model name); heavy loading happens on first use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ttsf_core.config import ConfigError, VerifierArgs
from ttsf_core.verifiers.base import Verifier

ENTRY_POINT_GROUP = "ttsf.verifiers"
BUILTIN_VERIFIERS: dict[str, str] = {
    "gemini": "ttsf_core.verifiers.gemini:GeminiVerifier",
    "qwen": "ttsf_core.verifiers.qwen:QwenVerifier",
    "imagestats": "ttsf_core.verifiers.imagestats:ImageStatsVerifier",
}


def available_verifiers() -> dict[str, str]:
    """name -> "module:attribute" for every verifier this installation can build."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN_VERIFIERS}


def verifier_class(name: str) -> type:
    targets = available_verifiers()
    if name not in targets:
        raise ConfigError(
            f"verifier_to_use: received {name!r}, allowed: {', '.join(sorted(targets))} "
            f"(or a verifier installed under the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    module_name, _, attribute = targets[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_verifier(args: VerifierArgs) -> Verifier:
    verifier = verifier_class(args.name)(args)
    if not isinstance(verifier, Verifier):
        raise ConfigError(f"verifier_to_use: received {args.name!r} (it does not implement the Verifier protocol), "
                          "allowed: a verifier with a name and a score method")
    return verifier
