"""Regenerate one candidate's image from its round record alone, and check it against the record.

The record names the candidate's noise spec, its steps, and the pipeline call it was made in (the
batch of noises and its position there: batched float math depends on both); the run folder's
config.json gives the model and pipeline arguments. The same batch is generated again and the
candidate's PNG, with the same recipe chunk, is compared byte for byte with the recorded sha256 (a video
candidate's mp4, with the same frame rate).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ttsf_core.candidates import Candidate
from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.storage.files import atomic_write_bytes, png_bytes
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.resolve import resolve
from ttsf_core.storage.records import CandidateRecord, RoundRecord, read_round_record
from ttsf_core.storage.store import RECIPE_KEY, Recipe
from ttsf_core.video import VIDEO_SUFFIX, mp4_bytes


@dataclass(frozen=True)
class Regenerated:
    path: Path
    sha256: str
    recorded_sha256: str

    @property
    def identical(self) -> bool:
        return self.sha256 == self.recorded_sha256


def run_config_of(record_path: Path) -> RunConfig:
    """The config of the run a record belongs to (run_dir/prompts/<prompt>/round_XX.json)."""
    config_path = Path(record_path).resolve().parents[2] / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"RECORD: received {str(record_path)!r}, allowed: a round record inside a ttsf run folder "
                          f"(no {config_path})")
    data = json.loads(config_path.read_text(encoding="utf-8"))
    return RunConfig.model_validate(data["config"])


def read_candidate(record_path: Path, index: int) -> tuple[RoundRecord, CandidateRecord]:
    record = read_round_record(Path(record_path))
    if record is None:
        raise ConfigError(f"RECORD: received {str(record_path)!r}, allowed: an existing round_XX.json")
    if not 0 <= index < len(record.candidates):
        raise ConfigError(f"--index: received {index}, allowed: 0..{len(record.candidates) - 1}")
    return record, record.candidates[index]


def regenerate(record_path: Path, index: int, out: Path | None = None, device: str | None = None,
               generator: CandidateGenerator | None = None) -> Regenerated:
    record, item = read_candidate(record_path, index)
    config = run_config_of(record_path)
    if device is not None:
        config = config.model_copy(update={"device": device})
    if item.path is not None:
        return _regenerate_on_path(record, index, config, out, generator)
    steps = item.steps or config.pipeline_call_args.num_inference_steps
    batch = item.batch or (item.noise,)
    config = config.model_copy(update={"batch_size_for_img_gen": len(batch)})
    if generator is None:
        from ttsf_core.pipelines import load_pipeline

        generator = CandidateGenerator(load_pipeline(config), resolve(config))
    images = generator.generate(record.prompt, [Candidate(noise=noise, steps=steps) for noise in batch])
    recipe = Recipe(noise=item.noise, steps=steps, batch=tuple(batch), batch_position=item.batch_position)
    media = images[item.batch_position]
    if isinstance(media, list):  # a video: its mp4 is what the record's sha256 covers
        data, suffix = mp4_bytes(media, generator.frames_per_second()), VIDEO_SUFFIX
    else:
        data, suffix = png_bytes(media, {RECIPE_KEY: recipe.chunk()}), ".png"
    path = Path(out) if out is not None else Path.cwd() / f"{item.noise.tag()}-st{steps}{suffix}"
    atomic_write_bytes(path, data)
    return Regenerated(path=path, sha256=hashlib.sha256(data).hexdigest(), recorded_sha256=item.image_sha256)


def _regenerate_on_path(record: RoundRecord, index: int, config: RunConfig, out: Path | None,
                        generator: CandidateGenerator | None) -> Regenerated:
    """A candidate of a search on the denoising path: the round's stages before its own are replayed as
    the search made them (their pipeline calls, their re-noisings), then its own call."""
    from ttsf_core.engine.generate import plan_batches
    from ttsf_core.engine.path_generation import MemoryStates, generate_path_batch, prepare_stage, replay, stages_of, unique
    from ttsf_core.search import build_strategy

    run = resolve(config)
    candidates = [item.candidate(run.steps) for item in record.candidates]
    target = candidates[index]
    stages = stages_of(candidates)
    number = next(n for n, stage in enumerate(stages) if target.key() in {c.key() for c in stage})
    if generator is None:
        from ttsf_core.pipelines import load_pipeline

        generator = CandidateGenerator(load_pipeline(run.config), run)
    batching = build_strategy(run).batch_size_for
    states = MemoryStates()
    replay(generator, record.prompt, stages[:number], states, batching)
    stage = stages[number]
    prepare_stage(generator, record.prompt, stage, states, stages[:number], batching)
    batch = next(batch for batch in plan_batches(unique(stage), batching(stage))
                 if target.key() in {c.key() for c in batch})
    position = next(p for p, candidate in enumerate(batch) if candidate.key() == target.key())
    media = generate_path_batch(generator, record.prompt, batch, states)[position]
    recipe = Recipe(noise=target.noise, steps=target.steps, batch=tuple(c.noise for c in batch),
                    batch_position=position, path=target.path)
    data = png_bytes(media, {RECIPE_KEY: recipe.chunk()})
    path = Path(out) if out is not None else Path.cwd() / f"{target.key()}.png"
    atomic_write_bytes(path, data)
    return Regenerated(path=path, sha256=hashlib.sha256(data).hexdigest(),
                       recorded_sha256=record.candidates[index].image_sha256)
