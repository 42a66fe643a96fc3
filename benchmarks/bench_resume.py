"""Resume through Prefect: re-running a finished search must redo nothing, and quickly.

A small search runs through the `search_dataset` flow (tiny FLUX, the Gemini verifier against the fake
server from tests/fake_gemini.py, run in its own process with a small latency), then the identical config
runs again, twice:

  first           a fresh output folder: every image is generated and graded.
  rerun           the identical config again: every round record is on disk, so the batch flow submits
                  no task at all (the flow still starts, reads the records and rebuilds the report).
  records deleted the round records (prompts/*/round_*.json) removed, images and Prefect's result
                  storage (output_dir/.prefect-results) kept: every round runs its tasks again, and the
                  generate and verify tasks must be cache hits (generation_key, verification_key), so
                  nothing is generated or sent to the verifier; select-and-write rewrites the records.

Counts, per run: images generated and images verified (tasks.runtime's process counters), requests the
fake Gemini received, PNG files written or rewritten (modification times), task runs the Prefect server
recorded. Targets: 0 generated and 0 verified on both re-runs; the rerun's wall time <= 5% of the first's.

One temporary Prefect server (prefect_test_harness, SQLite, in a subprocess) serves every run and is
started before anything is timed, so its start-up is in no ratio; the pipeline is loaded, and a small
warm-up search run through the flow, before the first timed run. Between runs the script waits until the
server has finished recording the previous one. `--repeats` cycles of the three runs, each in its own
output folder; medians.

    python benchmarks/bench_resume.py                  # ~2 min: 4 prompts x 4 rounds, 2 cycles
    python benchmarks/bench_resume.py --rounds 3 --repeats 1
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root and tests/ on sys.path)

RERUN_TARGET = 0.05
SCENARIOS = ("first", "rerun", "records deleted")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Re-run a finished search through the Prefect flow (and again with its round records deleted): "
        "nothing may be generated or verified again; wall time against the first run.")
    parser.add_argument("--latency-s", type=float, default=0.1, help="fake Gemini answer latency in seconds")
    parser.add_argument("--repeats", type=int, default=2, help="cycles of first / rerun / records deleted; medians")
    parser.add_argument("--prompts", type=int, default=4, choices=range(1, len(_common.PROMPTS) + 1), metavar="N",
                        help=f"prompts searched (1-{len(_common.PROMPTS)})")
    parser.add_argument("--rounds", type=int, default=4, help="search rounds (2+4+8+16 candidates for 4)")
    _common.add_tiny_model_args(parser)
    return parser.parse_args(argv)


@dataclass
class Run:
    cycle: int
    scenario: str
    wall_s: float
    process_cpu_s: float
    server_cpu_s: float  # during the run and after it, until the server was idle again
    report_s: float  # report_dataframe + build_report inside the flow
    heartbeat_s: float  # flow runs waiting for their heartbeat thread at their end
    images_generated: int
    images_verified: int
    verifier_calls: int
    pngs_written: int
    task_runs: int
    records: dict  # (prompt_index, search_round) -> (best seed, best score)


def png_times(run_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in run_dir.glob("prompts/*/*.png")}


def run_flow(cycle: int, scenario: str, config, run_dir: Path, server, prefect) -> Run:
    from tasks import runtime
    from ttsf_core.report import report_dataframe

    flow_module = importlib.import_module("flows.search_dataset")
    report = _common.BusyClock()
    pngs = png_times(run_dir)
    before = (runtime.images_generated(), runtime.images_verified(), server.call_count(), prefect.task_run_count())
    with _common.patched(flow_module, "build_report", report.wrap), \
            _common.patched(flow_module, "report_dataframe", report.wrap), _common.heartbeat_joins() as joins:
        cpu, server_cpu, start = _common.process_cpu_seconds(), prefect.cpu_seconds(), time.perf_counter()
        returned = Path(flow_module.search_dataset(config))
        wall, cpu = time.perf_counter() - start, _common.process_cpu_seconds() - cpu
    server_cpu = prefect.cpu_seconds() - server_cpu + prefect.wait_idle()
    assert returned == run_dir, f"the flow wrote to {returned}, expected {run_dir}"
    written = sum(pngs.get(path) != mtime for path, mtime in png_times(run_dir).items())
    frame = report_dataframe(run_dir)
    records = {(int(row.prompt_index), int(row.search_round)): (int(row.best_noise_seed), float(row.best_score))
               for row in frame.itertuples()}
    return Run(cycle, scenario, wall, cpu, server_cpu, report.seconds, sum(joins),
               runtime.images_generated() - before[0], runtime.images_verified() - before[1],
               server.call_count() - before[2], written, prefect.task_run_count() - before[3], records)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ttsf-bench-resume-") as folder:
        workdir = Path(folder)
        model_dir, prompts_file = _common.prepare_workdir(workdir, args)
        server = _common.ProcessServer(args.latency_s)
        try:
            with _common.PrefectServer() as prefect:
                from flows.storage import result_storage_for
                from tasks import runtime
                from ttsf_core.records import RunLayout

                def config_for(output_dir: Path, **overrides):
                    return _common.search_config(args, model_dir, prompts_file, output_dir, server.url, **overrides)

                runtime.generator_for(config_for(workdir / "unused"))  # load the pipeline before any timing
                warm = config_for(workdir / "warm-up", search_args={"search_rounds": 2}, prompts={"num_prompts": 1})
                run_flow(-1, "warm-up", warm, RunLayout(warm).run_dir.resolve(), server, prefect)
                for cycle in range(args.repeats):
                    config = config_for(workdir / f"cycle-{cycle}")
                    run_dir = RunLayout(config).run_dir.resolve()
                    runs.append(run_flow(cycle, "first", config, run_dir, server, prefect))
                    runs.append(run_flow(cycle, "rerun", config, run_dir, server, prefect))
                    deleted = list(run_dir.glob("prompts/*/round_*.json"))
                    for path in deleted:
                        path.unlink()
                    assert deleted and Path(result_storage_for(config)).is_dir(), "nothing to delete, or no results kept"
                    runs.append(run_flow(cycle, "records deleted", config, run_dir, server, prefect))
                startup_s = prefect.startup_s
        finally:
            server.stop()
    print_report(args, runs, startup_s)
    return 0


def print_report(args, runs: list[Run], startup_s: float) -> None:
    med = _common.median
    images = sum(2 * 2 ** (r - 1) for r in range(1, args.rounds + 1)) * args.prompts
    task_runs = 2 * args.prompts * args.rounds + images
    print(_common.machine_line(args.threads))
    print(f"search: {args.prompts} prompts x {args.rounds} rounds = {images} images, {task_runs} task runs "
          f"(generate + verify + select); tiny FLUX width x{args.width_multiplier}, {args.num_layers}+{args.num_layers} "
          f"blocks, {args.resolution}px, {args.steps} steps; Gemini verifier against the fake server in a process, "
          f"latency {args.latency_s:g} s")
    print(f"Prefect: temporary server (prefect_test_harness, SQLite) started once before any timing, in "
          f"{startup_s:.1f} s (in no number below)")
    header = ["cycle", "run", "wall s", "this process CPU s", "server CPU s", "report s",
              "flow runs joining heartbeat threads s", "images generated", "images verified", "Gemini requests",
              "PNGs written", "task runs recorded (+1 a subflow)", "records as the first run's"]
    rows, problems = [], []
    firsts = {run.cycle: run for run in runs if run.scenario == "first"}
    for run in runs:
        same = run.records == firsts[run.cycle].records and len(run.records) == args.prompts * args.rounds
        rows.append([run.cycle + 1, run.scenario, f"{run.wall_s:.2f}", f"{run.process_cpu_s:.2f}",
                     f"{run.server_cpu_s:.2f}", f"{run.report_s:.2f}", f"{run.heartbeat_s:.2f}", run.images_generated,
                     run.images_verified, run.verifier_calls, run.pngs_written, run.task_runs,
                     "yes" if same else "NO"])
        expected = (images, images, images, images) if run.scenario == "first" else (0, 0, 0, 0)
        counts = (run.images_generated, run.images_verified, run.verifier_calls, run.pngs_written)
        if counts != expected or not same:
            problems.append(f"cycle {run.cycle + 1} {run.scenario}: generated/verified/requests/PNGs {counts}, "
                            f"expected {expected}; records as the first run's: {same}")
    print(_common.markdown_table(header, rows))
    print()

    summary = []
    for scenario in SCENARIOS:
        mine = [run for run in runs if run.scenario == scenario]
        ratio = med([run.wall_s / firsts[run.cycle].wall_s for run in mine])
        cpu_ratio = med([(run.process_cpu_s + run.server_cpu_s)
                         / (firsts[run.cycle].process_cpu_s + firsts[run.cycle].server_cpu_s) for run in mine])
        work = f"{max(r.images_generated for r in mine)} / {max(r.images_verified for r in mine)}"
        if scenario == "first":
            target = ""
        else:
            zero = all(r.images_generated == r.images_verified == r.verifier_calls == 0 for r in mine)
            target = "0 / 0: " + ("met" if zero else "MISSED")
            if scenario == "rerun":
                target += f"; <= {100 * RERUN_TARGET:.0f}%: " + ("met" if ratio <= RERUN_TARGET else "MISSED")
        rest = med([run.wall_s - run.report_s - run.heartbeat_s for run in mine])
        summary.append([scenario, f"{med([run.wall_s for run in mine]):.2f}", f"{100 * ratio:.1f}%",
                        f"{100 * cpu_ratio:.1f}%", work, max(r.verifier_calls for r in mine),
                        f"{med([run.report_s for run in mine]):.2f}", f"{med([run.heartbeat_s for run in mine]):.2f}",
                        f"{rest:.2f}", target])
    print(_common.markdown_table(
        ["run", "wall s", "wall vs first", "CPU (this process + server) vs first", "images generated / verified (max)",
         "Gemini requests (max)", "of the wall: report s", "of the wall: heartbeat joins s", "of the wall: the rest s",
         "targets"], summary))
    if problems:
        print("\nPROBLEMS:\n" + "\n".join(problems))
        raise AssertionError(f"{len(problems)} runs redid work or changed the records")
    print("\nno re-run generated, verified or wrote an image, and every re-run left the same records as the first run")


if __name__ == "__main__":
    sys.exit(main())
