"""What Prefect costs: the same search through the `search_dataset` flow and through ttsf_core directly.

Both sides search the same prompts with the same tiny FLUX pipeline (loaded once, through
tasks.runtime.generator_for, before anything is timed; the direct side reuses that very
CandidateGenerator, and the process-wide GeminiVerifier of tasks.runtime.verifier_for, so neither side
loads a model or builds a client inside its timing) against the same fake Gemini, which runs in its own
process and answers after a fixed latency.

  prefect  flows.search_dataset.search_dataset(config): one search-batch subflow (prompts_per_batch 8),
           a generate task per round on the flow thread, a verify task per image and a select-and-write
           task per round on the task runner's thread pool, results persisted for resume, artifacts and
           the report at the end.
  direct   ttsf_core.runner.prepare_run(config) + run_search(prepared, generator): the same generation,
           grading (overlapped, same verifier) and records, no orchestrator, no report.

A temporary Prefect server (prefect_test_harness, SQLite, in a subprocess) is started once before
anything is timed; every run gets a fresh output folder (so nothing is cached or resumed: every image is
generated and graded on both sides); before each run the script waits until the server has finished
recording the previous one (it records task runs from events, seconds after a flow returns). Sides
alternate which goes first; medians over the repetitions. Task runs = generate + verify + select;
the count recorded by the server is checked against it.

The generation cost is varied (`--steps`): Prefect's cost per task run is fixed, so its share of the
wall time shrinks as images get dearer. A no-op-task micro-benchmark (`--noop-tasks`) measures that
fixed cost apart from ttsf: per flow run, per task run called on the flow thread (as generate is),
submitted to the thread pool (as select is), and submitted with a cache key and a persisted JSON result
(as verify is), in wall time, this process's CPU, and the server's CPU.

    python benchmarks/bench_orchestration.py                 # ~5 min: steps 4 and 12, 3 repetitions
    python benchmarks/bench_orchestration.py --steps 4 --repeats 2 --noop-tasks 0
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root and tests/ on sys.path)

RATIO_TARGET = 1.10
PROMPTS_PER_BATCH = 8  # RunConfig default: one search-batch subflow per 8 prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Wall time of the same search through the Prefect flow (search_dataset) and through "
        "ttsf_core.runner directly, with Prefect's server started beforehand and the pipeline loaded once.")
    parser.add_argument("--latency-s", type=float, default=0.2, help="fake Gemini answer latency in seconds")
    parser.add_argument("--steps", default="4,12",
                        help="denoising steps per image, a comma list: one comparison level each (the "
                        "generation cost an image; Prefect's cost per task is fixed)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Prefect/direct pairs per level, alternating which runs first; medians reported")
    parser.add_argument("--prompts", type=int, default=4, choices=range(1, len(_common.PROMPTS) + 1), metavar="N",
                        help=f"prompts searched (1-{len(_common.PROMPTS)})")
    parser.add_argument("--rounds", type=int, default=4, help="search rounds (2+4+8+16 candidates for 4)")
    _common.add_tiny_model_args(parser, steps=False)
    parser.add_argument("--noop-tasks", type=int, default=150,
                        help="task runs per variant in the no-op-task micro-benchmark (0 skips it)")
    parser.add_argument("--flux-s-per-image", type=float, default=4.5,
                        help="assumed FLUX.1-dev seconds an image for the projection line (an estimate: "
                        "2232 TFLOP a 1024px 30-step image at ~500 TFLOP/s; benchmarks/gpu_flux.py measures it)")
    args = parser.parse_args(argv)
    args.step_levels = [int(value) for value in args.steps.split(",") if value.strip()]
    return args


@dataclass
class Side:
    side: str
    steps: int
    wall_s: float
    generating_s: float  # flow thread inside CandidateGenerator.generate
    generating_cpu_s: float
    head_s: float  # start -> first generation
    between_s: float  # flow-thread time between the first and last generation, outside them
    tail_s: float  # last generation -> return
    report_s: float  # report_dataframe + build_report (inside the flow; after the timing for direct)
    heartbeat_s: float  # flow runs waiting for their heartbeat thread at their end (Prefect only)
    png_flow_s: float  # writing candidate PNGs on the flow (generator) thread
    png_other_s: float  # thread-seconds writing them on other threads
    process_cpu_s: float
    server_cpu_s: float  # during the run
    server_after_s: float  # after it returned, until the server was idle again
    verifier_calls: int
    images_generated: int
    images_verified: int
    task_runs: int  # recorded by the server
    picks: dict = field(default_factory=dict)


def run_side(side: str, config, generator, server, prefect, steps: int) -> Side:
    from tasks import runtime
    from ttsf_core import rounds, runner
    from ttsf_core.report import build_report, report_dataframe

    flow_module = importlib.import_module("flows.search_dataset")
    assert runtime.generator_for(config) is generator, "the flow would load another pipeline"
    generator._encodings.clear()  # each side encodes its prompts once, as a fresh worker would
    clock, report, png_flow, png_other = (_common.BusyClock() for _ in range(4))
    flow_thread = threading.get_ident()  # a sync flow, and a task called in it, run on the calling thread

    def png_wrap(original):
        def timed(*args, **kwargs):
            return (png_flow if threading.get_ident() == flow_thread else png_other).wrap(original)(*args, **kwargs)
        return timed

    generator.generate = clock.wrap(generator.generate)  # an instance attribute: what both sides call
    before = (server.call_count(), generator.counts.images, runtime.images_verified(), prefect.task_run_count())
    try:
        with _common.patched(flow_module, "build_report", report.wrap), \
                _common.patched(flow_module, "report_dataframe", report.wrap), _common.heartbeat_joins() as joins, \
                _common.patched(rounds, "write_png", png_wrap):
            cpu, server_cpu, start = _common.process_cpu_seconds(), prefect.cpu_seconds(), time.perf_counter()
            if side == "prefect":
                run_dir = Path(flow_module.search_dataset(config))
            else:
                prepared = runner.prepare_run(config)
                prepared.verifier.close()
                prepared.verifier = runtime.verifier_for(config.verifier_args)  # warm client, as the flow's
                runner.run_search(prepared, generator)
                run_dir = prepared.layout.run_dir
            end = time.perf_counter()
            cpu, server_cpu = _common.process_cpu_seconds() - cpu, prefect.cpu_seconds() - server_cpu
    finally:
        del generator.generate
    if side == "direct":  # the flow builds the report; time the same work for the like-for-like ratio
        report.wrap(build_report)(run_dir)
        report.wrap(report_dataframe)(run_dir)
    server_after = prefect.wait_idle()
    frame = report_dataframe(run_dir)
    picks = {(int(row.prompt_index), int(row.search_round)): int(row.best_noise_seed) for row in frame.itertuples()}
    return Side(
        side=side, steps=steps, wall_s=end - start, generating_s=clock.seconds, generating_cpu_s=clock.cpu_seconds,
        head_s=clock.first_start - start, between_s=clock.last_end - clock.first_start - clock.seconds,
        tail_s=end - clock.last_end, report_s=report.seconds, heartbeat_s=sum(joins),
        png_flow_s=png_flow.seconds, png_other_s=png_other.seconds, process_cpu_s=cpu, server_cpu_s=server_cpu,
        server_after_s=server_after, verifier_calls=server.call_count() - before[0],
        images_generated=generator.counts.images - before[1], images_verified=runtime.images_verified() - before[2],
        task_runs=prefect.task_run_count() - before[3], picks=picks,
    )


def warm_up(config_for, generator, server, prefect, steps: int, folder: Path) -> None:
    """Batch shapes 2 and 4 of this generation cost, the verifier's client, and the first flow run's
    one-off costs (task registration, first result store), paid on both paths before any timing."""
    small = {"search_args": {"search_rounds": 2}, "prompts": {"num_prompts": 1}}
    for side in ("direct", "prefect"):
        run_side(side, config_for(folder / f"warm-{side}", **small), generator, server, prefect, steps)


def noop_micro(prefect, count: int, folder: Path) -> list[list[object]]:
    """Per flow run and per task run costs with tasks that do nothing."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(cache_policy=NO_CACHE)
    def noop(index: int) -> int:
        return index

    @task(cache_key_fn=lambda _context, parameters: f"noop-{parameters['salt']}-{parameters['index']}",
          persist_result=True, result_serializer="json")
    def noop_persisted(index: int, salt: str) -> dict:
        return {"index": index}

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=16), result_storage=folder / "noop-results")
    def noop_flow(count: int, mode: str, salt: str = "") -> float:
        """Seconds the task runs took, timed inside the flow (a flow run's own start and end excluded)."""
        start = time.perf_counter()
        if mode == "call":
            for index in range(count):
                noop(index)
        elif mode == "submit":
            for future in [noop.submit(index) for index in range(count)]:
                future.result()
        elif mode == "submit, cache key + persisted JSON":
            for future in [noop_persisted.submit(index, salt) for index in range(count)]:
                future.result()
        return time.perf_counter() - start

    def measure(count: int, mode: str) -> tuple[float, float, float, float, float]:
        prefect.wait_idle()
        cpu, server_cpu, start = _common.process_cpu_seconds(), prefect.cpu_seconds(), time.perf_counter()
        with _common.heartbeat_joins() as joins:
            inside = noop_flow(count, mode, salt=f"{time.time_ns()}")
        wall, cpu = time.perf_counter() - start, _common.process_cpu_seconds() - cpu
        return wall, inside, sum(joins), cpu, prefect.cpu_seconds() - server_cpu + prefect.wait_idle()

    measure(5, "submit")  # first-call costs
    empty = [measure(0, "none") for _ in range(3)]
    empty_cpu = _common.median([run[3] for run in empty])
    empty_server = _common.median([run[4] for run in empty])
    rows = [["empty flow run (fixed cost of each flow run)", f"{1000 * _common.median([run[0] for run in empty]):.0f}",
             f"{1000 * _common.median([run[2] for run in empty]):.0f}", f"{1000 * empty_cpu:.0f}",
             f"{1000 * empty_server:.0f}"]]
    for mode in ("call", "submit", "submit, cache key + persisted JSON"):
        _, inside, _, cpu, server_cpu = measure(count, mode)
        rows.append([f"one task run, {mode}", f"{1000 * inside / count:.1f}", "",
                     f"{1000 * (cpu - empty_cpu) / count:.1f}", f"{1000 * (server_cpu - empty_server) / count:.1f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ttsf-bench-orchestration-") as folder:
        workdir = Path(folder)
        model_dir, prompts_file = _common.prepare_workdir(workdir, args)
        server = _common.ProcessServer(args.latency_s)
        results: list[tuple[Side, Side]] = []
        micro: list[list[object]] = []
        try:
            with _common.PrefectServer() as prefect:
                from tasks import runtime

                for level, steps in enumerate(args.step_levels):
                    level_args = argparse.Namespace(**{**vars(args), "steps": steps})

                    def config_for(output_dir: Path, **overrides):
                        return _common.search_config(level_args, model_dir, prompts_file, output_dir, server.url,
                                                     **overrides)

                    generator = runtime.generator_for(config_for(workdir / "unused"))  # loads the pipeline once
                    warm_up(config_for, generator, server, prefect, steps, workdir / f"steps-{steps}")
                    for repeat in range(args.repeats):
                        order = ["prefect", "direct"] if (repeat + level) % 2 == 0 else ["direct", "prefect"]
                        pair = {side: run_side(side, config_for(workdir / f"steps-{steps}" / f"{repeat}-{side}"),
                                               generator, server, prefect, steps) for side in order}
                        results.append((pair["prefect"], pair["direct"]))
                if args.noop_tasks:
                    micro = noop_micro(prefect, args.noop_tasks, workdir)
                startup_s = prefect.startup_s
        finally:
            server.stop()

    print_report(args, results, micro, startup_s)
    return 0


def print_report(args, results: list[tuple[Side, Side]], micro: list[list[object]], startup_s: float) -> None:
    med = _common.median
    images = results[0][1].images_generated
    task_runs = args.prompts * args.rounds * 2 + images  # generate + select per round, verify per image
    subflows = -(-args.prompts // PROMPTS_PER_BATCH)  # Prefect records a task run for each subflow call too
    print(_common.machine_line(args.threads))
    print(f"search: {args.prompts} prompts x {args.rounds} rounds = {images} images; tiny FLUX width "
          f"x{args.width_multiplier}, {args.num_layers}+{args.num_layers} blocks, {args.resolution}px, "
          f"max_sequence_length {args.max_sequence_length}; fake Gemini in a process, latency {args.latency_s:g} s, "
          f"max_concurrency 8; task runs = {args.prompts * args.rounds} generate + {images} verify + "
          f"{args.prompts * args.rounds} select = {task_runs}")
    print(f"Prefect: temporary server (prefect_test_harness, SQLite) started once before any timing, in "
          f"{startup_s:.1f} s (not in any number below)")

    header = ["steps", "side", "wall s", "generating s", "generating CPU s", "head s", "flow thread between "
              "generations s", "PNG writes: flow thread s / other threads thread-s", "tail s", "report s", "this process CPU s", "server CPU during s",
              "server CPU after s", "verifier calls", "images generated", "images verified",
              "task runs recorded (+1 a subflow)",
              "same picks"]
    rows, problems = [], []
    for prefect, direct in results:
        same = sum(prefect.picks.get(key) == seed for key, seed in direct.picks.items())
        if same != len(direct.picks) or len(prefect.picks) != len(direct.picks):
            problems.append(f"steps {prefect.steps}: {same}/{len(direct.picks)} rounds picked the same seed")
        for run in (prefect, direct):
            expected_tasks = task_runs + subflows if run.side == "prefect" else 0
            if (run.verifier_calls, run.images_generated, run.images_verified, run.task_runs) != (
                    images, images, images if run.side == "prefect" else 0, expected_tasks):
                problems.append(f"steps {run.steps} {run.side}: calls {run.verifier_calls}, generated "
                                f"{run.images_generated}, verified {run.images_verified}, task runs {run.task_runs}")
            rows.append([run.steps, run.side, f"{run.wall_s:.2f}", f"{run.generating_s:.2f}",
                         f"{run.generating_cpu_s:.2f}", f"{run.head_s:.2f}", f"{run.between_s:.2f}",
                         f"{run.png_flow_s:.2f} / {run.png_other_s:.2f}",
                         f"{run.tail_s:.2f}", f"{run.report_s:.2f}", f"{run.process_cpu_s:.2f}",
                         f"{run.server_cpu_s:.2f}", f"{run.server_after_s:.2f}", run.verifier_calls,
                         run.images_generated, run.images_verified, run.task_runs,
                         f"{same}/{len(direct.picks)}"])
    print(_common.markdown_table(header, rows))
    print("(images verified counts tasks.runtime's verify-task counter: the direct runner does not use it)")

    print()
    summary, breakdown, levels = [], [], {}
    for prefect, direct in results:
        levels.setdefault(prefect.steps, []).append((prefect, direct))
    for steps, pairs in levels.items():
        ratio = med([p.wall_s / d.wall_s for p, d in pairs])
        same_work = med([p.wall_s / (d.wall_s + d.report_s) for p, d in pairs])
        overhead = med([p.wall_s - d.wall_s for p, d in pairs])
        summary.append([
            steps, f"{1000 * med([d.generating_cpu_s for _, d in pairs]) / images:.0f}",
            f"{med([d.wall_s for _, d in pairs]):.2f}", f"{med([p.wall_s for p, _ in pairs]):.2f}",
            f"{ratio:.2f}x", f"{same_work:.2f}x", f"{overhead:.2f}", f"{1000 * overhead / task_runs:.1f}",
            "met" if ratio <= RATIO_TARGET else "MISSED",
        ])
        diff = lambda name: med([getattr(p, name) - getattr(d, name) for p, d in pairs])  # noqa: E731
        contention = med([(p.generating_s - p.generating_cpu_s) - (d.generating_s - d.generating_cpu_s)
                          for p, d in pairs])
        breakdown.append([
            steps, f"{overhead:.2f}", f"{diff('head_s'):.2f}", f"{contention:.2f}", f"{diff('generating_cpu_s'):.2f}",
            f"{diff('between_s'):.2f}", f"{diff('png_flow_s'):.2f}", f"{diff('tail_s'):.2f}", f"{med([p.report_s for p, _ in pairs]):.2f}",
            f"{med([p.heartbeat_s for p, _ in pairs]):.2f}",
            f"{1000 * diff('process_cpu_s') / task_runs:.1f}",
            f"{1000 * med([p.server_cpu_s + p.server_after_s for p, _ in pairs]) / task_runs:.1f}",
            f"{med([p.server_cpu_s / p.wall_s for p, _ in pairs]):.2f}",
        ])
    print(_common.markdown_table(
        ["steps", "direct generation CPU ms / image", "direct wall s", "Prefect wall s", "ratio Prefect/direct",
         "ratio Prefect/(direct + same report)", "Prefect - direct s", "overhead ms / task run",
         f"target <= {RATIO_TARGET:.2f}x"], summary))
    print("\nwhere the difference went (medians of Prefect - direct per pair; head + generation slowed + generation CPU "
          "+ between generations + tail = the wall difference, up to taking medians separately):")
    print(_common.markdown_table(
        ["steps", "Prefect - direct s", "head s", "generation slowed by contention s", "generation CPU s",
         "flow thread between generations s", "of which: PNG writes on the flow thread s", "tail s",
         "of the tail: report s",
         "of the tail: flow runs joining their heartbeat thread s", "this process: extra CPU ms / task run",
         "server CPU ms / task run (during + after)", "server cores busy during the run"], breakdown))

    if micro:
        print(f"\nno-op tasks ({args.noop_tasks} task runs per variant, thread pool of 16; the task rows' CPU "
              "columns have the empty flow run's subtracted):")
        print(_common.markdown_table(["what", "wall ms (task rows: timed inside the flow)",
                                      "of which joining the heartbeat thread ms", "this process CPU ms",
                                      "server CPU ms (during + after)"], micro))

    heaviest = max(levels)
    overhead = med([p.wall_s - d.wall_s for p, d in levels[heaviest]])
    flux_direct = images * args.flux_s_per_image
    print(f"\nprojection: at {args.flux_s_per_image:g} s an image (FLUX.1-dev estimate), the {images} images take "
          f"{flux_direct:.0f} s; with the {overhead:.1f} s difference measured at {heaviest} steps (fixed cost, "
          f"{task_runs} task runs) the ratio would be {(flux_direct + overhead) / flux_direct:.3f}x, provided the "
          "server and the flow's threads have CPU cores of their own (here they compete with generation for 2)")
    if problems:
        print("\nPROBLEMS:\n" + "\n".join(problems))
        raise AssertionError(f"{len(problems)} runs did not do the expected work or picked differently")
    print(f"\nevery run generated and graded all {images} images; Prefect recorded {task_runs} task runs a search "
          f"(+{subflows} for the subflow call); both sides picked the same seed in every round")


if __name__ == "__main__":
    sys.exit(main())
