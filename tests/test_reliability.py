"""What a night on shared machines needs: readable files, no leftovers, one search per folder, short
failure summaries, warnings worth reading."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import small_config
from ttsf.cli import main
from ttsf_core.resolve import resolve
from ttsf_core.storage import files
from ttsf_core.usecases import runner
from ttsf_core.engine.generate import CandidateGenerator
from ttsf_core.storage.locks import RunFolderBusy, RunLock

PROMPT = "a tiny astronaut hatching from an egg on the moon"
TINY = ["--model", "tiny-flux", "--verifier_to_use", "imagestats", "--height", "64", "--width", "64",
        "--num_inference_steps", "2", "--executor", "threads"]


def test_written_files_are_as_readable_as_the_umask_allows(tmp_path, tiny_pipe):
    config = small_config(tmp_path, search_args={"search_rounds": 1})
    prepared, outcome = runner.run(config, generator=CandidateGenerator(tiny_pipe, resolve(config)))
    written = [p for p in Path(config.output_dir).rglob("*") if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".png" for p in written) and any(p.name == "round_01.json" for p in written)
    umask = os.umask(0)
    os.umask(umask)
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # 0644 under the usual 022, not 0600


def test_leftovers_of_killed_writes_are_swept_and_live_ones_kept(tmp_path):
    host = files._HOST
    dead_pid = _dead_pid()
    paths = {
        "dead": tmp_path / f".a.png.w_{host}_{dead_pid}.x1.tmp",
        "alive": tmp_path / f".b.png.w_{host}_{os.getpid()}.x2.tmp",
        "foreign_old": tmp_path / "sub" / ".c.png.w_otherhost_12.x3.tmp",
        "foreign_new": tmp_path / ".d.png.w_otherhost_12.x4.tmp",
        "unnamed_old": tmp_path / ".e.json.abcd.tmp",
        "not_temp": tmp_path / "f.png",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    old = time.time() - 2 * files.FOREIGN_TEMP_MAX_AGE_S
    for name in ("foreign_old", "unnamed_old"):
        os.utime(paths[name], (old, old))
    assert files.sweep_temp_files(tmp_path) == 3
    assert {name for name, path in paths.items() if path.exists()} == {"alive", "foreign_new", "not_temp"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_search_of_one_folder_is_refused_with_who_holds_it(tmp_path, tiny_flux_dir):
    out = tmp_path / "out"
    config = small_config(tmp_path, output_dir=str(out))
    run_dir = runner.prepare_run(config).layout.run_dir
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.');"
        "from ttsf_core.storage.locks import RunLock; lock = RunLock(sys.argv[1]); lock.acquire();"
        "print('held', flush=True); time.sleep(60)"), str(run_dir)], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid} on {socket.gethostname()}"):
            RunLock(run_dir).acquire()
        result = CliRunner().invoke(main, ["run", "--prompt", PROMPT, *TINY, "--output_dir", str(out)])
        assert result.exit_code == 2
        assert f"being searched by pid {holder.pid}" in result.output and "allowed: a run folder no other" in result.output
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with RunLock(run_dir), RunLock(run_dir):  # free again once its holder is gone; re-entrant in one process
        pass


def test_a_failed_search_prints_one_line_with_what_to_do(tmp_path, tiny_flux_dir, monkeypatch):
    from ttsf_core.verifiers import imagestats
    from ttsf_core.verifiers.base import RetryableVerifierError

    def unavailable(self, prompt, images):
        raise RetryableVerifierError("503 UNAVAILABLE: the service is overloaded")

    monkeypatch.setattr(imagestats.ImageStatsVerifier, "score", unavailable)
    result = CliRunner().invoke(main, ["run", "--prompt", PROMPT, *TINY, "--search_rounds", "2", "--output_dir",
                                       str(tmp_path / "out"), "--config", str(_fast_retries(tmp_path))])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("ttsf: error:")]
    assert len(errors) == 1 and "503 UNAVAILABLE" in errors[0] and "run the same command again to resume" in errors[0]
    log = Path(errors[0].rsplit("details: ", 1)[1].rstrip(")"))
    assert "Traceback" not in result.output and "Traceback" in log.read_text()  # the traceback is in the log


def _fast_retries(tmp_path: Path) -> Path:
    path = tmp_path / "fast.json"
    path.write_text('{"verifier_retries": 1, "verifier_retry_backoff_s": 0}')
    return path


def test_warnings_say_what_will_not_happen_as_asked(tmp_path, tiny_flux_dir):
    data = tmp_path / "two.txt"
    data.write_text("a red fox\n" + "a very long prompt about " * 30 + "\n")
    result = CliRunner().invoke(main, ["run", "--dataset", str(data), "--num_prompts", "5", *TINY,
                                       "--search_rounds", "1", "--output_dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("ttsf: warning:")]
    assert any("asked for 5" in line and "holds 2 usable prompts" in line for line in warnings), warnings
    assert any("prompt 1 is" in line and "max_sequence_length is 64" in line for line in warnings), warnings
