"""Verifiers by name: the built-ins plus any installed under the `ttsf.verifiers` entry-point group,
and ensembles of them ("clip,image_reward,laion_aesthetic").

A verifier class is constructed as `cls(args: VerifierArgs)`. Construction must be cheap and check
what can be checked without loading a model (API key, model name); heavy loading happens on first use.
Its class attributes `metrics` and `default_metric` are read without constructing it.
"""

from __future__ import annotations

from ttsf_core.config import ConfigError, VerifierArgs
from ttsf_core.verifiers.base import Verifier, default_metric, verifier_metrics
from ttsf_core.verifiers.catalog import (
    BUILTIN_VERIFIERS,
    ENSEMBLE_METRIC,
    ENTRY_POINT_GROUP,
    available_verifiers,
    ensemble_metrics,
    member_names,
    verifier_class,
)
from ttsf_core.verifiers.ensemble import EnsembleVerifier

__all__ = ["BUILTIN_VERIFIERS", "ENSEMBLE_METRIC", "ENTRY_POINT_GROUP", "available_verifiers", "build_verifier",
           "check_metric", "check_settings_for", "default_metric_for", "ensemble_metrics", "grading_settings_for",
           "member_names", "metrics_for", "reads_rubric", "verifier_class"]


def metrics_for(name: str) -> list[str]:
    """Every metric --choice_of_metric may name for this verifier (or ensemble)."""
    if len(member_names(name)) > 1:
        return [ENSEMBLE_METRIC, *ensemble_metrics(name)[0]]
    return list(verifier_metrics(verifier_class(name)))


def reads_rubric(name: str) -> bool:
    """Whether a verifier (or an ensemble member) grades by the rubric (its class says `reads_rubric`)."""
    found = False
    for member in member_names(name):
        try:
            found |= bool(getattr(verifier_class(member), "reads_rubric", False))
        except ConfigError:
            continue  # an unknown name is reported where the verifier is built
    return found


def grading_settings_for(args: VerifierArgs) -> dict:
    """What a verifier (or each member of an ensemble) resolves and sends beyond its args, by its class's
    `grading_settings(args)` (no construction, no network): {"sent": {...}} for the grading identity,
    {} when it sends nothing beyond them."""
    members = member_names(args.name)
    found = {}
    for member in members:
        try:
            settings = getattr(verifier_class(member), "grading_settings", None)
        except ConfigError:
            continue  # an unknown name is reported where the verifier is built
        own = settings(args.model_copy(update={"name": member, "model_name": None})
                       if len(members) > 1 else args) if settings is not None else {}
        if own:
            found[member] = own
    if not found:
        return {}
    return {"sent": found[members[0]] if len(members) == 1 else found}


def check_settings_for(args: VerifierArgs) -> None:
    """Settings a verifier can refuse without being built (no key, no network): its class's
    `check_settings(args)`, for each member of an ensemble. Also refuses settings only some verifiers
    read (thinking level, media resolution) when none of the chosen ones does."""
    members = member_names(args.name)
    classes = [verifier_class(member) for member in members]
    for field, flag in (("thinking_level", "--verifier_thinking_level"),
                        ("media_resolution", "--verifier_media_resolution")):
        value = getattr(args, field)
        if value is not None and not any(getattr(cls, "takes_thinking", False) for cls in classes):
            raise ConfigError(f"{flag} (verifier_args.{field}): received {value!r} with verifier_args.name="
                              f"{args.name!r}, allowed: unset (only gemini takes it)")
    for member, cls in zip(members, classes):
        check = getattr(cls, "check_settings", None)
        if check is not None:
            check(args.model_copy(update={"name": member, "model_name": None}) if len(members) > 1 else args)


def default_metric_for(name: str) -> str | None:
    """The verifier's own default metric; None when the name is not a known verifier (reported later)."""
    try:
        return ENSEMBLE_METRIC if len(member_names(name)) > 1 else default_metric(verifier_class(name))
    except ConfigError:
        return None


def check_metric(args: VerifierArgs) -> None:
    """The chosen metric must be one the verifier scores (None: its default, always fine)."""
    allowed = metrics_for(args.name)
    if args.choice_of_metric is not None and args.choice_of_metric not in allowed:
        raise ConfigError(f"choice_of_metric: received {args.choice_of_metric!r}, allowed: one of "
                          f"{', '.join(allowed)} (the metrics of {args.name})")


def build_verifier(args: VerifierArgs) -> Verifier:
    check_settings_for(args)
    if len(member_names(args.name)) > 1:
        verifier = EnsembleVerifier(args)
    else:
        verifier = verifier_class(args.name)(args)
    if not isinstance(verifier, Verifier):
        raise ConfigError(f"verifier_to_use: {args.name!r} does not implement the Verifier protocol (name, score)")
    check_metric(args)
    return verifier
