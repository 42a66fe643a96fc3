"""Several verifiers as one: each image is graded by every member, its grades hold every member's
metrics (named `member:metric` where two members share a name), and selection combines the members'
default metrics into the "ensemble" metric (ttsf_core.search.selection): the unweighted mean of their
ranks (Ma et al.'s rule for their FLUX.1-dev results) or of their min-max scaled scores.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from ttsf_core.config import VerifierArgs
from ttsf_core.verifiers.base import (
    Graded,
    Grades,
    OnResult,
    add_usage,
    all_graded,
    grade_each,
    most_telling,
    usage_of,
    verifier_batch_size,
    verifier_metrics,
)
from ttsf_core.verifiers.catalog import ENSEMBLE_METRIC, ensemble_metrics, member_names, verifier_class


class EnsembleVerifier:
    default_metric = ENSEMBLE_METRIC

    def __init__(self, args: VerifierArgs):
        self.args = args
        self.name = args.name
        names = member_names(args.name)
        # Options are per member: {"clip": {...}, "image_reward": {...}}.
        self.members = [verifier_class(name)(args.model_copy(update={
            "name": name, "choice_of_metric": None, "model_name": None, "options": args.options.get(name, {}),
        })) for name in names]
        every, self.member_metrics = ensemble_metrics(args.name)
        self.metrics = (ENSEMBLE_METRIC, *every)
        self._renames = [dict(zip(_own_metrics(member), every_of)) for member, every_of in
                         zip(self.members, _split(every, [len(_own_metrics(m)) for m in self.members]))]

    @property
    def batch_size(self) -> int:
        return min(verifier_batch_size(member) for member in self.members)

    def score(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades]:
        return all_graded(self.score_partial(prompt, images))

    @property
    def billed(self) -> bool:
        return any(getattr(member, "billed", False) for member in self.members)

    def score_partial(self, prompt: str, images: Sequence[Image.Image]) -> list[Grades | BaseException]:
        return [result.grades if isinstance(result, Graded) else result for result in self.grade_partial(prompt, images)]

    def grade_partial(self, prompt: str, images: Sequence[Image.Image],
                      on_result: OnResult | None = None) -> list[Graded | BaseException]:
        """Per image: every member's grades merged with their usage summed, or the most telling of its
        members' errors (carrying what the members' billed answers cost)."""
        images = list(images)
        per_member = [grade_each(member, prompt, images) for member in self.members]
        merged: list[Graded | BaseException] = []
        for index in range(len(images)):
            results = [results[index] for results in per_member]
            usage = add_usage(*(usage_of(result) for result in results))
            failures = [result for result in results if isinstance(result, BaseException)]
            if failures:
                telling = most_telling(failures)
                if usage:
                    telling.usage = usage  # every member's billed answers for this image, counted once
                merged.append(telling)
            else:
                merged.append(Graded(Grades({renames[metric]: grade for renames, found in zip(self._renames, results)
                                             for metric, grade in found.grades.root.items()}), usage))
            if on_result is not None:
                on_result(index, merged[-1])
        return merged


def _own_metrics(member) -> tuple[str, ...]:
    return verifier_metrics(member)


def _split(items: list[str], sizes: list[int]) -> list[list[str]]:
    parts, start = [], 0
    for size in sizes:
        parts.append(items[start : start + size])
        start += size
    return parts
