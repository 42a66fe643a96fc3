"""Images and grades, each stored under what decides it, shared by every run of an output folder.

    OUTPUT_DIR/store/images/<model>-<generation hash>/<prompt>/<noise tag>-st<steps>.png
    OUTPUT_DIR/store/grades/<verifier>-<grading hash>/<prompt>/<image sha256>.json

An image's folder hash covers the model, dtype and pipeline arguments (not the steps: they are in the
file name); a grade's covers the verifier's grading settings. The metric, the strategy and the round
count decide neither, so a longer run, another metric or another strategy drawing the same noise
finds the work already done. Each identity folder holds an identity.json saying what its hash covers.
Each PNG carries its generation recipe (noise, steps, the pipeline call's batch) in an iTXt chunk.

A video candidate is `<noise tag>-st<steps>.mp4` (its sha256 is what grades are keyed by) beside its
poster frame `<noise tag>-st<steps>.poster.png`, which carries the recipe; the poster is written first,
so an mp4 present means both are complete. Videos are graded by `export_args.grade_frames` frames, or
whole (`export_args.video_grading`): a way other than the default gets grade folders of its own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ttsf_core.candidates import Candidate, NoiseSpec, PathSpec, parent_of
from ttsf_core.config import digest
from ttsf_core.costs import price_table
from ttsf_core.resolved import ResolvedRun, require_resolved
from ttsf_core.storage.files import atomic_write_bytes, file_sha256, model_slug, prompt_dirname, safe_slug, write_json, write_png
from ttsf_core.verifiers.base import Grades, Usage
from ttsf_core.video import VIDEO_SUFFIX, mp4_bytes, poster_frame, poster_path

if TYPE_CHECKING:
    from ttsf_core.pipelines.paths import PathState

STORE_DIRNAME = "store"
STATES_DIRNAME = "states"  # path states of rounds in progress, beside the prompt's images
RECIPE_KEY = "ttsf-recipe"


class Recipe(BaseModel):
    """How an image was made: its candidate, and the pipeline call it was part of (for a candidate on
    a denoising path, its path too: the stages before it are named in its moves)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    noise: NoiseSpec
    steps: int
    batch: tuple[NoiseSpec, ...]
    batch_position: int
    path: PathSpec | None = None

    def chunk(self) -> str:
        """The PNG text chunk (a recipe without a path is written as before paths existed)."""
        return self.model_dump_json(exclude_none=True)


class StoredImage(BaseModel):
    """An image in the store: where, its content hash, how it was made, and whether this call made it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    path: str
    sha256: str
    recipe: Recipe
    generated: bool = False


class Verdict(BaseModel):
    """What the verifier made of one image: its grades, or why it never will grade it; and what that
    cost (the usage of every billed answer for it, and their price when the price is known)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    grades: Grades | None = None
    ungradeable: str | None = None
    usage: tuple[Usage, ...] = ()
    cost_usd: float | None = None

    @model_validator(mode="after")
    def _one_of_the_two(self) -> "Verdict":
        if (self.grades is None) == (self.ungradeable is None):
            raise ValueError("a verdict holds either grades or the reason an image is ungradeable")
        return self


