"""Select a round's best candidate and write its record (the record marks the round finished)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import runtime
from ttsf_core import rounds
from ttsf_core.config import RunConfig
from ttsf_core.records import RunLayout
from ttsf_core.verifiers.base import Grades


@task(name="select-and-write", task_run_name="select-p{prompt_index}-r{search_round}", cache_policy=NO_CACHE)
def finish_round_task(
    config: RunConfig, prompt_index: int, prompt: str, search_round: int, written: list[dict], grades: list[dict]
) -> dict:
    images = [rounds.WrittenImage(**item) for item in written]
    graded = [Grades.model_validate(item) for item in grades]
    record = rounds.finish_round(config, RunLayout(config), prompt_index, prompt, search_round, images, graded)
    runtime.report_progress(len(images))
    return record.model_dump(mode="json")
