"""Shared fixtures: an offline tiny FLUX built once per session, small run configs; and the check that
no test leaves a process behind (tests/leftovers.py)."""

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

import leftovers  # noqa: E402
from ttsf_core.config import build_config, merge  # noqa: E402

# Every process the tests start inherits this (leftovers.py). Set, not setdefault: a pytest run inside a
# test marks its own children; the outer session still sees that inner pytest, and what it starts outside
# its own tests, by the outer test's marker, which the inner session leaves in place between its tests.
SESSION_MARKER = leftovers.new_session_marker()
os.environ[leftovers.SESSION_VAR] = SESSION_MARKER


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(request):
    """Fails a test (an error at teardown) whose processes are still running after its fixtures are torn
    down: a server, worker, stand-in API or `ttsf` subprocess it started, orphaned or not. Autouse and
    function-scoped, so it is set up before, and torn down after, the test's other function fixtures;
    module and session fixtures are set up before it, so what they start is not charged to the test."""
    marker = leftovers.node_marker(SESSION_MARKER, request.node.nodeid)
    outer = os.environ.get(leftovers.TEST_VAR)
    os.environ[leftovers.TEST_VAR] = marker
    try:
        yield
    finally:
        if outer is None:
            os.environ.pop(leftovers.TEST_VAR, None)
        else:
            os.environ[leftovers.TEST_VAR] = outer
    left = leftovers.still_running(leftovers.TEST_VAR, marker, exclude_fn=leftovers.prefect_singleton_servers)
    if left:
        leftovers.kill(left)
        pytest.fail(leftovers.report(left, request.node.nodeid), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """Fails the suite when anything the tests started outlives the session (fixtures of every scope are
    torn down by now; Prefect's own temporary servers are stopped first, as its exit hook would)."""
    leftovers.stop_prefect_singleton_servers()
    left = leftovers.still_running(leftovers.SESSION_VAR, SESSION_MARKER)
    if left:
        leftovers.kill(left)
        message = leftovers.report(left, "this test session")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "processes left behind", red=True)
            reporter.write_line(message)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