class StoredGrade(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str
    image_sha256: str
    grades: Grades | None = None
    ungradeable: str | None = None
    usage: tuple[Usage, ...] = ()
    cost_usd: float | None = None  # priced on the day it was graded (a grade file holds no time: the same
                                   # search writes the same bytes)


class Store:
    """The image and grade folders for one config's generation and grading identities."""

    def __init__(self, run: ResolvedRun):
        run = require_resolved(run, "Store(run)")
        config = run.config
        root = Path(config.output_dir) / STORE_DIRNAME
        generation, grading = run.generation_identity, run.grading_identity
        self.grade_frames = config.export_args.grade_frames  # frames of a video its grade averages
        self.whole_videos = config.export_args.video_grading == "whole"  # or the mp4 itself is graded
        model = model_slug(config.pretrained_model_name_or_path)
        self.images_dir = root / "images" / f"{model}-{digest(generation)}"
        self.grades_dir = root / "grades" / f"{safe_slug(config.verifier_args.name)}-{digest(grading)}"
        self._identities = {self.images_dir: generation, self.grades_dir: grading}
        self.prices = price_table({model: price.model_dump() for model, price in config.prices.items()})

    # -- images ------------------------------------------------------------------------------

    def image_path(self, prompt: str, candidate: Candidate) -> Path:
        return self.images_dir / prompt_dirname(prompt) / f"{candidate.key()}.png"

    def video_path(self, prompt: str, candidate: Candidate) -> Path:
        return self.image_path(prompt, candidate).with_suffix(VIDEO_SUFFIX)

    def find_image(self, prompt: str, candidate: Candidate) -> StoredImage | None:
        """The stored image (or video) of `candidate`, or None. A file is complete or absent (atomic
        writes; a video's poster is written before it)."""
        video = self.video_path(prompt, candidate)
        if video.is_file() and poster_path(video).is_file():
            return StoredImage(key=candidate.key(), path=str(video), sha256=file_sha256(video),
                               recipe=read_recipe(poster_path(video)))
        path = self.image_path(prompt, candidate)
        if not path.is_file():
            return None
        return StoredImage(key=candidate.key(), path=str(path), sha256=file_sha256(path), recipe=read_recipe(path))

    def write_image(self, prompt: str, candidate: Candidate, image: Image.Image | list[Image.Image], recipe: Recipe,
                    fps: int | None = None) -> StoredImage:
        """Write an image as PNG, or a video (a list of frames) as mp4 at `fps` beside its poster frame."""
        self._note_identity(self.images_dir)
        if isinstance(image, list):
            return self._write_video(prompt, candidate, image, recipe, fps)
        path = self.image_path(prompt, candidate)
        sha = write_png(path, image, {RECIPE_KEY: recipe.chunk()})
        return StoredImage(key=candidate.key(), path=str(path), sha256=sha, recipe=recipe, generated=True)

    def _write_video(self, prompt: str, candidate: Candidate, frames: list[Image.Image], recipe: Recipe,
                     fps: int | None) -> StoredImage:
        if fps is None:
            raise ValueError(f"video {candidate.key()}: a frame rate is needed to write it")
        path = self.video_path(prompt, candidate)
        data = mp4_bytes(frames, fps)
        write_png(poster_path(path), poster_frame(frames), {RECIPE_KEY: recipe.chunk()})
        atomic_write_bytes(path, data)
        return StoredImage(key=candidate.key(), path=str(path), sha256=hashlib.sha256(data).hexdigest(), recipe=recipe,
                           generated=True)

    # -- path states (search on the denoising path) --------------------------------------------

    def state_path(self, prompt: str, candidate: Candidate) -> Path:
        return self.images_dir / prompt_dirname(prompt) / STATES_DIRNAME / f"{candidate.key()}.pt"

    def find_state(self, prompt: str, candidate: Candidate) -> "PathState | None":
        """Where the candidate's path left its sample (written before its image), or None."""
        from ttsf_core.pipelines.paths import PathState

        path = self.state_path(prompt, candidate)
        return PathState.from_bytes(path.read_bytes()) if path.is_file() else None

    def write_state(self, prompt: str, candidate: Candidate, state: "PathState") -> None:
        self._note_identity(self.images_dir)
        atomic_write_bytes(self.state_path(prompt, candidate), state.to_bytes())

    def remove_states(self, prompt: str, candidates: list[Candidate]) -> None:
        """A finished round's states (and those of the noise-rooted parents its first stage started
        from): nothing continues from them; a replay rebuilds them (ttsf_core.engine.path_generation)."""
        for candidate in candidates:
            for done in (candidate, parent_of(candidate)):
                if done is not None:
                    self.state_path(prompt, done).unlink(missing_ok=True)

    # -- grades ------------------------------------------------------------------------------

    def grade_path(self, prompt: str, image_sha256: str) -> Path:
        return self.grades_dir / prompt_dirname(prompt) / f"{image_sha256}.json"

    def find_grade(self, prompt: str, image_sha256: str) -> Verdict | None:
        path = self.grade_path(prompt, image_sha256)
        if not path.is_file():
            return None
        try:
            stored = StoredGrade.model_validate_json(path.read_text(encoding="utf-8"))
            verdict = Verdict(grades=stored.grades, ungradeable=stored.ungradeable, usage=stored.usage,
                              cost_usd=stored.cost_usd)
        except ValidationError as error:
            raise ValueError(f"stored grade {path} is not a valid ttsf grade: {error}") from None
        if stored.prompt != prompt or stored.image_sha256 != image_sha256:
            raise ValueError(f"stored grade {path} belongs to another prompt or image")
        return verdict

    def write_grade(self, prompt: str, image_sha256: str, verdict: Verdict | Grades) -> Verdict:
        """Store a verdict, priced at today's prices when it carries usage; returns it as stored."""
        if isinstance(verdict, Grades):
            verdict = Verdict(grades=verdict)
        if verdict.usage and verdict.cost_usd is None:
            verdict = verdict.model_copy(update={"cost_usd": self.prices.cost(verdict.usage)})
        self._note_identity(self.grades_dir)
        stored = StoredGrade(prompt=prompt, image_sha256=image_sha256, **verdict.model_dump())
        write_json(self.grade_path(prompt, image_sha256), stored.model_dump(mode="json", exclude_defaults=True))
        return verdict

    def _note_identity(self, folder: Path) -> None:
        path = folder / "identity.json"
        if not path.is_file():
            write_json(path, {"covers": self._identities[folder]})


def read_recipe(path: Path) -> Recipe:
    with Image.open(path) as image:
        text = image.info.get(RECIPE_KEY)
    if text is None:
        raise ValueError(f"image {path} carries no {RECIPE_KEY!r} chunk: not written by this version of ttsf")
    return Recipe.model_validate(json.loads(text))
