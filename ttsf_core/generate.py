"""Candidates -> images. Each prompt is encoded once and its embeddings reused for every candidate."""

from __future__ import annotations

import inspect
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from ttsf_core.candidates import Candidate, NoiseSpec, draw_batch
from ttsf_core.config import RunConfig
from ttsf_core.noise import supports_explicit_latents

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
    """Generates images for (prompt, seeds) with a loaded pipeline, in batches of batch_size."""

    pipe: object
    config: RunConfig
    counts: GenerationCounts = field(default_factory=GenerationCounts)

    def __post_init__(self):
        self._encodings: OrderedDict[str, dict] = OrderedDict()
        self._lock = pipeline_lock(self.pipe)
        accepted = inspect.signature(self.pipe.__call__).parameters
        self._explicit = supports_explicit_latents(self.pipe) and "prompt_embeds" in accepted
        self._passes_sequence_length = "max_sequence_length" in accepted
        # diffusers walks every module to answer this; it does not change while the pipe is loaded.
        self._device = self.pipe._execution_device

    @property
    def batch_size(self) -> int:
        return self.config.batch_size_for_img_gen

    def encode(self, prompt: str) -> dict:
        """Pipeline keyword arguments carrying the prompt, computed once per prompt."""
        if prompt in self._encodings:
            self._encodings.move_to_end(prompt)
            return self._encodings[prompt]
        encoding = self._encode(prompt)
        self.counts.prompt_encodings += 1
        self._encodings[prompt] = encoding
        while len(self._encodings) > _ENCODINGS_KEPT:
            self._encodings.popitem(last=False)
        return encoding

    def _encode(self, prompt: str) -> dict:
        if not self._explicit:
            return {"prompt": prompt}
        with torch.no_grad():
            prompt_embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=prompt,
                prompt_2=prompt,
                device=self._device,
                num_images_per_prompt=1,
                max_sequence_length=self.config.pipeline_call_args.max_sequence_length,
            )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def generate(self, prompt: str, candidates: list[Candidate]) -> list[Image.Image]:
        """Every candidate's image, in order."""
        return [image for _, images in self.batches(prompt, candidates) for image in images]

    def batches(self, prompt: str, candidates: list[Candidate]) -> Iterator[tuple[list[Candidate], list[Image.Image]]]:
        """Pipeline calls of at most batch_size candidates sharing their steps, yielded as each finishes
        (so the caller can write them before the next call: a kill loses one batch at most)."""
        for batch in plan_batches(candidates, self.batch_size):
            yield batch, self.generate_batch(prompt, batch)

    def generate_batch(self, prompt: str, batch: list[Candidate]) -> list[Image.Image]:
        """One pipeline call for `batch` (at most batch_size candidates, one step count)."""
        with self._lock:
            kwargs = self._call_kwargs(self.encode(prompt), batch)
            output = self.pipe(**kwargs)
            self.counts.pipeline_calls += 1
            self.counts.images += len(batch)
        return list(output.images)

    def _call_kwargs(self, encoding: dict, batch: list[Candidate]) -> dict:
        args = self.config.pipeline_call_args
        kwargs = {
            "height": args.height,
            "width": args.width,
            "guidance_scale": args.guidance_scale,
            "num_inference_steps": batch[0].steps,
            "output_type": "pil",
        }
        if self._passes_sequence_length:
            kwargs["max_sequence_length"] = args.max_sequence_length
        if self._explicit:
            dtype = encoding["prompt_embeds"].dtype
            kwargs["latents"] = draw_batch(self.pipe, batch, args.height, args.width).to(self._device, dtype)
            kwargs.update({name: _repeat(tensor, len(batch)) for name, tensor in encoding.items()})
        else:
            # Other pipelines draw their own noise: one CPU generator per candidate keeps it per-seed.
            walked = [candidate.noise.tag() for candidate in batch if candidate.noise.walk]
            if walked:
                raise ValueError(f"noise {walked[0]}: neighbour noises need a pipeline that takes packed latents "
                                 f"(FLUX); {type(self.pipe).__name__} draws its own")
            kwargs["prompt"] = [encoding["prompt"]] * len(batch)
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(c.noise.seed) for c in batch]
        return kwargs


def plan_batches(candidates: list[Candidate], batch_size: int) -> list[list[Candidate]]:
    """Consecutive runs of equal steps, cut into pieces of at most batch_size: the pipeline calls."""
    batches: list[list[Candidate]] = []
    for candidate in candidates:
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and last[0].steps == candidate.steps:
            last.append(candidate)
        else:
            batches.append([candidate])
    return batches


def seed_candidates(seeds: list[int], steps: int) -> list[Candidate]:
    """Fresh-noise candidates for plain seeds (benchmarks, tests, tt-scale-flux-style calls)."""
    return [Candidate(noise=NoiseSpec(seed=seed), steps=steps) for seed in seeds]


def _repeat(tensor: torch.Tensor, times: int) -> torch.Tensor:
    return tensor.repeat(times, *([1] * (tensor.dim() - 1)))
