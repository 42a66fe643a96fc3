"""Resume: re-running a finished search must redo nothing, and `ttsf run` must not be much slower at it
than the direct runner.

Target: re-running a finished run with `ttsf run` (the Prefect flow) takes <= 1.5x the direct runner's
re-run (`ttsf run --executor threads`), on the same machine, in one benchmark run.

Part 1, the commands, as subprocesses (what a user types; benchmarks/_ttsf_probe.py runs the same
`ttsf.cli.main` as the installed `ttsf` entry point and adds one stderr line: pipelines loaded, heavy
libraries imported). One config file (tiny-flux, the imagestats verifier or the fake Gemini in its own
process, a few prompts from a file, 3-4 rounds of random search):

  first run       `ttsf run` into a fresh output folder, and `ttsf run --executor threads` into another
                  (each generates and grades every image); Prefect's first run starts its temporary
                  server (a warm-up run before it has already created that server's database, so the
                  one-off migrations are reported apart, not in it).
  re-run          both commands again on the finished output of the `ttsf run` first run, alternating
                  which goes first, `--repeats` times; medians. Both must say "Nothing to do".
The counts come from each command's own output ("This run generated N images and graded M ..." or
"Nothing to do: ..."), the pipelines loaded from the probe line.

Part 2, the flow path itself, in this process, inside one temporary Prefect server started before any
timing (prefect_test_harness): flows.search_dataset.search_dataset(config) on the same finished config
(re-run: must return 0 generated, 0 graded, and record no task run), and again after deleting the round
records with the store kept (records deleted: 0 generated, 0 graded; one select task a round rewrites
the same records), each beside the direct runner (ttsf_core.usecases.runner.run) doing the same.

    python benchmarks/bench_resume.py                  # ~2.3 min: 3 prompts x 4 rounds, 3 re-runs each
    python benchmarks/bench_resume.py --verifier gemini --rounds 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root and tests/ on sys.path)

RERUN_TARGET = 1.5  # `ttsf run` re-run / `ttsf run --executor threads` re-run
PROBE = Path(__file__).resolve().parent / "_ttsf_probe.py"
COMMANDS = {"ttsf run": [], "ttsf run --executor threads": ["--executor", "threads"]}
DID = re.compile(r"This run generated (\d+) images and graded (\d+) \((\d+) images and (\d+) grades were already "
                 r"stored; (\d+) rounds already recorded\)")
NOTHING = re.compile(r"Nothing to do: all (\d+) prompts x (\d+) rounds are recorded \(0 images generated, 0 graded\)")
PROBE_LINE = re.compile(r"PROBE pipelines_loaded=(\d+) imported=(\S+) seconds=([\d.]+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Re-run a finished search with `ttsf run` and `ttsf run --executor threads` (subprocesses), "
        "and through the search_dataset flow in one Prefect server: nothing may be redone; wall times side by side.")
    parser.add_argument("--verifier", choices=("imagestats", "gemini"), default="imagestats",
                        help="imagestats (no model, offline) or gemini against the fake server in its own process")
    parser.add_argument("--latency-s", type=float, default=0.05, help="fake Gemini answer latency (--verifier gemini)")
    parser.add_argument("--prompts", type=int, default=3, choices=range(1, len(_common.PROMPTS) + 1), metavar="N",
                        help=f"prompts searched (1-{len(_common.PROMPTS)})")
    parser.add_argument("--rounds", type=int, default=4, help="search rounds (2+4+8+16 candidates for 4)")
    parser.add_argument("--repeats", type=int, default=3, help="re-runs of each command (and of each in-process path)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in the commands")
    return parser.parse_args(argv)


@dataclass
class Command:
    name: str
    scenario: str
    wall_s: float
    generated: int | None
    graded: int | None
    stored: str  # images / grades already stored, rounds already recorded
    nothing_to_do: bool
    pipelines_loaded: int
    imported: str
    in_process_s: float  # the probe's own measure: from its first line to exit
    output: str = field(repr=False, default="")


def run_command(name: str, config_file: Path, scenario: str) -> Command:
    argv = [sys.executable, str(PROBE), "run", "--config", str(config_file), *COMMANDS[name]]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} ({scenario}) exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    probe = PROBE_LINE.search(done.stderr)
    did, nothing = DID.search(done.stdout), NOTHING.search(done.stdout)
    if probe is None or (did is None and nothing is None):
        raise RuntimeError(f"{name} ({scenario}): unexpected output:\n{done.stdout}\n{done.stderr}")
    if did is not None:
        generated, graded, images, grades, rounds = (int(value) for value in did.groups())
        stored = f"{images} / {grades} / {rounds}"
    else:
        generated = graded = 0
        stored = f"- / - / {int(nothing.group(1)) * int(nothing.group(2))} (all)"
    return Command(name, scenario, wall, generated, graded, stored, nothing is not None, int(probe.group(1)),
                   probe.group(2), float(probe.group(3)), done.stdout)


@dataclass
class InProcess:
    path: str
    scenario: str
    wall_s: float
    generated: int
    graded: int
    rounds_recorded: int
    task_runs: int
    heartbeat_s: float
    report_s: float
    server_cpu_s: float
    same_records: bool


def records_of(run_dir: Path) -> dict:
    from ttsf_core.storage.records import iter_round_records

    return {(r.prompt_index, r.search_round): (r.best_noise.tag(), r.best_score) for _, r in iter_round_records(run_dir)}


def in_process(path: str, scenario: str, config, run_dir: Path, prefect, reference: dict) -> InProcess:
    import importlib

    from ttsf_core.usecases import runner
    flow_module = importlib.import_module("flows.search_dataset")
    report = _common.BusyClock()
    prefect.wait_idle()
    tasks_before = prefect.task_run_count()
    with _common.patched(flow_module, "build_report", report.wrap), \
            _common.patched(flow_module, "report_dataframe", report.wrap), _common.heartbeat_joins() as joins:
        server_cpu, start = prefect.cpu_seconds(), time.perf_counter()
        if path == "search_dataset flow":
            counts = flow_module.search_dataset(config)["counts"]
        else:
            _, outcome = runner.run(config)
            outcome.raise_first()
            counts = vars(outcome.counts)
        wall = time.perf_counter() - start
    server_cpu = prefect.cpu_seconds() - server_cpu + prefect.wait_idle()
    return InProcess(path, scenario, wall, counts["images_generated"], counts["images_graded"],
                     counts["rounds_recorded"], prefect.task_run_count() - tasks_before, sum(joins), report.seconds,
                     server_cpu, records_of(run_dir) == reference)


def write_config(path: Path, args, prompts_file: Path, output_dir: Path, base_url: str | None,
                 rounds: int | None = None, prompts: int | None = None) -> Path:
    verifier = {"name": args.verifier} if base_url is None else {"name": "gemini", "options": {"base_url": base_url}}
    path.write_text(json.dumps({
        "pretrained_model_name_or_path": "tiny-flux",
        "verifier_args": verifier,
        "search_args": {"search_rounds": rounds or args.rounds},
        "prompts": {"dataset": str(prompts_file), "num_prompts": prompts or args.prompts},
        "output_dir": str(output_dir),
    }, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ttsf-bench-resume-") as folder:
        workdir = Path(folder)
        _common.prefect_environment(workdir)  # the commands inherit it: their own Prefect home, quiet, no analytics
        os.environ["TTSF_CACHE_DIR"] = str(workdir / "cache")  # tiny-flux is built here, once, before any timing
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the commands' torch threads
        _common.set_threads(args.threads)
        _common.quiet_libraries()
        _common.use_fake_gemini_key()
        from ttsf_core.pipelines.tiny import ensure_tiny_flux

        ensure_tiny_flux()
        prompts_file = _common.write_prompts(workdir, args.prompts)
        server = _common.ProcessServer(args.latency_s) if args.verifier == "gemini" else None
        url = server.url if server else None
        try:
            commands, flows, startup_s, warm_s = measure(args, workdir, prompts_file, url)
        finally:
            if server:
                server.stop()
    print_report(args, commands, flows, startup_s, warm_s)
    return 0


def measure(args, workdir: Path, prompts_file: Path, url: str | None):
    from ttsf_core.config import build_config
    from ttsf_core.config_files import read_config_file
    from ttsf_core.resolve import resolve
    from ttsf_core.storage.records import RunLayout

    configs = {name: write_config(workdir / f"config-{index}.json", args, prompts_file, workdir / f"out-{index}", url)
               for index, name in enumerate(COMMANDS)}
    warm = write_config(workdir / "config-warm.json", args, prompts_file, workdir / "out-warm", url, rounds=1, prompts=1)
    warm_s = run_command("ttsf run", warm, "warm-up").wall_s  # creates the Prefect server's database
    shutil.rmtree(workdir / "out-warm")
    commands = [run_command(name, configs[name], "first run") for name in COMMANDS]
    finished = configs["ttsf run"]  # both commands re-run this one finished output
    for repeat in range(args.repeats):
        names = list(COMMANDS) if repeat % 2 == 0 else list(COMMANDS)[::-1]
        commands += [run_command(name, finished, "re-run") for name in names]

    config = build_config(read_config_file(finished))
    run_dir = RunLayout(resolve(config)).run_dir
    reference = records_of(run_dir)
    flows: list[InProcess] = []
    with _common.PrefectServer() as prefect:
        in_process("direct runner", "warm-up", config, run_dir, prefect, reference)  # imports, first calls
        in_process("search_dataset flow", "warm-up", config, run_dir, prefect, reference)
        for scenario in ("re-run", "records deleted"):
            for repeat in range(args.repeats):
                paths = ["search_dataset flow", "direct runner"]
                for path in paths if repeat % 2 == 0 else paths[::-1]:
                    if scenario == "records deleted":
                        for record in run_dir.glob("prompts/*/round_*.json"):
                            record.unlink()
                    flows.append(in_process(path, scenario, config, run_dir, prefect, reference))
        startup_s = prefect.startup_s
    return commands, flows, startup_s, warm_s


def print_report(args, commands: list[Command], flows: list[InProcess], startup_s: float, warm_s: float) -> None:
    med = _common.median
    images = sum(2 * 2 ** (r - 1) for r in range(1, args.rounds + 1)) * args.prompts
    rounds = args.prompts * args.rounds
    print(_common.machine_line(args.threads))
    print(f"search: tiny-flux (128px, 4 steps), {args.verifier} verifier"
          + (f" (fake server in a process, latency {args.latency_s:g} s)" if args.verifier == "gemini" else "")
          + f", {args.prompts} prompts x {args.rounds} rounds of random search = {images} images, {rounds} round records")
    print(f"commands run as subprocesses through benchmarks/_ttsf_probe.py (= the `ttsf` entry point + a probe line); "
          f"a warm-up `ttsf run` (1 prompt, 1 round) on a fresh Prefect home took {warm_s:.1f} s (server database "
          "created: in no number below)")
    problems = []
    rows = []
    for run in commands:
        rows.append([run.scenario, run.name, f"{run.wall_s:.2f}", f"{run.in_process_s:.2f}", run.generated, run.graded,
                     run.stored, "yes" if run.nothing_to_do else "no", run.pipelines_loaded, run.imported])
        if run.scenario == "first run" and (run.generated, run.graded, run.pipelines_loaded) != (images, images, 1):
            problems.append(f"{run.name} first run: generated {run.generated}, graded {run.graded}, "
                            f"pipelines {run.pipelines_loaded} (expected {images}, {images}, 1)")
        if run.scenario == "re-run" and not (run.nothing_to_do and run.pipelines_loaded == 0
                                             and "prefect" not in run.imported):
            problems.append(f"{run.name} re-run: did work, loaded a pipeline or imported prefect:\n{run.output}")
    print(_common.markdown_table(["run", "command", "wall s", "of which in the process s", "images generated",
                                  "images graded", "already stored: images / grades / rounds", "Nothing to do",
                                  "pipelines loaded", "heavy libraries imported"], rows))

    first = {run.name: run.wall_s for run in commands if run.scenario == "first run"}
    rerun = {name: med([run.wall_s for run in commands if run.scenario == "re-run" and run.name == name])
             for name in COMMANDS}
    pairs = [(a.wall_s, b.wall_s) for a, b in _rerun_pairs(commands)]
    ratio = med([a / b for a, b in pairs])
    print()
    print(_common.markdown_table(
        ["command", "first run s", "re-run s (median)", "re-run / first run"],
        [[name, f"{first[name]:.2f}", f"{rerun[name]:.2f}", f"{100 * rerun[name] / first[name]:.0f}%"]
         for name in COMMANDS]))
    verdict = "met" if ratio <= RERUN_TARGET else "MISSED"
    print(f"\nre-run ratio `ttsf run` / `ttsf run --executor threads` (median of {len(pairs)} back-to-back pairs): "
          f"{ratio:.2f}x; target <= {RERUN_TARGET:g}x: {verdict}")
    print(f"first-run ratio `ttsf run` / `ttsf run --executor threads`: {first['ttsf run'] / first['ttsf run --executor threads']:.2f}x "
          "(context, no target: the Prefect side starts its temporary server inside the command)")

    print(f"\nin this process, one Prefect server (prefect_test_harness, started in {startup_s:.1f} s before any timing), "
          f"on the finished output of `ttsf run`:")
    rows = []
    for scenario in ("re-run", "records deleted"):
        for path in ("search_dataset flow", "direct runner"):
            mine = [run for run in flows if run.scenario == scenario and run.path == path]
            rows.append([scenario, path, f"{med([r.wall_s for r in mine]):.3f}", max(r.generated for r in mine),
                         max(r.graded for r in mine), max(r.rounds_recorded for r in mine),
                         max(r.task_runs for r in mine), f"{med([r.heartbeat_s for r in mine]):.2f}",
                         f"{med([r.report_s for r in mine]):.2f}", f"{med([r.server_cpu_s for r in mine]):.2f}",
                         "yes" if all(r.same_records for r in mine) else "NO"])
            expected_rounds = 0 if scenario == "re-run" else rounds
            expected_tasks = 0 if (scenario == "re-run" or path == "direct runner") else rounds + 1
            for run in mine:
                if (run.generated, run.graded, run.rounds_recorded, run.task_runs, run.same_records) != (
                        0, 0, expected_rounds, expected_tasks, True):
                    problems.append(f"{path} {scenario}: generated {run.generated}, graded {run.graded}, rounds "
                                    f"{run.rounds_recorded}, task runs {run.task_runs}, same records {run.same_records}")
    print(_common.markdown_table(["scenario", "path", "wall s (median)", "images generated", "images graded",
                                  "rounds recorded", "task runs recorded", "heartbeat joins s", "report s",
                                  "server CPU s", "same records"], rows))
    if problems:
        print("\nPROBLEMS:\n" + "\n".join(problems))
        raise AssertionError(f"{len(problems)} runs redid work, loaded a model or changed the records")
    print("\nno re-run generated or graded an image or loaded a pipeline, and every re-run left the same records")


def _rerun_pairs(commands: list[Command]) -> list[tuple[Command, Command]]:
    """(ttsf run, --executor threads) re-runs, paired back to back as they ran."""
    reruns = [run for run in commands if run.scenario == "re-run"]
    pairs = []
    for index in range(0, len(reruns) - 1, 2):
        a, b = reruns[index], reruns[index + 1]
        pairs.append((a, b) if a.name == "ttsf run" else (b, a))
    return pairs


if __name__ == "__main__":
    sys.exit(main())
