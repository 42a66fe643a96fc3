"""Verifiers grade images for a prompt on the six aspects of the one grading schema."""

from ttsf_core.verifiers.base import (
    METRIC_NAMES,
    AspectGrade,
    Grades,
    RateLimitError,
    RetryableVerifierError,
    Verifier,
    VerifierConfigError,
    VerifierError,
)

__all__ = [
    "METRIC_NAMES",
    "AspectGrade",
    "Grades",
    "RateLimitError",
    "RetryableVerifierError",
    "Verifier",
    "VerifierConfigError",
    "VerifierError",
]
