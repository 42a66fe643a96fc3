"""Grade one image. Cached by (verifier config, prompt, image hash), so a re-run never re-asks the API
about an image it already graded. Rate limits, 5xx and timeouts retry with exponential backoff and
jitter, never sooner than the server's Retry-After; a wrong key or a persistently invalid answer
fails fast."""

from __future__ import annotations

import time

from prefect import task
from prefect.concurrency.sync import rate_limit
from prefect.tasks import exponential_backoff

from tasks import runtime
from tasks.cache_keys import verification_key
from ttsf_core.config import VerifierArgs
from ttsf_core.rounds import WrittenImage, load_images
from ttsf_core.verifiers.base import RateLimitError, RetryableVerifierError, VerifierConfigError, VerifierError

MAX_RETRY_AFTER_S = 600.0
INVALID_ANSWER_ATTEMPTS = 2  # a model may garble one answer; twice for the same image is persistent


def is_retryable(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: transient failures retry, configuration errors never do."""
    try:
        state.result()
    except VerifierConfigError:
        return False
    except VerifierError:
        return task_run.run_count < INVALID_ANSWER_ATTEMPTS
    except RetryableVerifierError:
        return True
    except Exception:  # noqa: BLE001 - anything unexpected is a bug: do not hammer the API with it
        return False
    return False


@task(
    name="verify",
    task_run_name="verify-p{prompt_index}-r{search_round}-c{index}",
    cache_key_fn=verification_key,
    persist_result=True,
    result_serializer="json",
    retries=6,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_retryable,
)
def verify_task(
    verifier_args: VerifierArgs,
    prompt: str,
    prompt_index: int,
    search_round: int,
    index: int,
    image_path: str,
    image_sha256: str,
    rpm_limit_name: str | None = None,
) -> dict:
    (image,) = load_images([WrittenImage(seed=0, path=image_path, sha256=image_sha256)])
    if rpm_limit_name:
        rate_limit(rpm_limit_name, strict=True)
    try:
        (grades,) = runtime.verifier_for(verifier_args).score(prompt, [image])
    except RateLimitError as error:
        # Prefect's backoff starts after this: together they wait at least what the server asked.
        time.sleep(min(error.retry_after or 0.0, MAX_RETRY_AFTER_S))
        raise
    except VerifierError as error:
        raise type(error)(f"{image_path}: {error}", index) from error
    runtime.note_verified(1)
    return grades.model_dump()
