"""Candidates -> images (or videos). Each prompt is encoded once and its embeddings reused for every candidate."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ttsf_core.candidates import Candidate, NoiseSpec, draw_batch
from ttsf_core.resolved import ResolvedRun, require_resolved

if TYPE_CHECKING:
    from ttsf_core.engine.path_generation import PathStates

Media = Image.Image | list[Image.Image]  # an image, or a video's frames
_ENCODINGS_KEPT = 16  # prompts in flight at once are few; keep their embeddings, drop the rest
# A pipeline's scheduler holds per-call state: one call at a time per pipeline, however many
# generators (configs) share it.
_PIPELINE_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def pipeline_lock(pipe) -> threading.Lock:
    with _LOCKS_LOCK:
        return _PIPELINE_LOCKS.setdefault(pipe, threading.Lock())


@dataclass
class GenerationCounts:
    prompt_encodings: int = 0
    pipeline_calls: int = 0
    images: int = 0


@dataclass
class CandidateGenerator:
    """Generates images (or videos: lists of frames) for (prompt, candidates) with a loaded pipeline,
    in batches of batch_size. What differs per pipeline (noise shape, prompt encoding, video) is its
    family's (ttsf_core.pipelines.families)."""

    pipe: object
    run: ResolvedRun  # resolved: its steps are known
    counts: GenerationCounts = field(default_factory=GenerationCounts)

    def __post_init__(self):
        from ttsf_core.pipelines.families import family_of
        from ttsf_core.pipelines.signature import check_call_args, signature_of
        self.config = require_resolved(self.run, "CandidateGenerator(pipe, run)").config

        self._encodings: OrderedDict[str, dict] = OrderedDict()
        self._lock = pipeline_lock(self.pipe)
        self.family = family_of(self.pipe)
        signature = signature_of(type(self.pipe))
        check_call_args(self.config, type(self.pipe).__name__, signature)
        given = self.config.pipeline_call_args.given()
        # What the call will use: the pipeline's own defaults under what the config sets.
        self.arguments = {**signature.defaults, **given}
        self._passed = {name: value for name, value in given.items() if name not in self.family.consumed()}
        # Taken in by the encoding: a default other than None (PixArt's negative_prompt="") would clash with it.
        self._cleared = {name: None for name in self.family.consumed() if signature.defaults.get(name) is not None}
        self.family.check(self.arguments)
        steps = self.config.pipeline_call_args.num_inference_steps
        self.family.check_steps(self.pipe, steps, "pipeline_call_args.num_inference_steps")
        if self.config.search_args.draft_steps is not None:
            self.family.check_steps(self.pipe, self.config.search_args.draft_steps, "search_args.draft_steps")
        self.geometry = self.family.geometry(self.pipe, self.arguments)
        # diffusers walks every module to answer this; it does not change while the pipe is loaded.
        self._device = self.pipe._execution_device

    @property
    def lock(self) -> threading.Lock:
        """Held around every call of this generator's pipeline (one call at a time per pipeline)."""
        return self._lock

    @property
    def batch_size(self) -> int:
        return self.config.batch_size_for_img_gen

    @property
    def video(self) -> bool:
        return self.family.video

    def frames_per_second(self) -> int:
        return self.config.export_args.fps or self.family.frames_per_second(self.arguments)

    def encode(self, prompt: str) -> dict:
        """Pipeline keyword arguments carrying the prompt, computed once per prompt."""
        if prompt in self._encodings:
            self._encodings.move_to_end(prompt)
            return self._encodings[prompt]
        encoding = self.family.encode(self.pipe, prompt, self.arguments, self._device)
        self.counts.prompt_encodings += 1
        self._encodings[prompt] = encoding
        while len(self._encodings) > _ENCODINGS_KEPT:
            self._encodings.popitem(last=False)
        return encoding

    def generate(self, prompt: str, candidates: list[Candidate]) -> list[Media]:
        """Every candidate's image (or frames), in order."""
        return [image for _, images in self.batches(prompt, candidates) for image in images]

    def batches(self, prompt: str, candidates: list[Candidate]) -> Iterator[tuple[list[Candidate], list[Media]]]:
        """Pipeline calls of at most batch_size candidates sharing their steps, yielded as each finishes
        (so the caller can write them before the next call: a kill loses one batch at most)."""
        for batch in plan_batches(candidates, self.batch_size):
            yield batch, self.generate_batch(prompt, batch)

    def generate_batch(self, prompt: str, batch: list[Candidate], states: "PathStates | None" = None) -> list[Media]:
        """One pipeline call for `batch` (at most batch_size candidates, one segment of one schedule).
        Candidates on a denoising path continue from their parents' states in `states` and leave theirs
        there (ttsf_core.engine.path_generation)."""
        if batch[0].path is not None:
            from ttsf_core.engine.path_generation import generate_path_batch

            return generate_path_batch(self, prompt, batch, states)
        with self._lock:
            kwargs = self.call_kwargs(prompt, batch)
            output = self.call(kwargs, len(batch))
        return media_of(output)

    def call(self, kwargs: dict, candidates: int):
        """The pipeline call itself (the caller holds the pipeline's lock), counted."""
        output = self.pipe(**kwargs)
        self.counts.pipeline_calls += 1
        self.counts.images += candidates
        return output

    def call_kwargs(self, prompt: str, batch: list[Candidate], latents: "torch.Tensor | None" = None) -> dict:
        """The keyword arguments of the pipeline call for `batch`: the arguments the config sets (no
        others: unset ones stay the pipeline's own), the steps, the prompt's encoding, the latents
        (`latents`: given, e.g. a path's sample part way; else each candidate's initial noise)."""
        encoding = self.encode(prompt)
        kwargs = {**self._passed, "num_inference_steps": batch[0].steps, "output_type": "pil"}
        if self.family.explicit:
            generators = None
            if latents is None:
                latents, generators = draw_batch(self.pipe, batch, self.geometry)
            kwargs["latents"] = latents.to(self._device, self.family.latents_dtype(encoding))
            kwargs.update({name: _repeat(tensor, len(batch)) for name, tensor in encoding.items()})
            kwargs.update(self._cleared)
            if self.family.pass_generators and generators is not None:
                kwargs["generator"] = generators
        else:
            # Other pipelines draw their own noise: one CPU generator per candidate keeps it per-seed.
            walked = [candidate.noise.tag() for candidate in batch if candidate.noise.walk]
            if walked:
                raise ValueError(f"noise {walked[0]}: neighbour noises need a pipeline whose noise ttsf draws; "
                                 f"{type(self.pipe).__name__} draws its own")
            kwargs["prompt"] = [encoding["prompt"]] * len(batch)
            for name in ("negative_prompt", "negative_prompt_2"):
                if isinstance(kwargs.get(name), str):
                    kwargs[name] = [kwargs[name]] * len(batch)
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(c.noise.seed) for c in batch]
        return kwargs


