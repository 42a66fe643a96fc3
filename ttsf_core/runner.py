"""Run a whole search directly (no orchestrator): generation on this thread, grading overlapped.

Random-search rounds are independent, so while round r's images are being graded the generator
already draws round r+1: the GPU does not wait on the verifier's API.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ttsf_core import rounds
from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.generate import CandidateGenerator
from ttsf_core.pipelines import check_resolution, load_pipeline
from ttsf_core.prompts import load_prompts
from ttsf_core.records import RoundRecord, RunLayout, read_round_record, write_json
from ttsf_core.search import round_order
from ttsf_core.verifiers.base import Verifier
from ttsf_core.verifiers.registry import build_verifier

# Rounds graded at once; bounds the images held in memory while the verifier catches up.
MAX_ROUNDS_IN_FLIGHT = 4


@dataclass
class PreparedRun:
    config: RunConfig
    layout: RunLayout
    prompts: list[str]
    verifier: Verifier


def prepare_run(config: RunConfig) -> PreparedRun:
    """Every check that can fail on bad input, before any model is loaded."""
    verifier = build_verifier(config.verifier_args)
    check_resolution(config)
    prompts = load_prompts(config.prompts)
    layout = RunLayout(config)
    ensure_writable(layout.run_dir, config.output_dir)
    write_json(layout.config_path, {"identity": config.search_identity(), "config": config.model_dump(mode="json")})
    return PreparedRun(config=config, layout=layout, prompts=prompts, verifier=verifier)


def ensure_writable(run_dir: Path, output_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"output_dir: received {str(output_dir)!r}, allowed: a folder this user can write ({error.strerror})"
        ) from None


def run_search(
    prepared: PreparedRun, generator: CandidateGenerator, on_candidates: Callable[[int], None] | None = None
) -> list[RoundRecord]:
    """Every prompt's every round; finished rounds (records on disk) are read back, not redone."""
    config, layout = prepared.config, prepared.layout
    finished: list[RoundRecord] = []
    slots = threading.BoundedSemaphore(MAX_ROUNDS_IN_FLIGHT)
    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=MAX_ROUNDS_IN_FLIGHT, thread_name_prefix="ttsf-grade") as pool:
        for prompt_index, prompt in enumerate(prepared.prompts):
            for search_round in round_order(config.search_args.search_method, config.search_args.search_rounds):
                done = read_round_record(layout.record_path(prompt, search_round))
                if done is not None:
                    finished.append(done)
                    _report(on_candidates, done.num_noises)
                    continue
                seeds = rounds.plan(config, prompt, search_round)
                reused = rounds.reuse_candidates(layout, prompt, search_round, seeds)
                written, images = reused or (None, generator.generate(prompt, seeds))
                slots.acquire()
                futures.append(pool.submit(_write_grade_finish, prepared, prompt_index, prompt, search_round,
                                           seeds, written, images, slots, on_candidates))
    # Every round that could finish has finished (and is on disk) before the first error is raised.
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    finished.extend(f.result() for f in futures)
    return sorted(finished, key=lambda r: (r.prompt_index, r.search_round))


def _write_grade_finish(prepared, prompt_index, prompt, search_round, seeds, written, images, slots, on_candidates):
    """Off the generator's thread: PNG encoding and fsync would otherwise stall the next batch."""
    try:
        if written is None:
            written = rounds.write_candidates(prepared.layout, prompt, search_round, seeds, images)
        grades = rounds.grade(prepared.verifier, prompt, images)
        record = rounds.finish_round(prepared.config, prepared.layout, prompt_index, prompt, search_round,
                                     written, grades)
        _report(on_candidates, len(written))
        return record
    finally:
        slots.release()


def _report(callback: Callable[[int], None] | None, count: int) -> None:
    if callback is not None:
        callback(count)


def run(config: RunConfig, on_candidates: Callable[[int], None] | None = None) -> tuple[PreparedRun, list[RoundRecord]]:
    """Validate, load the pipeline once, search every prompt."""
    prepared = prepare_run(config)
    generator = CandidateGenerator(load_pipeline(config), config)
    return prepared, run_search(prepared, generator, on_candidates)
