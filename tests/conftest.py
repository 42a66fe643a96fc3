"""Shared fixtures: an offline tiny FLUX built once per session, small run configs."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Before any ttsf import: the tiny model is built into a session folder, never the user's cache.
os.environ.setdefault("TTSF_CACHE_DIR", tempfile.mkdtemp(prefix="ttsf-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).parent))

from ttsf_core.config import build_config, merge  # noqa: E402


@pytest.fixture(scope="session")
def tiny_flux_dir() -> Path:
    from ttsf_core.pipelines.tiny import ensure_tiny_flux

    return ensure_tiny_flux()


def small_config(tmp_path: Path, **overrides):
    """A tiny-flux config: 3 rounds (2+4+8), imagestats, output under tmp_path."""
    base = {
        "pretrained_model_name_or_path": "tiny-flux",
        "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 2},
        "verifier_args": {"name": "imagestats"},
        "search_args": {"search_rounds": 3},
        "prompts": {"prompt": "a tiny astronaut hatching from an egg on the moon", "num_prompts": None},
        "output_dir": str(tmp_path / "output"),
    }
    return build_config(merge(base, overrides))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_flux_dir):
    from ttsf_core.pipelines import load_pipeline

    return load_pipeline(build_config({"pretrained_model_name_or_path": "tiny-flux", "device": "cpu"}))


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
