"""Driving a flow-matching pipeline along a path: part of its schedule, from given latents, on its own
sampler (search over paths, FK steering).

A segment is one pipeline call: `sigmas=` the pipeline's own default sigma list from the segment's first
step (its scheduler shifts them as it shifts the whole list, so the steps are the full schedule's),
`latents=` the sample there, and a `callback_on_step_end` that stops it at the segment's last step
(diffusers' interrupt) and puts the clean prediction in place of the latents, so the pipeline's own VAE
decodes it at the pipeline's resolution. The clean prediction is the flow-matching one the scheduler
defines, x0 = x_t - sigma_t * v, from the velocity of the segment's last step (read as the scheduler's
`step` receives it). A segment that ends at the last step returns the pipeline's own final image.

The bridge between two segments is computed here, on the CPU in float32 from a seeded CPU generator,
so it is the same on any device: forward noising from step a back to step b (the flow-matching
marginal given x_a: x_b = (1-s_b)/(1-s_a) x_a + sqrt(s_b^2 - ((1-s_b) s_a/(1-s_a))^2) z), or FK's
refresh at one step (x = (1-s) x0 + s (sqrt(1-eta^2) e + eta z), e the sample's own noise part).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ttsf_core.candidates import Move

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PathState:
    """Where a path left its sample: the latents at its stop (CPU, the pipeline's dtype), the clean
    prediction there (CPU float32), and the schedule's sigmas as the scheduler used them (terminal 0
    included)."""

    latents: "torch.Tensor"
    clean: "torch.Tensor"
    sigmas: tuple[float, ...]

    def to_bytes(self) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save({"latents": self.latents, "clean": self.clean, "sigmas": list(self.sigmas)}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "PathState":
        import torch

        loaded = torch.load(io.BytesIO(data), weights_only=True)
        return cls(loaded["latents"], loaded["clean"], tuple(loaded["sigmas"]))


def bridge(state: PathState, at: int, moves: Sequence[Move]) -> "torch.Tensor":
    """The float32 CPU latents (1, ...) after `moves` (re-noisings, refreshes) from `state` at step `at`."""
    import torch

    latents = state.latents.to(torch.float32)
    for move in moves:
        noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(move.seed),
                            dtype=torch.float32)
        if move.kind == "renoise":
            latents = renoised(latents, state.sigmas[at], state.sigmas[move.to], noise)
        else:
            latents = refreshed(latents, state.clean, state.sigmas[at], move.eta, noise)
        at = move.to
    return latents


def renoised(latents: "torch.Tensor", sigma_from: float, sigma_to: float, noise: "torch.Tensor") -> "torch.Tensor":
    """Forward noising of a flow-matching sample x_a = (1-s_a) x0 + s_a e to the higher level s_b."""
    keep = (1.0 - sigma_to) / (1.0 - sigma_from)
    added = max(sigma_to**2 - (keep * sigma_from) ** 2, 0.0) ** 0.5
    return keep * latents + added * noise


def refreshed(latents: "torch.Tensor", clean: "torch.Tensor", sigma: float, eta: float,
              noise: "torch.Tensor") -> "torch.Tensor":
    """The same noise level, its noise part mixed with fresh noise: what separates resampled copies."""
    own_noise = (latents - (1.0 - sigma) * clean) / sigma
    return (1.0 - sigma) * clean + sigma * ((1.0 - eta**2) ** 0.5 * own_noise + eta * noise)


class SegmentRun:
    """One pipeline call from step `start` to step `stop` of a `steps`-step schedule: the keyword
    arguments it adds (sigmas, callback) and, once the call returns, the end latents and clean predictions."""

    def __init__(self, pipe, base_sigmas: Sequence[float], start: int, stop: int, known: Sequence[float] | None):
        self.pipe, self.start, self.stop = pipe, start, stop
        self.steps = len(base_sigmas)
        self.base_sigmas = list(base_sigmas)
        self.known = None if known is None else tuple(known)
        self.end_latents = None
        self.clean = None
        self.sigmas: tuple[float, ...] | None = None
        self._last_step = None

    def call_kwargs(self) -> dict:
        return {"sigmas": self.base_sigmas[self.start:], "num_inference_steps": self.steps - self.start,
                "callback_on_step_end": self._on_step_end, "callback_on_step_end_tensor_inputs": ["latents"]}

    def __enter__(self) -> "SegmentRun":
        scheduler = self.pipe.scheduler
        original = type(scheduler).step

        def observed_step(model_output, timestep, sample, *args, **kwargs):
            output = original(scheduler, model_output, timestep, sample, *args, **kwargs)
            index = scheduler.step_index - 1
            self._last_step = (model_output, sample, float(scheduler.sigmas[index]))
            return output

        scheduler.step = observed_step  # observe, not replace: the pipeline's own step still runs
        return self

    def __exit__(self, *exc_info) -> None:
        del self.pipe.scheduler.step

    def _on_step_end(self, pipe, index: int, timestep, tensors: dict) -> dict:
        if index != self.stop - self.start - 1:
            return {}
        import torch

        self._read_schedule()
        model_output, sample, sigma = self._last_step
        clean = sample.to(torch.float32) - sigma * model_output.to(torch.float32)
        self.end_latents, self.clean = tensors["latents"], clean
        if self.stop == self.steps:
            return {}  # the last step: the pipeline's own final image
        pipe._interrupt = True  # diffusers' way to stop a call: the remaining steps are skipped
        return {"latents": clean.to(tensors["latents"].dtype)}

    def _read_schedule(self) -> None:
        used = tuple(float(sigma) for sigma in self.pipe.scheduler.sigmas)
        full = used if self.start == 0 else self.known
        if full is None or tuple(full[self.start:]) != used:
            raise RuntimeError(
                f"{type(self.pipe.scheduler).__name__} did not keep the schedule's steps when started at step "
                f"{self.start} of {self.steps} (its sigmas {used[:3]}... are not the full schedule's from there): "
                "path search and FK steering need a scheduler that shifts each sigma on its own")
        self.sigmas = full

    def states(self) -> list[PathState]:
        """Each sample's state at the stop, on the CPU."""
        if self.end_latents is None:
            raise RuntimeError(f"the pipeline call did not reach step {self.stop} (its callback never ran there)")
        return [PathState(latents.unsqueeze(0).cpu(), clean.unsqueeze(0).cpu(), self.sigmas)
                for latents, clean in zip(self.end_latents, self.clean)]