def media_of(output) -> list[Media]:
    """A pipeline output's images, or its videos as lists of frames."""
    frames = getattr(output, "frames", None)
    if frames is not None:
        return [list(video) for video in frames]
    return list(output.images)


def plan_batches(candidates: list[Candidate], batch_size: int) -> list[list[Candidate]]:
    """Consecutive runs of one segment (equal steps; for paths, the same first and last step), cut into
    pieces of at most batch_size: the pipeline calls."""
    batches: list[list[Candidate]] = []
    for candidate in candidates:
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and last[0].segment() == candidate.segment():
            last.append(candidate)
        else:
            batches.append([candidate])
    return batches


def seed_candidates(seeds: list[int], steps: int) -> list[Candidate]:
    """Fresh-noise candidates for plain seeds (benchmarks, tests, tt-scale-flux-style calls)."""
    return [Candidate(noise=NoiseSpec(seed=seed), steps=steps) for seed in seeds]


def _repeat(value: torch.Tensor | list, times: int) -> torch.Tensor | list:
    """One prompt's encoding for a batch of `times` candidates: a tensor repeated along its batch
    dimension, or a list of per-prompt tensors (Z-Image's variable-length embeddings) repeated as a list."""
    if isinstance(value, list):
        return value * times
    return value.repeat(times, *([1] * (value.dim() - 1)))
