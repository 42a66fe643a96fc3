"""A ttsf run folder in the shapes other tools read.

`tt-scale-flux`: the flat folder tt-scale-flux writes and its `process_results.py` reads: for each
prompt and round, `prompt@<prompt>_hash@<sha8>_i@<round>_s@<seed>.json` (its datapoint: prompt,
search_round, num_noises, best_noise_seed, best_score as {"explanation", "score"}, choice_of_metric,
best_img_path) and the round's best image beside it with the same name and `.png`. Seeds are JSON
numbers there, as tt-scale-flux writes them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ttsf_core.storage.records import RoundRecord, iter_round_records, resolve_image

FORMATS = ("tt-scale-flux",)


@dataclass(frozen=True)
class Exported:
    folder: Path
    rounds: int
    skipped: int  # rounds without a gradeable best image (nothing to export for them)


def prompt_to_filename(prompt: str, max_length: int = 100) -> str:
    """tt-scale-flux's utils.prompt_to_filename, so its tools find the files they expect."""
    filename = re.sub(r"[^a-zA-Z0-9]", "_", prompt.strip())
    filename = re.sub(r"_+", "_", filename)
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    base = f"prompt@{filename}_hash@{digest}"
    if len(base) > max_length:
        base = f"prompt@{filename[: max_length - len(digest) - 7]}_hash@{digest}"
    return base


def export_tt_scale_flux(run_dir: Path, out: Path) -> Exported:
    out.mkdir(parents=True, exist_ok=True)
    rounds = skipped = 0
    for path, record in iter_round_records(Path(run_dir)):
        if record.best is None:
            skipped += 1
            continue
        stem = f"{prompt_to_filename(record.prompt)}_i@{record.search_round}_s@{record.best_noise_seed}"
        image = out / f"{stem}.png"
        shutil.copyfile(resolve_image(path, record.best_img_path), image)
        datapoint = _datapoint(record, image)
        (out / f"{stem}.json").write_text(json.dumps(datapoint, indent=4, ensure_ascii=False), encoding="utf-8")
        rounds += 1
    return Exported(folder=out, rounds=rounds, skipped=skipped)


def _datapoint(record: RoundRecord, image: Path) -> dict:
    best = record.best
    grade = best.grades.root.get(record.choice_of_metric) if best.grades is not None else None
    score = {"explanation": grade.explanation, "score": grade.score} if grade is not None else best.score
    datapoint = {
        "prompt": record.prompt,
        "search_round": record.search_round,
        "num_noises": record.num_noises,
        "best_noise_seed": record.best_noise_seed,
        "best_score": score,
        "choice_of_metric": record.choice_of_metric,
        "best_img_path": str(image),
    }
    if getattr(record, "neighbors_improvement", None) is not None:  # zero-order's field (tt-scale-flux's key)
        datapoint["neighbors_improvement"] = record.neighbors_improvement
    return datapoint
