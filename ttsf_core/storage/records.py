"""Candidate and round records, and the run folder layout.

A run folder is named by the hash of what decides its records (images, grades, selection; never a
timestamp, never the round count), so the same config always lands in - and resumes from - the same
place, and a longer search extends a shorter one. Each prompt gets a folder with one JSON per round
carrying tt-scale-flux's keys plus every candidate: its noise spec, steps, image and grades. Images
and grades themselves live in the store (ttsf_core.storage.store), shared by every run of the output folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ttsf_core.candidates import Candidate, NoiseSpec, PathSpec, Role, Seed, Stage
from ttsf_core.resolved import ResolvedRun, require_resolved
from ttsf_core.storage.files import model_slug, prompt_dirname, safe_slug, write_json
from ttsf_core.verifiers.base import Grades, Usage

RECORD_GLOB = "prompts/*/round_*.json"


class CandidateRecord(BaseModel):
    """One graded image of a round. `img_path` is relative to the record's folder (absolute in records
    written before the store existed); `batch` lists the noises generated in the same pipeline call, in
    order, `batch_position` this one's place there: batched float math depends on both, so together
    they make the image reproducible bit for bit."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    seed: Seed
    noise: NoiseSpec
    steps: int | None = None  # None: a record from before drafts (the run's num_inference_steps)
    stage: Stage = "final"
    role: Role = "sample"
    # Search on the denoising path: the candidate's moves from its noise, and its lineage (the index
    # here of the candidate it continues; FK steering: that parent's resampling weight).
    path: PathSpec | None = None
    parent: int | None = None
    weight: float | None = None
    img_path: str
    image_sha256: str
    score: float | None
    grades: Grades | None
    ungradeable: str | None = None  # why the verifier never graded it (then score and grades are None)
    batch: tuple[NoiseSpec, ...] = ()
    batch_position: int = 0
    # What grading it cost: the model version that answered, its tokens, and their price when graded
    # (None: a verifier without a price, or a grade made before ttsf recorded usage).
    usage: tuple[Usage, ...] = ()
    cost_usd: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_noise(cls, data: Any) -> Any:
        if isinstance(data, dict) and "noise" not in data and "seed" in data:
            data = {**data, "noise": {"seed": data["seed"]}}
        return data

    def candidate(self, default_steps: int) -> Candidate:
        return Candidate(noise=self.noise, steps=self.steps or default_steps, stage=self.stage, role=self.role,
                         path=self.path, parent=self.parent, weight=self.weight)


class RoundRecord(BaseModel):
    """A round's record: tt-scale-flux's keys, ttsf's, and the fields its strategy adds (its file's
    `record_fields`, e.g. zero-order's neighbors_improvement), kept as they were written."""

    model_config = ConfigDict(extra="allow", frozen=True)
    prompt: str
    prompt_index: int
    search_round: int
    num_noises: int
    # The best_* fields are None only when no final image of the round could be graded.
    best_noise_seed: Seed | None
    best_score: float | None
    choice_of_metric: str
    best_img_path: str | None
    best_index: int | None
    config_hash: str
    candidates: list[CandidateRecord]
    search_method: str = "random"
    best_noise: NoiseSpec | None = None
    # Denoiser evaluations this round added to the prompt's search (steps of images not in earlier rounds;
    # a path's every run, intermediate ones included, once).
    nfe: int | None = None
    ungradeable: int = 0  # candidates the verifier never graded (excluded from selection)
    # Grades this round asked of the run's verifier, and of --path_verifier (intermediate images) when
    # one is set (None: a record written before ttsf counted them).
    verifier_calls: int | None = None
    path_verifier_calls: int | None = None

    @model_validator(mode="after")
    def _best_is_one_of_the_candidates(self) -> "RoundRecord":
        if self.best_index is None:
            if any(c.grades is not None for c in self.final_candidates()):
                raise ValueError("best_index is None although a final candidate was graded")
            return self
        if not 0 <= self.best_index < len(self.candidates):
            raise ValueError(f"best_index {self.best_index} is not among {len(self.candidates)} candidates")
        best = self.candidates[self.best_index]
        if (best.seed, best.score, best.img_path) != (self.best_noise_seed, self.best_score, self.best_img_path):
            raise ValueError("best_noise_seed, best_score and best_img_path must be those of candidates[best_index]")
        if best.stage != "final":
            raise ValueError(f"candidates[{self.best_index}] is a {best.stage} image: the best is chosen among "
                             "final images")
        return self

    @property
    def best(self) -> CandidateRecord | None:
        return None if self.best_index is None else self.candidates[self.best_index]

    def final_candidates(self) -> list[CandidateRecord]:
        return [candidate for candidate in self.candidates if candidate.stage == "final"]


class RunLayout:
    """Where every file of a run lives. Paths are derived, never stored state."""

    def __init__(self, run: ResolvedRun):
        run = require_resolved(run, "RunLayout(run)")
        config = run.config
        self.output_dir = Path(config.output_dir)
        self.run_dir = (self.output_dir / model_slug(config.pretrained_model_name_or_path)
                        / safe_slug(config.verifier_args.name) / run.metric / run.identity_hash)

    def prompt_dir(self, prompt: str) -> Path:
        return self.run_dir / "prompts" / prompt_dirname(prompt)

    def record_path(self, prompt: str, search_round: int) -> Path:
        return self.prompt_dir(prompt) / f"round_{search_round:02d}.json"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.json"


def write_round_record(path: Path, record: RoundRecord) -> None:
    write_json(path, record.model_dump(mode="json"))


def read_round_record(path: Path) -> RoundRecord | None:
    """The finished record at `path`, or None when the round has not finished (no file yet)."""
    if not path.is_file():
        return None
    try:
        return RoundRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise ValueError(f"round record {path} is not a valid ttsf record: {error}") from None


def iter_round_records(run_dir: Path) -> list[tuple[Path, RoundRecord]]:
    """Every round record under a run folder, ordered by prompt index then round."""
    found = []
    for path in sorted(Path(run_dir).glob(RECORD_GLOB)):
        record = read_round_record(path)
        if record is not None:
            found.append((path, record))
    return sorted(found, key=lambda item: (item[1].prompt_index, item[1].search_round))


def relative_image_path(record_path: Path, image_path: Path) -> str:
    """How a record names an image: relative to the record's folder, so a moved output folder works."""
    return Path(os.path.relpath(Path(image_path).absolute(), Path(record_path).parent.absolute())).as_posix()


def resolve_image(record_path: Path, img_path: str) -> Path:
    """A record's image path as a usable path: relative ones from the record's folder; absolute ones
    (older records, whose images lived beside them) there, else beside the record."""
    path = Path(img_path)
    if not path.is_absolute():
        return Path(os.path.normpath(Path(record_path).parent / path))
    return path if path.is_file() else Path(record_path).parent / path.name
