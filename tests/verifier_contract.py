"""The contract every verifier keeps (diffusers' PipelineTesterMixin idea, for verifiers).

    from verifier_contract import check_contract

    grades = check_contract(make_verifier, prompt, images)

`make_verifier(options=None)` builds the verifier under test; given a dict, it builds the same verifier
with those options merged into its own (the contract passes `bad_options` that way). `images` are
PIL images the verifier tells apart (at least two grade differently, so the order checks mean
something). Keyword arguments, all optional:

    bad_options  options the verifier must refuse at construction with VerifierConfigError naming
                 each key (default {"no_such_option": 1}); None skips the check (a verifier that
                 takes no options)
    input_error  the exception type a non-PIL image must raise (default ValueError, the built-ins')
    tolerance    |batched - one at a time| and |permuted - in order| allowed per score (default: the
                 verifier's `score_tolerance` attribute, else 0: exact)

It asserts, and returns the first call's grades:
  - the metrics are declared on the CLASS (read without constructing it, as the registry does:
    registry.metrics_for(name) for a registered name or an ensemble, else the class's `metrics`), and
    the default metric is one of them;
  - one Grades per image, in input order, holding the declared metrics (an ensemble's "ensemble" is
    computed at selection, so its grades hold every member's metrics) and only those, all finite;
  - deterministic: the same call twice gives the same scores;
  - order: the images in another order give the same grades, in that order (within `tolerance`);
  - batching: each image alone gives the same grades as in the batch (within `tolerance`);
  - `score_partial`, where the verifier has it, agrees with `score`;
  - an empty list gives [];
  - a non-PIL image raises `input_error` (never returns a None), and bad options raise
    VerifierConfigError naming them.

The signature above is stable: tests of other verifiers (tests/test_openai.py) call it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pytest
from PIL import Image

from ttsf_core.config import ConfigError
from ttsf_core.verifiers.base import Grades, VerifierConfigError, default_metric, verifier_metrics
from ttsf_core.verifiers.registry import ENSEMBLE_METRIC, member_names, metrics_for

DEFAULT_BAD_OPTIONS = {"no_such_option": 1}


def declared_metrics(verifier: Any) -> tuple[list[str], str]:
    """(the metrics, the default metric) as declared on the class, without constructing anything."""
    cls = type(verifier)
    name = getattr(verifier, "name", None) or getattr(cls, "name", None)
    assert isinstance(name, str) and name, f"{cls.__name__} has no `name`"
    try:
        metrics = metrics_for(name)  # registered (built-in or entry point) or an ensemble: class-level reads
    except ConfigError:
        metrics = list(verifier_metrics(cls))
    if len(member_names(name)) > 1:
        return metrics, ENSEMBLE_METRIC
    assert list(verifier_metrics(cls)) == metrics, (
        f"{cls.__name__}: `metrics` on the class {verifier_metrics(cls)} differ from the registry's {metrics}")
    assert list(verifier_metrics(verifier)) == metrics, (
        f"{cls.__name__}: the instance's metrics {verifier_metrics(verifier)} differ from the class's {metrics}")
    return metrics, default_metric(cls)


def check_contract(
    make_verifier: Callable[..., Any],
    prompt: str,
    images: Sequence[Image.Image],
    *,
    bad_options: dict[str, Any] | None = DEFAULT_BAD_OPTIONS,
    input_error: type[BaseException] | tuple[type[BaseException], ...] = ValueError,
    tolerance: float | None = None,
) -> list[Grades]:
    images = list(images)
    assert len(images) >= 2, "the contract needs at least two images (order and batching checks)"
    verifier = make_verifier()
    metrics, default = declared_metrics(verifier)
    assert metrics and all(isinstance(m, str) and m for m in metrics), f"metrics: {metrics!r}"
    assert default in metrics, f"default metric {default!r} is not one of {metrics}"
    graded = {m for m in metrics if m != ENSEMBLE_METRIC} if len(member_names(verifier.name)) > 1 else set(metrics)
    tol = tolerance if tolerance is not None else float(getattr(verifier, "score_tolerance", 0.0) or 0.0)

    def scores(result: list[Grades]) -> list[dict[str, float]]:
        return [grades.scores() for grades in result]

    def close(left: list[dict[str, float]], right: list[dict[str, float]], what: str) -> None:
        assert len(left) == len(right), f"{what}: {len(left)} results vs {len(right)}"
        for index, (a, b) in enumerate(zip(left, right)):
            assert a.keys() == b.keys(), f"{what}, image {index}: metrics {sorted(a)} vs {sorted(b)}"
            for metric in a:
                assert math.isclose(a[metric], b[metric], rel_tol=0.0, abs_tol=tol), (
                    f"{what}, image {index}, {metric}: {a[metric]!r} vs {b[metric]!r} (tolerance {tol})")

    # One Grades per image, the declared metrics only, finite.
    first = verifier.score(prompt, images)
    assert isinstance(first, list), f"score returned a {type(first).__name__}, not a list"
    assert len(first) == len(images), f"{len(first)} grades for {len(images)} images"
    for index, grades in enumerate(first):
        assert isinstance(grades, Grades), f"image {index}: a {type(grades).__name__}, not Grades"
        assert set(grades.metrics()) == graded, (
            f"image {index}: metrics {sorted(grades.metrics())}, declared {sorted(graded)}")
        for metric, grade in grades.root.items():
            assert isinstance(grade.score, float) and math.isfinite(grade.score), f"image {index} {metric}: {grade.score!r}"
            assert isinstance(grade.explanation, str) and grade.explanation.strip(), f"image {index} {metric}: no explanation"
    assert len({tuple(sorted(s.items())) for s in scores(first)}) > 1, (
        "every image got the same grades: pick images this verifier tells apart, or the order checks mean nothing")

    # Deterministic.
    again = verifier.score(prompt, images)
    assert scores(again) == scores(first), "the same call twice gave different scores"

    # Input order kept (reversed, and rotated by one).
    for order in (list(reversed(range(len(images)))), [*range(1, len(images)), 0]):
        permuted = verifier.score(prompt, [images[i] for i in order])
        close(scores(permuted), [scores(first)[i] for i in order], f"images in order {order}")

    # Batched equals one at a time.
    alone = [verifier.score(prompt, [image]) for image in images]
    assert all(len(result) == 1 for result in alone), "one image gave other than one Grades"
    close([result[0].scores() for result in alone], scores(first), "one at a time vs batched")

    partial = getattr(verifier, "score_partial", None)
    if partial is not None:
        results = list(partial(prompt, images))
        assert len(results) == len(images), f"score_partial: {len(results)} results for {len(images)} images"
        failures = [r for r in results if not isinstance(r, Grades)]
        assert not failures, f"score_partial failed where score did not: {failures[:1]!r}"
        close(scores(results), scores(first), "score_partial vs score")

    assert verifier.score(prompt, []) == [], "an empty list must give []"

    # Typed errors, never a None.
    with pytest.raises(input_error):
        verifier.score(prompt, [images[0], "not an image"])
    if bad_options is not None:
        with pytest.raises(VerifierConfigError) as refused:
            make_verifier(bad_options)
        for key in _leaf_keys(bad_options):
            assert key in str(refused.value), f"the error does not name {key!r}: {refused.value}"
    return first


def _leaf_keys(options: dict[str, Any]) -> list[str]:
    keys = []
    for key, value in options.items():
        keys.extend(_leaf_keys(value) if isinstance(value, dict) else [key])
    return keys


def distinct_images(count: int = 4, size: tuple[int, int] = (40, 32)) -> list[Image.Image]:
    """Visibly different images: solid colours with a bar of another colour, then gradients."""
    from PIL import ImageDraw

    colours = [(230, 30, 30), (40, 200, 60), (30, 50, 220), (240, 200, 20), (140, 60, 200), (250, 250, 250)]
    images = []
    for index in range(count):
        if index < len(colours):
            image = Image.new("RGB", size, colours[index])
            ImageDraw.Draw(image).rectangle([index * 3, 0, index * 3 + 8, size[1]], fill=colours[-1 - index])
        else:
            image = Image.new("RGB", size)
            image.putdata([((x * 9 + index * 37) % 256, (y * 7) % 256, (x + y + index * 11) % 256)
                           for y in range(size[1]) for x in range(size[0])])
        images.append(image)
    return images
