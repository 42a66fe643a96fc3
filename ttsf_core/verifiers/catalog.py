"""Verifiers by name: the built-ins and any installed under the `ttsf.verifiers` entry-point group, and
how an ensemble's name ("clip,image_reward") and metrics are read. Below the registry and the ensemble
(both import it; it imports neither)."""

from __future__ import annotations

import functools
import importlib
import sys
from importlib.metadata import entry_points

from ttsf_core.config import ConfigError
from ttsf_core.verifiers.base import default_metric, verifier_metrics

ENTRY_POINT_GROUP = "ttsf.verifiers"
BUILTIN_VERIFIERS: dict[str, str] = {
    "gemini": "ttsf_core.verifiers.gemini:GeminiVerifier",
    "qwen": "ttsf_core.verifiers.qwen:QwenVerifier",
    "openai": "ttsf_core.verifiers.openai_compat:OpenAIVerifier",
    "imagestats": "ttsf_core.verifiers.imagestats:ImageStatsVerifier",
    "clip": "ttsf_core.verifiers.clip:ClipScoreVerifier",
    "pickscore": "ttsf_core.verifiers.clip:PickScoreVerifier",
    "laion_aesthetic": "ttsf_core.verifiers.aesthetic:LaionAestheticVerifier",
    "image_reward": "ttsf_core.verifiers.image_reward:ImageRewardVerifier",
}
ENSEMBLE_METRIC = "ensemble"


def available_verifiers() -> dict[str, str]:
    """name -> "module:attribute" for every verifier this installation can build."""
    return {**_installed_verifiers(tuple(sys.path)), **BUILTIN_VERIFIERS}


@functools.lru_cache(maxsize=8)
def _installed_verifiers(search_path: tuple[str, ...]) -> dict[str, str]:
    # entry_points() reads every installed distribution's metadata (~50 ms on a 2-core VM), and every
    # round record's identity asks which verifiers read the rubric: scan once per import path.
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def member_names(name: str) -> list[str]:
    return [part.strip() for part in name.split(",") if part.strip()]


def verifier_class(name: str) -> type:
    targets = available_verifiers()
    if name not in targets:
        raise ConfigError(
            f"verifier_to_use: received {name!r}, allowed: {', '.join(sorted(targets))} "
            f"(or a verifier installed under the {ENTRY_POINT_GROUP!r} entry-point group, or several "
            "separated by commas: an ensemble)"
        )
    module_name, _, attribute = targets[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"verifier_to_use: received {name!r} (it needs {error.name or error}, which is not "
                          "installed), allowed: a verifier whose packages are installed") from None
    return getattr(module, attribute)


def ensemble_metrics(name: str) -> tuple[list[str], list[str]]:
    """(every metric an ensemble's grades hold, each member's default metric), members' metrics named
    `member:metric` where two members share a name (two VLM graders both score overall_score)."""
    members = member_names(name)
    own = {member: verifier_metrics(verifier_class(member)) for member in members}
    seen: dict[str, int] = {}
    for metrics in own.values():
        for metric in metrics:
            seen[metric] = seen.get(metric, 0) + 1
    named = {member: {m: (f"{member}:{m}" if seen[m] > 1 else m) for m in metrics} for member, metrics in own.items()}
    every = [renamed for member in members for renamed in named[member].values()]
    primaries = [named[member][default_metric(verifier_class(member))] for member in members]
    return every, primaries
