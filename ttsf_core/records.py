"""Candidate and round records, the run folder layout, and atomic file writes.

A run folder is named by the hash of what decides its images and grades (never a timestamp), so the
same config always lands in - and resumes from - the same place. Each prompt gets its own folder with
one PNG per candidate and one JSON per round carrying tt-scale-flux's keys plus every candidate.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ttsf_core.config import RunConfig
from ttsf_core.verifiers.base import METRIC_NAMES, Grades

RECORD_GLOB = "prompts/*/round_*.json"


class CandidateRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    seed: int
    img_path: str
    image_sha256: str
    score: float
    grades: Grades


class RoundRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str
    prompt_index: int
    search_round: int
    num_noises: int
    best_noise_seed: int
    best_score: float
    choice_of_metric: str
    best_img_path: str
    best_index: int
    config_hash: str
    candidates: list[CandidateRecord]

    @model_validator(mode="after")
    def _best_is_one_of_the_candidates(self) -> "RoundRecord":
        if self.num_noises != len(self.candidates) or not 0 <= self.best_index < len(self.candidates):
            raise ValueError(f"num_noises {self.num_noises} / best_index {self.best_index} do not match "
                             f"{len(self.candidates)} candidates")
        best = self.candidates[self.best_index]
        if (best.seed, best.score, best.img_path) != (self.best_noise_seed, self.best_score, self.best_img_path):
            raise ValueError("best_noise_seed, best_score and best_img_path must be those of candidates[best_index]")
        if self.choice_of_metric not in METRIC_NAMES:
            raise ValueError(f"choice_of_metric: received {self.choice_of_metric!r}, allowed: {', '.join(METRIC_NAMES)}")
        return self


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def safe_slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe ASCII slug: whatever the text says, no separators, dots or control chars."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:max_len].strip("_")
    return slug or "x"


class RunLayout:
    """Where every file of a run lives. Paths are derived, never stored state."""

    def __init__(self, config: RunConfig):
        verifier = config.verifier_args
        self.run_dir = (
            Path(config.output_dir)
            / safe_slug(Path(config.pretrained_model_name_or_path).name or "model", 60)
            / safe_slug(verifier.name)
            / verifier.choice_of_metric
            / config.identity_hash()
        )

    def prompt_dir(self, prompt: str) -> Path:
        return self.run_dir / "prompts" / f"{safe_slug(prompt)}-{text_hash(prompt)[:10]}"

    def image_path(self, prompt: str, search_round: int, index: int, seed: int) -> Path:
        return self.prompt_dir(prompt) / f"r{search_round:02d}_c{index:03d}_s{seed}.png"

    def round_image_paths(self, prompt: str, search_round: int, seeds: list[int]) -> list[Path]:
        """Where a round's candidates go, in candidate order."""
        return [self.image_path(prompt, search_round, index, seed) for index, seed in enumerate(seeds)]

    def record_path(self, prompt: str, search_round: int) -> Path:
        return self.prompt_dir(prompt) / f"round_{search_round:02d}.json"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.json"


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` only once fully written: a temp file in the same folder,
    synced, then renamed. Readers never see a partial file; a failure leaves no trace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            yield temp
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as temp:
        temp.write(data)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, image: Image.Image) -> str:
    """Write `image` as PNG atomically; return the sha256 of the bytes written."""
    data = png_bytes(image)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


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


def resolve_image(record_path: Path, img_path: str) -> Path:
    """Images live beside their record; resolve there so a moved run folder still works."""
    return Path(record_path).parent / Path(img_path).name
