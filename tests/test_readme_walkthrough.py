"""The README's first-hour commands, read out of README.md and run as written.

- "The tests": the README's test command is what .ci/run runs, and it installs the system packages
  the tests need (scripts/system-deps.sh) before anything else.
- "Deployments, the whole way": against a fresh `prefect server` on 127.0.0.1, the one-process path
  (`python deployments/serve.py --tiny`, then the README's `prefect deployment run` line), then the
  README's work-pool and deploy lines exactly as written (every deployment of prefect.yaml created, the
  deploy line's comment naming them all, every schedule inactive, no run queued), then the README's
  schedule-resume line. If the README drifts from what works, this breaks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import prefect_server as server_helpers
from ttsf_core.resolve import resolve
from prefect_server import REPO, get_json, post_json, running_server, stop, tail

README = REPO / "README.md"
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
WALKTHROUGH_HEADING = "### Deployments, the whole way"
COMMAND_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300
REGISTER_TIMEOUT_S = 120


# ---- reading the README --------------------------------------------------------------------------


def _section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find(heading)
    assert start >= 0, f"README.md has no {heading!r} section"
    rest = text[start + len(heading):]
    end = re.search(r"^#{2,3} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def _bash_lines(markdown: str) -> list[str]:
    """Every command line of the ```bash blocks, backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip()]
    return lines


def _walkthrough() -> list[str]:
    lines = _bash_lines(_section(WALKTHROUGH_HEADING))
    assert lines, f"README.md's {WALKTHROUGH_HEADING!r} section has no bash block"
    return lines


def _matching(lines: list[str], prefix: str) -> list[str]:
    return [line for line in lines if line.startswith(prefix)]


# ---- the test command ----------------------------------------------------------------------------


def test_the_readme_test_command_is_what_ci_runs_and_installs_the_system_packages():
    text = README.read_text(encoding="utf-8")
    start = text.index("**The tests**")
    command = _bash_lines(text[start:start + 1500])[0]
    assert command == "bash scripts/test.sh", command

    ci_commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    substantive = [line for line in ci_commands if not line.startswith(("set ", "cd "))]
    assert len(substantive) == 1 and command in substantive[0], ci_commands

    steps = [line for line in (REPO / "scripts" / "test.sh").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    order = [next(i for i, line in enumerate(steps) if needle in line)
             for needle in ("scripts/system-deps.sh", "scripts/setup.sh", "pytest")]
    assert order == sorted(order), steps  # system packages first, then .venv, then the suite


def test_system_deps_is_a_quiet_no_op_once_installed():
    """What the README's command runs first on every call: with chromium and PostgreSQL present it must
    not touch apt (no network, no root needed) and must say nothing."""
    import glob
    import shutil

    if shutil.which("chromium") is None or not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.fail("chromium or PostgreSQL is missing: run the README's test command, `bash scripts/test.sh`, "
                    "which installs them")
    result = subprocess.run(["bash", "scripts/system-deps.sh"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# ---- the Prefect walk-through --------------------------------------------------------------------


def _shell_env(env: dict) -> dict:
    """The server's env with this interpreter's bin folder first: `prefect` and `python` in the README's
    lines are the project's, as with `.venv` active."""
    return {**env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}


def _sh(line: str, env: dict) -> str:
    """One README line, exactly as written, through bash, from the repository root."""
    result = subprocess.run(["bash", "-c", line], cwd=REPO, env=_shell_env(env), capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"README line exited {result.returncode}:\n$ {line}\n{output}"
    return output


def _deployments(api_url: str) -> dict[str, dict]:
    flows = {flow["id"]: flow["name"] for flow in post_json(f"{api_url}/flows/filter", {})}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in post_json(f"{api_url}/deployments/filter", {})}


def _wait_for(what: str, check, timeout_s: float, log: Path | None = None, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 1):  # bounded by count as well as by time
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s} s\n{tail(log) if log else ''}"
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not after {timeout_s} s\n{tail(log) if log else ''}")


def _expected_yaml_deployments() -> dict[str, dict]:
    document = yaml.safe_load(PREFECT_YAML.read_text())
    names = {}
    for deployment in document["deployments"]:
        flow = "search-batch" if deployment["entrypoint"].endswith(":search_batch") else "search-dataset"
        names[f"{flow}/{deployment['name']}"] = deployment
    return names


def _serve_module():
    """deployments/serve.py as a module (it is a script, not a package member)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ttsf_deployments_serve", REPO / "deployments" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_tiny_default_name_is_the_one_the_readme_runs():
    serve = _serve_module()
    run_lines = [line for line in _walkthrough() if line.startswith("prefect deployment run 'search-dataset/tiny-cpu'")]
    assert run_lines, _walkthrough()
    assert f"{serve.FLOW_NAME}/{serve.parse_args(['--tiny']).name}" == "search-dataset/tiny-cpu"
    assert serve.parse_args([]).name == "serve"
    assert serve.parse_args(["--tiny", "--name", "mine"]).name == "mine"
    with pytest.raises(SystemExit):
        serve.parse_args(["--name", "a/b"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_prefect_walkthrough_runs_as_written(tmp_path, tiny_flux_dir):
    lines = _walkthrough()
    exports = _matching(lines, "export PREFECT_API_URL=")
    assert [line.partition("#")[0].strip() for line in exports] == ["export PREFECT_API_URL=http://127.0.0.1:4200/api"]
    pools = _matching(lines, "prefect work-pool create ")
    deploys = _matching(lines, "prefect --no-prompt deploy ")
    serves = [re.search(r"python deployments/serve\.py[^#(]*", line).group(0).split()
              for line in lines if "python deployments/serve.py" in line]
    tiny_runs = _matching(lines, "prefect deployment run 'search-dataset/tiny-cpu'")
    resumes = _matching(lines, "prefect deployment schedule resume ")
    assert pools and len(deploys) == 1 and len(serves) == 1 and len(tiny_runs) == 1 and len(resumes) == 1, lines
    expected = _expected_yaml_deployments()

    with running_server(tmp_path) as (api_url, env, server_log):
        env = {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # the served process notices a run soon

        # 1. The one-process path: `python deployments/serve.py --tiny`, then the README's run line.
        #    Started in a folder of its own: the tiny config's relative output_dir lands there.
        serve_cwd = tmp_path / "serve-cwd"
        serve_cwd.mkdir()
        argv = serves[0]
        assert argv[:2] == ["python", "deployments/serve.py"], argv
        serve_log = tmp_path / "serve.log"
        served = server_helpers.start([sys.executable, str(REPO / argv[1]), *argv[2:]], env, serve_log, serve_cwd)
        try:
            _wait_for("serve.py registered search-dataset/tiny-cpu",
                      lambda: served.poll() is not None or "search-dataset/tiny-cpu" in _deployments(api_url),
                      REGISTER_TIMEOUT_S, serve_log)
            assert served.poll() is None, f"serve.py exited {served.returncode}:\n{tail(serve_log)}"
            assert _deployments(api_url)["search-dataset/tiny-cpu"]["work_pool_name"] is None
            result = subprocess.run(["bash", "-c", tiny_runs[0]], cwd=REPO, env=_shell_env(env), capture_output=True,
                                    text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
            output = result.stdout + result.stderr
            match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
            assert match, f"$ {tiny_runs[0]}\n{output}\n--- serve.py ---\n{tail(serve_log)}"
            run = get_json(f"{api_url}/flow_runs/{match.group(1)}")
            assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{output}\n--- serve.py ---\n{tail(serve_log, 80)}"
            assert result.returncode == 0, output
        finally:
            stop(served)
        serve = _serve_module()
        from ttsf_core.config import build_config, merge
        from ttsf_core.prompts import prompt_source_label

        tiny = build_config(merge(serve.TINY_CONFIG, {}))
        # Named as documented: <what>-<how many>-<date>-<search hash>.
        assert re.fullmatch(rf"{re.escape(prompt_source_label(tiny.prompts))}-\d{{8}}-\d{{4}}-{resolve(tiny).identity_hash[:8]}",
                            run["name"]), run["name"]
        assert list((serve_cwd / "output" / "tiny-cpu").rglob("report.csv")), sorted(serve_cwd.rglob("*"))

        # 2. The README's pool and deploy lines, exactly as written.
        for line in pools:
            _sh(line, env)
        deployed = _sh(deploys[0], env)
        on_server = _deployments(api_url)
        assert set(expected) <= set(on_server), f"deployed {sorted(on_server)}, prefect.yaml has {sorted(expected)}\n{deployed}"
        comment = deploys[0].partition("#")[2]
        for name in expected:  # the deploy line's comment names every deployment it makes
            flow, _, deployment = name.partition("/")
            assert flow in comment and deployment in comment, (name, comment)
        for name, spec in expected.items():
            assert on_server[name]["work_pool_name"] == spec["work_pool"]["name"], name
        # 3. Schedules are created inactive, and nothing is queued.
        nightly = on_server["search-dataset/nightly"]
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"], nightly["schedules"]
        for name, deployment in on_server.items():
            assert all(not s["active"] for s in deployment["schedules"]), (name, deployment["schedules"])
        scheduled = post_json(f"{api_url}/flow_runs/filter",
                              {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}}})
        assert scheduled == [], [(r["name"], r["state_type"]) for r in scheduled]

        # 4. serve.py --tiny now refuses to take tiny-cpu off its pool.
        refused = subprocess.run([sys.executable, str(REPO / argv[1]), *argv[2:]], cwd=serve_cwd, env=env,
                                 capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "--name: received 'tiny-cpu'" in refused.stderr and "'ttsf-process'" in refused.stderr, refused.stderr
        assert _deployments(api_url)["search-dataset/tiny-cpu"]["work_pool_name"] == "ttsf-process"

        # 5. The README's line switching the nightly on; deploying again switches it off.
        _sh(resumes[0], env)
        schedules = _deployments(api_url)["search-dataset/nightly"]["schedules"]
        assert [s["active"] for s in schedules] == [True], schedules
        _sh(deploys[0], env)
        schedules = _deployments(api_url)["search-dataset/nightly"]["schedules"]
        assert [s["active"] for s in schedules] == [False], schedules
