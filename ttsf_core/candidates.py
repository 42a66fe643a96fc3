"""A candidate is a spec, not an int: what draws its noise, and the steps its image is generated with.

`NoiseSpec` is a fresh Gaussian noise from `seed`, followed by a `walk` of zero or more sphere
steps (each: a neighbour seed and the cosine similarity to the point before it). Random search uses
bare seeds; zero-order search walks from a pivot. The spec alone redraws the exact latents (float32,
on the CPU, shaped from the loaded model), so every image can be regenerated from its record.

Search on the denoising path (paths, FK steering) adds a `PathSpec`: the moves its sample made on the
way from that noise (denoise to a step, re-noise back to an earlier one, a seeded stochastic refresh),
and where it stops. A candidate that stops before the last step is an intermediate one: its image is
the decoded clean prediction at that step. Its `context` names the stages before it (the pipeline
calls its ancestors were part of), so an image is shared only with a search that made it the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from ttsf_core.config import digest
from ttsf_core.noise import draw_noise, sphere_neighbour

if TYPE_CHECKING:
    import torch

# Seeds are 63-bit: JSON readers in JavaScript (the Prefect UI among them) round numbers above 2**53,
# so in JSON a seed is written as a string of digits (and read back from one, or from a number).
Seed = Annotated[int, Field(ge=0, lt=2**63), PlainSerializer(str, return_type=str, when_used="json")]
Stage = Literal["draft", "path", "final"]
Role = Literal["sample", "pivot", "neighbor", "branch", "particle"]


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


class Move(BaseModel):
    """One move of a sample along its denoising path. `run`: the pipeline denoises it to step `to` of
    the schedule, in a call of the stage `context` names (batched float math depends on the call, so
    the stages before a sample are part of what it is). `renoise`: forward noising back to the earlier
    step `to` with the seeded noise `seed` (search over paths). `refresh`: at the step it is at, its
    noise part is mixed with the seeded noise `seed` by `eta` (FK steering's resampled particles: FLUX's
    sampler is deterministic, so without it a copy of a particle would stay a copy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["run", "renoise", "refresh"]
    to: int = Field(ge=0)
    context: str | None = None
    seed: Seed | None = None
    eta: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> "Move":
        wanted = {"run": ("context",), "renoise": ("seed",), "refresh": ("seed", "eta")}[self.kind]
        given = tuple(name for name in ("context", "seed", "eta") if getattr(self, name) is not None)
        if given != wanted:
            raise ValueError(f"a {self.kind} move takes {', '.join(wanted)}; received {', '.join(given) or 'none'}")
        return self


class PathSpec(BaseModel):
    """A sample's moves from its initial noise: the first and the last a `run`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    moves: tuple[Move, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _moves_follow_the_schedule(self) -> "PathSpec":
        at = 0
        if self.moves[0].kind != "run" or self.moves[-1].kind != "run":
            raise ValueError("a path starts and ends with a run")
        for move in self.moves:
            if (move.kind == "run" and move.to <= at) or (move.kind == "renoise" and move.to >= at) or \
                    (move.kind == "refresh" and move.to != at):
                raise ValueError(f"move {move.kind} to step {move.to} from step {at}: runs go forward, "
                                 "re-noising goes back, a refresh stays")
            at = move.to
        return self

    @property
    def stop(self) -> int:
        return self.moves[-1].to

    @property
    def start(self) -> int:
        """The step its last run starts from (where its own pipeline call begins)."""
        return self.moves[-2].to if len(self.moves) > 1 else 0

    def parent(self) -> "PathSpec | None":
        """The path whose end this one's last run continues from (None: it starts at the initial noise)."""
        for end in range(len(self.moves) - 2, -1, -1):
            if self.moves[end].kind == "run":
                return PathSpec(moves=self.moves[: end + 1])
        return None

    def bridge(self) -> tuple[Move, ...]:
        """The moves between the parent's end and this path's last run (a re-noising, a refresh)."""
        parent = self.parent()
        return self.moves[len(parent.moves) if parent else 0 : -1]

    def then(self, *moves: Move) -> "PathSpec":
        return PathSpec(moves=(*self.moves, *moves))

    def tag(self) -> str:
        return digest([move.model_dump(exclude_none=True) for move in self.moves], 10)


class Candidate(BaseModel):
    """One image to generate and grade: its noise, its denoising steps (the schedule's length), why it
    is in the round, and, for a search on the denoising path, its path and lineage (`parent`: the index
    in the round's record of the candidate it continues; `weight`: its parent's normalized resampling
    weight, FK steering)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    noise: NoiseSpec
    steps: int = Field(ge=1)
    stage: Stage = "final"
    role: Role = "sample"
    path: PathSpec | None = None
    parent: int | None = None
    weight: float | None = None

    def key(self) -> str:
        """What names its image: the noise, its path, and the steps (stage, role, lineage do not change
        pixels)."""
        if self.path is not None:
            return f"{self.noise.tag()}-p{self.path.tag()}-{self.path.stop}of{self.steps}"
        return f"{self.noise.tag()}-st{self.steps}"

    @property
    def own_nfe(self) -> int:
        """Denoiser evaluations of its own pipeline call (a path's last run; its earlier ones are its
        ancestors')."""
        return self.steps if self.path is None else self.path.stop - self.path.start

    def runs(self) -> list[tuple[str, int]]:
        """Every pipeline run that made it, as (what names that run's result, its denoiser evaluations):
        its own for a plain candidate; each run on a path (its ancestors' included, once per round)."""
        if self.path is None:
            return [(self.key(), self.steps)]
        found, at = [], 0
        for end, move in enumerate(self.path.moves):
            if move.kind == "run":
                node = self.model_copy(update={"path": PathSpec(moves=self.path.moves[: end + 1])})
                found.append((node.key(), move.to - at))
            at = move.to
        return found

    def segment(self) -> tuple[int, int, int]:
        """(schedule length, first step, stop step) of its pipeline call: what a batch must share."""
        return (self.steps, 0, self.steps) if self.path is None else (self.steps, self.path.start, self.path.stop)

    def at(self, steps: int, stage: Stage) -> "Candidate":
        return self.model_copy(update={"steps": steps, "stage": stage})


def draw_batch(pipe, candidates: list[Candidate], geometry: dict[str, int]) -> tuple["torch.Tensor", list]:
    """The batch's latents (one noise per candidate, each drawn alone) and their generators."""
    import torch

    drawn = [candidate.noise.draw_with_generator(pipe, geometry) for candidate in candidates]
    return torch.cat([latents for latents, _ in drawn], dim=0), [generator for _, generator in drawn]


def parent_of(candidate: Candidate) -> Candidate | None:
    """The candidate whose end state this one continues from (None: it starts at its initial noise)."""
    parent = candidate.path.parent() if candidate.path is not None else None
    return None if parent is None else Candidate(noise=candidate.noise, steps=candidate.steps, stage="path",
                                                 path=parent)
