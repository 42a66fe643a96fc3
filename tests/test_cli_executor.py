"""`ttsf run --executor auto|prefect|threads`: which path a run takes, how a configured Prefect server is
found (ttsf.prefect_api, checked here against Prefect's own settings), and that the default path with no
server imports no Prefect and writes byte for byte what the Prefect path writes; a finished run's re-run
imports neither torch nor Prefect.

Every process these tests start is bounded by a timeout; nothing here talks to anything but 127.0.0.1
(and only the `--executor prefect` run does, to the temporary server Prefect starts for it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import small_config
from test_cli import PROMPT, TINY, without_prefect_server
from ttsf.cli import main
from ttsf.cli_run import choose_executor
from ttsf.prefect_api import PrefectApi, configured_api

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 300
HEAVY = ("prefect", "torch", "diffusers", "transformers", "matplotlib")


# ---- finding a configured server, as Prefect finds it ---------------------------------------------

U = "http://127.0.0.1:{}/api"
PROFILES = textwrap.dedent("""\
    active = "mine"
    [profiles.mine]
    PREFECT_API_URL = "http://127.0.0.1:4005/api"
    [profiles.other]
    PREFECT_API_URL = "http://127.0.0.1:4006/api"
    [profiles.bare]
    PREFECT_LOGGING_LEVEL = "INFO"
    """)
# name -> (environment, files written in the scenario's folder (the working directory), expected URL).
# "{d}" is the scenario's folder; PREFECT_HOME is {d}/home unless the environment says "~" (then unset, so
# ~/.prefect is read: HOME is the comparison's own folder).
SCENARIOS = {
    "nothing configured": ({}, {}, None),
    "PREFECT_API_URL": ({"PREFECT_API_URL": U.format(4001)}, {}, U.format(4001)),
    "an empty PREFECT_API_URL hides the profile's": ({"PREFECT_API_URL": ""}, {"home/profiles.toml": PROFILES}, None),
    "a lower-case variable name": ({"prefect_api_url": U.format(4001)}, {}, U.format(4001)),
    ".env": ({}, {".env": f"PREFECT_API_URL={U.format(4002)}\n"}, U.format(4002)),
    "the environment before .env": ({"PREFECT_API_URL": U.format(4001)}, {".env": f"PREFECT_API_URL={U.format(4002)}\n"},
                                    U.format(4001)),
    "prefect.toml": ({}, {"prefect.toml": f"[api]\nurl = '{U.format(4003)}'\n"}, U.format(4003)),
    ".env before prefect.toml": ({}, {".env": f"PREFECT_API_URL={U.format(4002)}\n",
                                      "prefect.toml": f"[api]\nurl = '{U.format(4003)}'\n"}, U.format(4002)),
    "pyproject.toml": ({}, {"pyproject.toml": f"[tool.prefect.api]\nurl = '{U.format(4004)}'\n"}, U.format(4004)),
    "prefect.toml before the profile": ({}, {"prefect.toml": f"[api]\nurl = '{U.format(4003)}'\n",
                                             "home/profiles.toml": PROFILES}, U.format(4003)),
    "the active profile under PREFECT_HOME": ({}, {"home/profiles.toml": PROFILES}, U.format(4005)),
    "PREFECT_PROFILE picks another": ({"PREFECT_PROFILE": "other"}, {"home/profiles.toml": PROFILES}, U.format(4006)),
    "a profile without a URL": ({"PREFECT_PROFILE": "bare"}, {"home/profiles.toml": PROFILES}, None),
    "an active profile the file lacks": ({"PREFECT_PROFILE": "gone"}, {"home/profiles.toml": PROFILES}, None),
    "PREFECT_PROFILES_PATH": ({"PREFECT_PROFILES_PATH": "{d}/elsewhere.toml"}, {"elsewhere.toml": PROFILES},
                              U.format(4005)),
    "PREFECT_PROFILES_PATH in .env": ({}, {".env": "PREFECT_PROFILES_PATH={d}/elsewhere.toml\n",
                                           "elsewhere.toml": PROFILES}, U.format(4005)),
    "profiles_path in prefect.toml": ({}, {"prefect.toml": "profiles_path = '{d}/elsewhere.toml'\n",
                                           "elsewhere.toml": PROFILES}, U.format(4005)),
    "test mode reads no profile": ({"PREFECT_TEST_MODE": "1"}, {"home/profiles.toml": PROFILES}, None),
    "a profiles file that is not TOML": ({}, {"home/profiles.toml": "active = \n"}, None),
    "~/.prefect/profiles.toml": ({"PREFECT_HOME": "~"}, {"HOME/.prefect/profiles.toml": PROFILES}, U.format(4005)),
}

COMPARE = textwrap.dedent("""\
    import json, os, sys, warnings
    from pathlib import Path

    warnings.simplefilter("ignore")  # Prefect warns about the file that is not TOML
    scenarios, base = json.loads(sys.argv[1]), dict(os.environ)
    from prefect.settings import Settings  # after HOME is set: Prefect reads ~ once, at import
    from ttsf.prefect_api import configured_api

    answers = {}
    for name, (env, folder) in scenarios.items():
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(base | env)
        answers[name] = [Settings().api.url, configured_api(dict(os.environ), Path(folder)).url]
    print(json.dumps(answers))
    """)


def test_a_configured_server_is_found_where_prefect_finds_it(tmp_path):
    """ttsf.prefect_api against Prefect 3.9.1's own Settings().api.url, source by source, in one process
    that imports Prefect (ttsf itself never does for this)."""
    home = tmp_path / "HOME"
    home.mkdir()
    scenarios = {}
    for index, (name, (env, files, _)) in enumerate(SCENARIOS.items()):
        folder = tmp_path / f"s{index:02d}"
        folder.mkdir()
        for relative, text in files.items():
            path = home / relative.removeprefix("HOME/") if relative.startswith("HOME/") else folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.replace("{d}", str(folder)))
        env = {key: value.replace("{d}", str(folder)) for key, value in env.items()}
        env = env | {"PREFECT_HOME": str(folder / "home")} if env.get("PREFECT_HOME") != "~" else \
            {key: value for key, value in env.items() if key != "PREFECT_HOME"}
        scenarios[name] = (env, str(folder))
    base = {key: value for key, value in os.environ.items() if not key.upper().startswith("PREFECT_")}
    done = subprocess.run([sys.executable, "-c", COMPARE, json.dumps(scenarios)], capture_output=True, text=True,
                          timeout=120, env=base | {"HOME": str(home), "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, _, expected) in SCENARIOS.items():
        prefects, ours = answers[name]
        assert (prefects or None, ours) == (expected, expected), name


def test_where_a_url_was_set_is_said():
    assert configured_api({"PREFECT_API_URL": U.format(1)}, REPO) == PrefectApi(U.format(1), "PREFECT_API_URL in "
                                                                                "the environment")


# ---- the choice ------------------------------------------------------------------------------------

NO_SERVER, SERVER = PrefectApi(None), PrefectApi(U.format(4200), "PREFECT_API_URL in the environment")


def test_auto_takes_prefect_only_where_it_gives_something(tmp_path):
    config = small_config(tmp_path)
    alone = choose_executor(config, "auto", NO_SERVER)
    assert alone.name == "threads" and not alone.temporary_server
    assert alone.note.startswith("ttsf: note: no Prefect server configured") and "prefect server start" in alone.note
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in alone.note and "--executor prefect" in alone.note
    served = choose_executor(config, "auto", SERVER)
    assert served.name == "prefect" and not served.temporary_server
    assert served.note == (f"ttsf: orchestrated by the Prefect server at {U.format(4200)} (PREFECT_API_URL in the "
                           "environment): watch this run in its UI")
    # What only Prefect does takes Prefect, on a temporary server when none is configured.
    for overrides, named in (({"verifier_rpm": 60}, "verifier_rpm"), ({"result_storage": str(tmp_path)}, "result_storage"),
                             ({"dispatch": {"mode": "pool"}}, "dispatch.mode=pool")):
        wanted = choose_executor(small_config(tmp_path, **overrides), "auto", NO_SERVER)
        assert wanted.name == "prefect" and wanted.temporary_server and named in wanted.note, overrides
    # Asked for by name: as asked, with nothing to explain.
    assert (choose_executor(config, "threads", SERVER).name, choose_executor(config, "threads", SERVER).note) == \
        ("threads", None)
    explicit = choose_executor(config, "prefect", NO_SERVER)
    assert (explicit.name, explicit.temporary_server, explicit.note) == ("prefect", True, None)


@pytest.mark.parametrize("command", ["run", "estimate"])
def test_an_unknown_executor_is_one_line_naming_the_flag(command):
    result = CliRunner().invoke(main, [command, "--prompt", PROMPT, *TINY, "--executor", "Threads"])
    assert result.exit_code == 2
    assert result.output.strip() == "ttsf: error: --executor: received 'Threads', allowed: one of auto, prefect, threads"


# ---- the default path without a server ---------------------------------------------------------------

PROBE = textwrap.dedent(f"""\
    import atexit, json, sys
    atexit.register(lambda: print("MODULES " + json.dumps(sorted({{name.split(".")[0] for name in sys.modules}}
                                                                  & set({list(HEAVY)!r}))), file=sys.stderr))
    from ttsf.cli import main
    sys.argv[0] = "ttsf"
    main()
    """)


def _ttsf(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`ttsf run ARGS` in its own process; with the heavy libraries it imported (from its exit hook)."""
    done = subprocess.run([sys.executable, "-c", PROBE, "run", *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    assert len(lines) == 1, done.stderr[-3000:]
    return done, json.loads(lines[0].removeprefix("MODULES "))


def _written(output: Path) -> dict[str, bytes]:
    """What a run decides, byte for byte: its records, the stored images and grades, the report's tables."""
    files = [*output.glob("*/*/*/*/prompts/*/round_*.json"), *output.glob("store/*/*/*/*"),
             *output.glob("store/*/*/identity.json"), *output.glob("*/*/*/*/report/report.*")]
    return {path.relative_to(output).as_posix(): path.read_bytes() for path in files if path.suffix != ".html"}


def test_the_default_without_a_server_imports_no_prefect_and_writes_what_prefect_writes(tmp_path, tiny_flux_dir):
    env = without_prefect_server(tmp_path)
    job = ["--prompt", PROMPT, *TINY, "--search_rounds", "3"]
    default, imported = _ttsf([*job, "--output_dir", str(tmp_path / "default")], env)
    assert "prefect" not in imported and {"torch", "diffusers"} <= set(imported), imported
    assert "generated 14 images and graded 14" in default.stdout
    assert "ttsf: note: no Prefect server configured" in default.stderr
    assert "temporary Prefect server" not in default.stderr

    prefect, imported = _ttsf([*job, "--output_dir", str(tmp_path / "prefect"), "--executor", "prefect"], env)
    assert "prefect" in imported and "generated 14 images and graded 14" in prefect.stdout
    shown = [line for line in prefect.stderr.replace("\r", "\n").split("\n") if line.startswith("ttsf:")]
    assert shown[0].startswith("ttsf: starting a temporary Prefect server"), prefect.stderr[-3000:]

    written = _written(tmp_path / "default")
    assert sum(name.endswith(".json") and "/prompts/" in name for name in written) == 3
    assert sum(name.endswith(".png") for name in written) == 14 and any("report.csv" in name for name in written)
    assert written == _written(tmp_path / "prefect")

    # A finished run again: nothing to do, and nothing heavy imported for it (no model, no Prefect).
    again, imported = _ttsf([*job, "--output_dir", str(tmp_path / "default")], env)
    assert "Nothing to do: all 1 prompts x 3 rounds are recorded" in again.stdout and "Report:" in again.stdout
    assert imported == [], imported
    assert _written(tmp_path / "default") == written
