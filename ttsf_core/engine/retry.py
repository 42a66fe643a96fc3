"""When and how long to wait before asking a verifier again: one policy for every executor.

Rate limits, 5xx and timeouts retry with exponential backoff and jitter, never sooner than the
server's Retry-After; a configuration error (a rejected key) never retries; an answer that does not
fit the grading schema retries a bounded number of times (a model may garble an answer now and then),
after which the image is recorded as ungradeable rather than blocking its round.
"""

from __future__ import annotations

import random

from ttsf_core.verifiers.base import RetryableVerifierError, VerifierConfigError, VerifierError

JITTER = 0.5  # each delay is scaled by a factor drawn from [1 - JITTER, 1 + JITTER]
MAX_RETRY_AFTER_S = 600.0


def is_retryable(error: BaseException, attempt: int, retries: int, invalid_attempts: int) -> bool:
    """Whether attempt number `attempt` (1-based), which failed with `error`, deserves another:
    transient failures up to `retries` more attempts, invalid answers up to `invalid_attempts` in all."""
    if isinstance(error, VerifierConfigError):
        return False
    if isinstance(error, VerifierError):
        return attempt < invalid_attempts
    return isinstance(error, RetryableVerifierError) and attempt <= retries


def server_wait(error: BaseException) -> float:
    """What the server asked us to wait (Retry-After), capped; 0 when it asked nothing."""
    retry_after = getattr(error, "retry_after", None) or 0.0
    return min(float(retry_after), MAX_RETRY_AFTER_S)


def backoff_delay(attempt: int, base_s: float, error: BaseException | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt `attempt`: base * 2**(attempt-1), jittered, >= Retry-After."""
    factor = 1 + JITTER * (2 * (rng or random).random() - 1)
    return max(base_s * 2 ** (attempt - 1) * factor, server_wait(error) if error is not None else 0.0)
