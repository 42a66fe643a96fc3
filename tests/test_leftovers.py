"""The suite's own guard (conftest.py + leftovers.py): a pytest session whose test leaves a process
running fails, naming the test, the pid and the command line, and kills it; so does one whose module
fixture leaves one running past the session. Checked by running such a session in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import leftovers

TESTS = Path(__file__).resolve().parent
INNER = '''
import subprocess

import pytest


@pytest.fixture(scope="module")
def left_running():
    subprocess.Popen(["sleep", "3011"])  # never stopped: outlives the session
    yield


def test_orphans_a_process():
    subprocess.run(["bash", "-c", "sleep 3022 >/dev/null 2>&1 &"], check=True)  # reparented to 1 at once


def test_uses_a_leaky_module_fixture(left_running):
    pass


def test_clean():
    subprocess.run(["true"], check=True)
'''


def _sleepers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if command[:2] in ([b"sleep", b"3011"], [b"sleep", b"3022"]):
                found.append(int(entry.name))
    return found


def test_a_process_left_by_a_test_or_a_session_fixture_fails_the_suite_and_is_killed(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                                 "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                                stdin=subprocess.DEVNULL)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "ERROR at teardown of test_orphans_a_process" in output, output
        assert "started by test_inner.py::test_orphans_a_process still running (killed now)" in output, output
        assert "(parent 1): sleep 3022" in output, output
        assert "processes left behind" in output and "started by this test session" in output, output
        assert ": sleep 3011" in output, output
        assert "3 passed, 1 error" in output, output  # each test passed; the leak is an error at teardown
        assert _sleepers() == [], output
    finally:
        for pid in _sleepers():  # only if the guard failed to kill them
            os.kill(pid, signal.SIGKILL)


def test_a_marked_process_is_found_by_its_environment_wherever_it_hangs():
    marker = leftovers.node_marker("probe", "tests/test_leftovers.py::probe")
    child = subprocess.Popen(["sleep", "3033"], env={**os.environ, leftovers.TEST_VAR: marker},
                             start_new_session=True)
    try:
        found = leftovers.marked(leftovers.TEST_VAR, marker)
        assert [(f.pid, f.command) for f in found] == [(child.pid, "sleep 3033")]
    finally:
        child.kill()
        child.wait(timeout=10)
    assert leftovers.marked(leftovers.TEST_VAR, marker) == []
