"""Run folders from before the store (images beside their records, bare seeds) into today's layout.

Such a folder stays readable as it is (`ttsf report` works on it). To resume or extend it without
paying again, `ttsf migrate OLD_RUN_DIR` imports its images into the store (re-encoded with their
recipe: the pixels are unchanged, the noise is the bare seed, the batch is rebuilt from the old
generator's order: consecutive candidates, `batch_size_for_img_gen` at a time) and its grades into
the grade store. The same `ttsf run` command then finds every image and grade and writes the new
records, generating and grading nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.config import ConfigError, RunConfig, digest
from ttsf_core.resolved import ResolvedRun
from ttsf_core.storage.files import model_slug, safe_slug
from ttsf_core.storage.records import RoundRecord, iter_round_records, resolve_image
from ttsf_core.storage.store import Recipe, Store


@dataclass
class Migrated:
    config: RunConfig
    run_dir: Path  # the folder in the current layout, with records rewritten from the store
    images: int
    grades: int
    rounds: int


class _NothingToDo:
    """Stands in for the pipeline and the verifier: migrating must find every image and grade."""

    name = "migration"
    batch_size = 64

    def score(self, prompt, images):
        raise ValueError("migration found an image without a grade: the old records are incomplete")

    def __call__(self):
        raise ValueError("migration would have to generate an image: the old folder is missing some")


def legacy_identity(config: RunConfig) -> dict[str, Any]:
    """The identity the earlier layout hashed into its folder name."""
    from ttsf_core.resolve import resolve, verifier_identity

    verifier = config.verifier_args
    search = resolve(config).search
    # the earlier layout knew nothing of what a verifier sends beyond its args
    grading = {name: value for name, value in verifier_identity(verifier).items() if name != "sent"}
    return {
        "model": config.pretrained_model_name_or_path,
        "torch_dtype": config.torch_dtype,
        "seed": config.seed,
        "pipeline_call_args": config.pipeline_call_args.model_dump(),
        "search_args": {"search_method": search.search_method, "search_rounds": search.search_rounds,
                        "initial_pool_size": search.initial_pool_size},
        "verifier": grading | {"choice_of_metric": resolve(config).metric},
    }


def legacy_run_dir(config: RunConfig) -> Path | None:
    """The earlier layout's folder for this config, when it exists (random search only existed then)."""
    if config.search_args.search_method != "random" or config.search_args.draft_steps is not None:
        return None
    from ttsf_core.resolve import resolve

    folder = (Path(config.output_dir) / model_slug(config.pretrained_model_name_or_path)
              / safe_slug(config.verifier_args.name) / resolve(config).metric / digest(legacy_identity(config)))
    return folder if (folder / "config.json").is_file() else None


def legacy_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"OLD_RUN_DIR: received {str(run_dir)!r}, allowed: a ttsf run folder holding config.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    if "generation" in data.get("identity", {}):
        raise ConfigError(f"OLD_RUN_DIR: received {str(run_dir)!r} (already in the current layout), allowed: a run "
                          "folder written before the store")
    fields = dict(data["config"])
    fields["output_dir"] = str(Path(run_dir).resolve().parents[3])  # wherever the folder is now
    return RunConfig.model_validate(fields)


def migrate(run_dir: Path) -> Migrated:
    """Import the old folder's images and grades, then write its records in the current layout."""
    from ttsf_core.engine.search_engine import SearchEngine
    from ttsf_core.engine.executors import ThreadExecutor
    from ttsf_core.storage.records import RunLayout
    from ttsf_core.resolve import resolve
    from ttsf_core.usecases.runner import write_config

    run = resolve(legacy_config(run_dir))
    config = run.config
    images, grades, prompts = _import(Path(run_dir), run)
    layout = RunLayout(run)
    write_config(layout, run)
    stand_in = _NothingToDo()
    with ThreadExecutor(run, stand_in, stand_in) as executor:
        outcome = SearchEngine(run, executor, grade_chunk=stand_in.batch_size).run_batch(sorted(prompts.items()))
    outcome.raise_first()
    return Migrated(config, layout.run_dir, images, grades, outcome.counts.rounds_recorded)


def _import(run_dir: Path, run: ResolvedRun) -> tuple[int, int, dict[int, str]]:
    config, store = run.config, Store(run)
    steps = config.pipeline_call_args.num_inference_steps
    images = grades = 0
    prompts: dict[int, str] = {}
    for path, record in iter_round_records(run_dir):
        prompts[record.prompt_index] = record.prompt
        for batch in _batches(record, config.batch_size_for_img_gen):
            noises = tuple(NoiseSpec(seed=c.seed) for c in batch)
            for position, item in enumerate(batch):
                candidate = Candidate(noise=noises[position], steps=steps)
                stored = store.find_image(record.prompt, candidate)
                if stored is None:
                    with Image.open(resolve_image(path, item.img_path)) as image:
                        recipe = Recipe(noise=candidate.noise, steps=steps, batch=noises, batch_position=position)
                        stored = store.write_image(record.prompt, candidate, image.convert("RGB"), recipe)
                    images += 1
                if store.find_grade(record.prompt, stored.sha256) is None:
                    store.write_grade(record.prompt, stored.sha256, item.grades)
                    grades += 1
    return images, grades, prompts


def _batches(record: RoundRecord, size: int) -> list[list]:
    candidates = sorted(record.candidates, key=lambda c: c.index)
    return [candidates[start : start + size] for start in range(0, len(candidates), size)]
