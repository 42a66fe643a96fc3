"""A candidate is a spec, not an int: what draws its noise, and the steps its image is generated with.

`NoiseSpec` is a fresh Gaussian noise from `seed`, followed by a `walk` of zero or more sphere
steps (each: a neighbour seed and the cosine similarity to the point before it). Random search uses
bare seeds; zero-order search walks from a pivot. The spec alone redraws the exact latents (float32,
on the CPU, shaped from the loaded model), so every image can be regenerated from its record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from ttsf_core.config import digest
from ttsf_core.noise import draw_noise, sphere_neighbour

if TYPE_CHECKING:
    import torch

# Seeds are 63-bit: JSON readers in JavaScript (the Prefect UI among them) round numbers above 2**53,
# so in JSON a seed is written as a string of digits (and read back from one, or from a number).
Seed = Annotated[int, Field(ge=0, lt=2**63), PlainSerializer(str, return_type=str, when_used="json")]
Stage = Literal["draft", "final"]
Role = Literal["sample", "pivot", "neighbor"]


class WalkStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: Seed
    cosine: float = Field(gt=0, lt=1)


class NoiseSpec(BaseModel):
    """Draws one initial noise: `seed`, then each sphere step of `walk` in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: Seed
    walk: tuple[WalkStep, ...] = ()

    def neighbour(self, seed: int, cosine: float) -> "NoiseSpec":
        return NoiseSpec(seed=self.seed, walk=(*self.walk, WalkStep(seed=seed, cosine=cosine)))

    def tag(self) -> str:
        """A stable file-name part: `s<seed>` for a fresh noise, plus a hash of the walk for neighbours."""
        if not self.walk:
            return f"s{self.seed}"
        return f"s{self.seed}-w{digest([step.model_dump() for step in self.walk], 10)}"

    def draw(self, pipe, height: int, width: int, num_frames: int | None = None) -> "torch.Tensor":
        """Float32 CPU latents of shape (1, ...), as the pipeline's prepare_latents shapes them."""
        geometry = {"height": height, "width": width, **({"num_frames": num_frames} if num_frames else {})}
        return self.draw_with_generator(pipe, geometry)[0]

    def draw_with_generator(self, pipe, geometry: dict[str, int]) -> tuple["torch.Tensor", "torch.Generator"]:
        """The latents, and the seed's generator where drawing its noise left it (the pipeline's own
        further draws, e.g. a stochastic scheduler's, continue from there as they would without ttsf;
        a neighbour shares its pivot's)."""
        latents, generator = draw_noise(pipe, self.seed, geometry)
        for step in self.walk:
            latents = sphere_neighbour(latents, step.seed, step.cosine)
        return latents, generator


class Candidate(BaseModel):
    """One image to generate and grade: its noise, its denoising steps, and why it is in the round."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    noise: NoiseSpec
    steps: int = Field(ge=1)
    stage: Stage = "final"
    role: Role = "sample"

    def key(self) -> str:
        """What names its image: the noise and the steps (the stage and role do not change pixels)."""
        return f"{self.noise.tag()}-st{self.steps}"

    def at(self, steps: int, stage: Stage) -> "Candidate":
        return self.model_copy(update={"steps": steps, "stage": stage})


def draw_batch(pipe, candidates: list[Candidate], geometry: dict[str, int]) -> tuple["torch.Tensor", list]:
    """The batch's latents (one noise per candidate, each drawn alone) and their generators."""
    import torch

    drawn = [candidate.noise.draw_with_generator(pipe, geometry) for candidate in candidates]
    return torch.cat([latents for latents, _ in drawn], dim=0), [generator for _, generator in drawn]
