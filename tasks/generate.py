"""Generate a round's candidates and write their PNGs. Cached across flow runs: its persisted result
is what it wrote (paths + content hashes), never tensors or images."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task

from tasks import runtime
from tasks.cache_keys import generation_key
from ttsf_core import rounds
from ttsf_core.config import RunConfig
from ttsf_core.records import RunLayout


@task(
    name="generate",
    task_run_name="generate-p{prompt_index}-r{search_round}",
    cache_key_fn=generation_key,
    persist_result=True,
    result_serializer="json",
    retries=1,
)
def generate_task(config: RunConfig, prompt_index: int, prompt: str, search_round: int, seeds: list[int]) -> list[dict]:
    generator = runtime.generator_for(config)
    written, _ = rounds.generate_candidates(generator, RunLayout(config), prompt, search_round, seeds)
    return [asdict(item) for item in written]
