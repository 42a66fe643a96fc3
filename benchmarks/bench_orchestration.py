"""What Prefect costs: the same search through the `search_dataset` flow and through the direct runner.

Both sides run the one search loop (ttsf_core.engine.search_engine.SearchEngine) over the same prompts with the same
tiny FLUX pipeline (loaded once, through tasks.runtime.generator_for, before anything is timed; the
direct side gets that very CandidateGenerator, and the process-wide GeminiVerifier of
tasks.runtime.verifier_for, so neither side loads a model or builds a client inside its timing) against
the same fake Gemini, which runs in its own process and answers after a fixed latency.

  prefect  flows.search_dataset.search_dataset(config): one search-batch subflow (prompts_per_batch 8)
           whose PrefectExecutor submits every engine job as a task run: one generate task per round
           stage, one grade task per chunk of the verifier's batch size, one select task
           per round; then the report and the summary artifact.
  direct   ttsf_core.usecases.runner.run(prepared, generator): the same engine with the ThreadExecutor (local
           threads, no orchestrator), the same records; no report (built afterwards, timed apart, for
           the like-for-like column).
  prefect, no heartbeat
           the same flow call inside prefect.settings.temporary_settings(PREFECT_FLOWS_HEARTBEAT_FREQUENCY
           = None): not what ttsf does, measured to show what Prefect 3.9.1's flow-run heartbeat costs
           (each flow run ends by joining a thread that sleeps in whole seconds); `--no-heartbeat-side off`
           skips it.

A temporary Prefect server (prefect_test_harness, SQLite, in a subprocess) is started once before
anything is timed; every run gets a fresh output folder (nothing in the store: every image is generated
and graded on both sides, checked from the runs' own counts and the fake server's request counter);
before each run the script waits until the server has finished recording the previous one (it records
task runs from events, seconds after a flow returns). Sides alternate which goes first; medians over the
repetitions. The task runs the server recorded are checked against generate + grade + select (+1 per
subflow call).

Where the difference goes is measured on both sides alike:
  - generation: time inside the CandidateGenerator's lock (encode, latents, pipeline call), on whichever
    thread holds it, and its CPU time; the generator's idle time before the first image (head), between
    images (gaps) and after the last (tail);
  - per job kind (generate / grade / select): from the executor's submit to the future being done, minus
    the job's own work (ttsf_core.engine.jobs.generate / grade / select timed inside): the executor's overhead a
    job, i.e. a task run's cost for Prefect and a thread hand-off for the direct runner;
  - report building and flow runs joining their heartbeat thread (Prefect 3.9.1: up to 1 s a flow run);
  - this process's CPU, and the Prefect server's CPU during the run and after it until idle.
The generation cost is varied (`--steps`): Prefect's cost per task run is fixed, so its share of the
wall time shrinks as images get dearer. A no-op-task micro-benchmark (`--noop-tasks`) measures that
fixed cost apart from ttsf: per flow run, and per task run called or submitted.

    python benchmarks/bench_orchestration.py                 # ~4.5 min: steps 4 and 12, 3 runs a side
    python benchmarks/bench_orchestration.py --steps 4 --repeats 1 --prompts 2 --rounds 3 --noop-tasks 0
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root and tests/ on sys.path)

RATIO_TARGET = 1.15
PREFECT, NO_HEARTBEAT, DIRECT = "prefect", "prefect, no heartbeat", "direct"
PROMPTS_PER_BATCH = 8  # RunConfig default: one search-batch subflow per 8 prompts
KINDS = ("generate", "grade", "select")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Wall time of the same search through the Prefect flow (search_dataset) and through "
        "ttsf_core.usecases.runner directly (ThreadExecutor), with Prefect's server started beforehand and the pipeline "
        "loaded once.")
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
    parser.add_argument("--no-heartbeat-side", choices=("on", "off"), default="on",
                        help="also run the flow with Prefect's flow-run heartbeat off (not ttsf's setting)")
    parser.add_argument("--flux-s-per-image", type=float, default=4.5,
                        help="assumed FLUX.1-dev seconds an image for the projection line (an estimate: "
                        "2232 TFLOP a 1024px 30-step image at ~500 TFLOP/s; benchmarks/gpu_flux.py measures it)")
    args = parser.parse_args(argv)
    args.step_levels = [int(value) for value in args.steps.split(",") if value.strip()]
    return args


@dataclass
class JobTimes:
    """Per job kind: jobs submitted, seconds from submit to done (summed), seconds of the job's own work."""

    count: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    latency_s: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    work_s: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, table: str, kind: str, seconds: float) -> None:
        with self.lock:
            getattr(self, table)[kind] += seconds

    def overhead_ms(self, kind: str) -> float:
        """Mean executor overhead a job: submit-to-done minus the job's own work."""
        return 1000 * (self.latency_s[kind] - self.work_s[kind]) / max(self.count[kind], 1)


@contextmanager
def job_timing(executor_class):
    """Time every job's submit-to-done on `executor_class` (its generate/grade/select methods), and the
    work inside ttsf_core.engine.jobs' functions, which both executors call (the Prefect tasks look them up as
    `jobs.<name>` when they run)."""
    from ttsf_core.engine import jobs
    times = JobTimes()

    def submit_wrapper(kind):
        def wrapper(original):
            def submit(self, job):
                start = time.perf_counter()
                future = original(self, job)
                with times.lock:
                    times.count[kind] += 1
                future.add_done_callback(lambda _: times.add("latency_s", kind, time.perf_counter() - start))
                return future
            return submit
        return wrapper

    def work_wrapper(kind):
        def wrapper(original):
            def work(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    times.add("work_s", kind, time.perf_counter() - start)
            return work
        return wrapper

    with ExitStack() as stack:
        for kind in KINDS:
            stack.enter_context(_common.patched(executor_class, kind, submit_wrapper(kind)))
            stack.enter_context(_common.patched(jobs, kind, work_wrapper(kind)))
        yield times


@dataclass
class Side:
    side: str
    steps: int
    wall_s: float
    generating_s: float  # inside the generator's lock: encode, latents, pipeline call
    generating_cpu_s: float
    head_s: float  # start -> first generation
    gaps_s: float  # generator idle between the first generation's start and the last's end
    tail_s: float  # last generation -> return
    report_s: float  # report_dataframe + build_report (inside the flow; after the timing for direct)
    heartbeat_s: float  # flow runs waiting for their heartbeat thread at their end (Prefect only)
    png_other_s: float  # thread-seconds writing PNGs beside generation
    process_cpu_s: float
    server_cpu_s: float  # during the run
    server_after_s: float  # after it returned, until the server was idle again
    verifier_calls: int
    images_generated: int
    images_graded: int
    task_runs: int  # recorded by the server
    jobs: JobTimes
    picks: dict = field(default_factory=dict)


def run_side(side: str, config, generator, server, prefect, steps: int) -> Side:
    from tasks import runtime
    from tasks.executor import PrefectExecutor
    from ttsf_core.usecases import runner
    from ttsf_core.engine.executors import ThreadExecutor
    from ttsf_core.storage.records import iter_round_records
    from ttsf_core.usecases.report import build_report, report_dataframe

    flow_module = importlib.import_module("flows.search_dataset")
    assert runtime.generator_for(config) is generator, "the flow would load another pipeline"
    generator._encodings.clear()  # each side encodes its prompts once, as a fresh worker would
    report = _common.BusyClock()
    before = (server.call_count(), prefect.task_run_count())
    with _common.patched(flow_module, "build_report", report.wrap), \
            _common.patched(flow_module, "report_dataframe", report.wrap), _common.heartbeat_joins() as joins, \
            _common.generation_clock(generator) as (clock, threads), _common.png_clocks(threads) as (_, png_other), \
            job_timing(ThreadExecutor if side == DIRECT else PrefectExecutor) as job_times, heartbeat(side):
        cpu, server_cpu, start = _common.process_cpu_seconds(), prefect.cpu_seconds(), time.perf_counter()
        if side != DIRECT:
            result = flow_module.search_dataset(config)
            run_dir, counts = Path(result["run_dir"]), result["counts"]
        else:
            prepared = runner.prepare_run(config)
            prepared.verifier = runtime.verifier_for(config.verifier_args)  # warm client, as the flow's
            _, outcome = runner.run(prepared, generator)
            outcome.raise_first()
            run_dir, counts = prepared.layout.run_dir, vars(outcome.counts)
        end = time.perf_counter()
        cpu, server_cpu = _common.process_cpu_seconds() - cpu, prefect.cpu_seconds() - server_cpu
    if side == DIRECT:  # the flow builds the report; time the same work for the like-for-like ratio
        report.wrap(build_report)(run_dir, only_if_changed=True)
        report.wrap(report_dataframe)(run_dir)
    server_after = prefect.wait_idle()
    picks = {(r.prompt_index, r.search_round): r.best_noise_seed for _, r in iter_round_records(run_dir)}
    return Side(
        side=side, steps=steps, wall_s=end - start, generating_s=clock.seconds, generating_cpu_s=clock.cpu_seconds,
        head_s=clock.first_start - start, gaps_s=clock.last_end - clock.first_start - clock.seconds,
        tail_s=end - clock.last_end, report_s=report.seconds, heartbeat_s=sum(joins), png_other_s=png_other.seconds,
        process_cpu_s=cpu, server_cpu_s=server_cpu, server_after_s=server_after,
        verifier_calls=server.call_count() - before[0], images_generated=counts["images_generated"],
        images_graded=counts["images_graded"], task_runs=prefect.task_run_count() - before[1], jobs=job_times,
        picks=picks,
    )


@contextmanager
def heartbeat(side: str):
    """Prefect's flow-run heartbeat off for the "no heartbeat" side, as is for the others."""
    if side != NO_HEARTBEAT:
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def expected_jobs(config) -> dict[str, int]:
    """The engine's jobs for a fresh random search: per round one generate job, the pool in chunks of the
    verifier's batch size (gemini: max_concurrency), one select job."""
    from ttsf_core.verifiers.base import DEFAULT_BATCH_SIZE

    search = config.search_args
    chunk = config.verifier_args.max_concurrency if config.verifier_args.name == "gemini" else DEFAULT_BATCH_SIZE
    prompts = config.prompts.num_prompts
    return {
        "generate": prompts * search.search_rounds,
        "grade": prompts * sum(-(-search.pool_size(r) // chunk) for r in range(1, search.search_rounds + 1)),
        "select": prompts * search.search_rounds,
    }


def warm_up(config_for, generator, server, prefect, steps: int, folder: Path) -> None:
    """Batch shapes 2 and 4 of this generation cost, the verifier's client, and the first flow run's
    one-off costs (task registration), paid on both paths before any timing."""
    small = {"search_args": {"search_rounds": 2}, "prompts": {"num_prompts": 1}}
    for side in (DIRECT, PREFECT):
        run_side(side, config_for(folder / f"warm-{side}", **small), generator, server, prefect, steps)


def noop_micro(prefect, count: int) -> list[list[object]]:
    """Per flow run and per task run costs with tasks that do nothing (no cache, as ttsf's tasks)."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(cache_policy=NO_CACHE)
    def noop(index: int) -> int:
        return index

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=16))
    def noop_flow(count: int, mode: str) -> float:
        """Seconds the task runs took, timed inside the flow (a flow run's own start and end excluded)."""
        start = time.perf_counter()
        if mode == "call":
            for index in range(count):
                noop(index)
        elif mode == "submit":
            for future in [noop.submit(index) for index in range(count)]:
                future.result()
        return time.perf_counter() - start

    def measure(count: int, mode: str) -> tuple[float, float, float, float, float]:
        prefect.wait_idle()
        cpu, server_cpu, start = _common.process_cpu_seconds(), prefect.cpu_seconds(), time.perf_counter()
        with _common.heartbeat_joins() as joins:
            inside = noop_flow(count, mode)
        wall, cpu = time.perf_counter() - start, _common.process_cpu_seconds() - cpu
        return wall, inside, sum(joins), cpu, prefect.cpu_seconds() - server_cpu + prefect.wait_idle()

    measure(5, "submit")  # first-call costs
    empty = [measure(0, "none") for _ in range(3)]
    empty_cpu = _common.median([run[3] for run in empty])
    empty_server = _common.median([run[4] for run in empty])
    rows = [["empty flow run (fixed cost of each flow run)", f"{1000 * _common.median([run[0] for run in empty]):.0f}",
             f"{1000 * _common.median([run[2] for run in empty]):.0f}", f"{1000 * empty_cpu:.0f}",
             f"{1000 * empty_server:.0f}"]]
    with heartbeat(NO_HEARTBEAT):
        quiet = [measure(0, "none") for _ in range(3)]
    rows.append(["empty flow run, heartbeat off (temporary_settings; not ttsf's setting)",
                 f"{1000 * _common.median([run[0] for run in quiet]):.0f}",
                 f"{1000 * _common.median([run[2] for run in quiet]):.0f}",
                 f"{1000 * _common.median([run[3] for run in quiet]):.0f}",
                 f"{1000 * _common.median([run[4] for run in quiet]):.0f}"])
    for mode in ("call", "submit"):
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
        results: list[dict[str, Side]] = []
        sides = [PREFECT, DIRECT] + ([NO_HEARTBEAT] if args.no_heartbeat_side == "on" else [])
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
                        shift = (repeat + level) % len(sides)  # rotate which side goes first
                        order = sides[shift:] + sides[:shift]
                        results.append({side: run_side(side, config_for(workdir / f"steps-{steps}" / f"{repeat}-{index}"),
                                                       generator, server, prefect, steps)
                                        for index, side in enumerate(order)})
                expected = expected_jobs(config_for(workdir / "unused"))
                pipelines = runtime.pipelines_loaded()
                if args.noop_tasks:
                    micro = noop_micro(prefect, args.noop_tasks)
                startup_s = prefect.startup_s
        finally:
            server.stop()

    print_report(args, results, micro, startup_s, expected, pipelines)
    return 0


def print_report(args, results: list[dict[str, Side]], micro: list[list[object]], startup_s: float,
                 expected: dict[str, int], pipelines: int) -> None:
    med = _common.median
    images = sum(2 * 2 ** (r - 1) for r in range(1, args.rounds + 1)) * args.prompts
    task_runs = sum(expected.values())
    subflows = -(-args.prompts // PROMPTS_PER_BATCH)  # Prefect records a task run for each subflow call too
    flows = [side for side in (PREFECT, NO_HEARTBEAT) if side in results[0]]
    print(_common.machine_line(args.threads))
    print(f"search: {args.prompts} prompts x {args.rounds} rounds = {images} images; tiny FLUX width "
          f"x{args.width_multiplier}, {args.num_layers}+{args.num_layers} blocks, {args.resolution}px, "
          f"max_sequence_length {args.max_sequence_length}; fake Gemini in a process, latency {args.latency_s:g} s, "
          f"max_concurrency 8 (= the grade chunk); task runs = {expected['generate']} generate + {expected['grade']} "
          f"grade + {expected['select']} select = {task_runs} (+{subflows} for the subflow call)")
    print(f"Prefect: temporary server (prefect_test_harness, SQLite) started once before any timing, in "
          f"{startup_s:.1f} s (not in any number below); pipelines loaded in this process: {pipelines} per step count")

    header = ["steps", "side", "wall s", "generating s", "generating CPU s", "generator idle: head / gaps / tail s",
              "report s", "heartbeat joins s", "PNG writes beside generation thread-s", "this process CPU s",
              "server CPU during / after s", "verifier calls", "images generated / graded",
              "task runs recorded", "same picks as direct"]
    rows, problems = [], []
    for result in results:
        direct = result[DIRECT]
        for run in result.values():
            same = sum(run.picks.get(key) == seed for key, seed in direct.picks.items())
            if same != len(direct.picks) or len(run.picks) != len(direct.picks) or \
                    len(direct.picks) != args.prompts * args.rounds:
                problems.append(f"steps {run.steps} {run.side}: {same}/{len(direct.picks)} rounds picked the same seed")
            expected_tasks = 0 if run.side == DIRECT else task_runs + subflows
            jobs_seen = {kind: run.jobs.count[kind] for kind in KINDS}
            if (run.verifier_calls, run.images_generated, run.images_graded, run.task_runs) != (
                    images, images, images, expected_tasks) or jobs_seen != expected:
                problems.append(f"steps {run.steps} {run.side}: calls {run.verifier_calls}, generated "
                                f"{run.images_generated}, graded {run.images_graded}, task runs {run.task_runs} "
                                f"(expected {expected_tasks}), jobs {jobs_seen} (expected {expected})")
            rows.append([run.steps, run.side, f"{run.wall_s:.2f}", f"{run.generating_s:.2f}",
                         f"{run.generating_cpu_s:.2f}", f"{run.head_s:.2f} / {run.gaps_s:.2f} / {run.tail_s:.2f}",
                         f"{run.report_s:.2f}", f"{run.heartbeat_s:.2f}", f"{run.png_other_s:.2f}",
                         f"{run.process_cpu_s:.2f}", f"{run.server_cpu_s:.2f} / {run.server_after_s:.2f}",
                         run.verifier_calls, f"{run.images_generated} / {run.images_graded}", run.task_runs,
                         f"{same}/{len(direct.picks)}"])
    print(_common.markdown_table(header, rows))

    print()
    summary, breakdown, per_job, levels = [], [], [], {}
    for result in results:
        levels.setdefault(result[DIRECT].steps, []).append(result)
    for steps, level in levels.items():
        for flow_side in flows:
            pairs = [(result[flow_side], result[DIRECT]) for result in level]
            ratio = med([p.wall_s / d.wall_s for p, d in pairs])
            same_work = med([p.wall_s / (d.wall_s + d.report_s) for p, d in pairs])
            overhead = med([p.wall_s - d.wall_s for p, d in pairs])
            summary.append([
                steps, flow_side, f"{1000 * med([d.generating_cpu_s for _, d in pairs]) / images:.0f}",
                f"{med([d.wall_s for _, d in pairs]):.2f}", f"{med([p.wall_s for p, _ in pairs]):.2f}",
                f"{ratio:.2f}x", f"{same_work:.2f}x", f"{overhead:.2f}", f"{1000 * overhead / task_runs:.1f}",
                ("met" if ratio <= RATIO_TARGET else "MISSED") if flow_side == PREFECT else "(not ttsf's setting)",
            ])
            diff = lambda name: med([getattr(p, name) - getattr(d, name) for p, d in pairs])  # noqa: E731
            contention = med([(p.generating_s - p.generating_cpu_s) - (d.generating_s - d.generating_cpu_s)
                              for p, d in pairs])
            breakdown.append([
                steps, flow_side, f"{overhead:.2f}", f"{diff('head_s'):.2f}", f"{contention:.2f}",
                f"{diff('generating_cpu_s'):.2f}", f"{diff('gaps_s'):.2f}", f"{diff('tail_s'):.2f}",
                f"{med([p.report_s for p, _ in pairs]):.2f}", f"{med([p.heartbeat_s for p, _ in pairs]):.2f}",
                f"{1000 * diff('process_cpu_s') / task_runs:.1f}",
                f"{1000 * med([p.server_cpu_s + p.server_after_s for p, _ in pairs]) / task_runs:.1f}",
                f"{med([p.server_cpu_s / p.wall_s for p, _ in pairs]):.2f}",
            ])
        for kind in KINDS:
            per_job.append([steps, kind, expected[kind],
                            f"{med([r[PREFECT].jobs.overhead_ms(kind) for r in level]):.1f}",
                            f"{med([r[DIRECT].jobs.overhead_ms(kind) for r in level]):.1f}",
                            f"{med([1000 * r[PREFECT].jobs.work_s[kind] / expected[kind] for r in level]):.1f}",
                            f"{med([1000 * r[DIRECT].jobs.work_s[kind] / expected[kind] for r in level]):.1f}"])
    print(_common.markdown_table(
        ["steps", "flow side", "direct generation CPU ms / image", "direct wall s", "flow wall s", "ratio flow/direct",
         "ratio flow/(direct + same report)", "flow - direct s", "difference ms / task run",
         f"target <= {RATIO_TARGET:.2f}x"], summary))
    print("\nwhere the difference went (medians of flow - direct per run; head + generation slowed + generation CPU "
          "+ gaps + tail = the wall difference, up to taking medians separately):")
    print(_common.markdown_table(
        ["steps", "flow side", "flow - direct s", "generator idle before the first image s",
         "generation slowed by contention s", "generation CPU s", "generator idle between images s",
         "after the last image s", "of that: report s", "of that: flow runs joining their heartbeat thread s",
         "this process: extra CPU ms / task run", "server CPU ms / task run (during + after)",
         "server cores busy during the run"], breakdown))
    print("\nper job: the executor's overhead (submit to done, minus the job's own work inside ttsf_core.engine.jobs: a task "
          "run's bookkeeping, or waiting for a free thread; a generate job's work includes waiting for the generator's "
          "lock, two being in flight), medians of means:")
    print(_common.markdown_table(
        ["steps", "job", "jobs a search", "Prefect overhead ms / job", "direct overhead ms / job",
         "Prefect work ms / job", "direct work ms / job"], per_job))

    if micro:
        print(f"\nno-op tasks ({args.noop_tasks} task runs per variant, no cache, thread pool of 16; the task rows' "
              "CPU columns have the empty flow run's subtracted):")
        print(_common.markdown_table(["what", "wall ms (task rows: timed inside the flow)",
                                      "of which joining the heartbeat thread ms", "this process CPU ms",
                                      "server CPU ms (during + after)"], micro))

    heaviest = max(levels)
    overhead = med([r[PREFECT].wall_s - r[DIRECT].wall_s for r in levels[heaviest]])
    flux_direct = images * args.flux_s_per_image
    print(f"\nprojection: at {args.flux_s_per_image:g} s an image (FLUX.1-dev estimate), the {images} images take "
          f"{flux_direct:.0f} s; with the {overhead:.1f} s difference measured at {heaviest} steps (fixed cost, "
          f"{task_runs} task runs) the ratio would be {(flux_direct + overhead) / flux_direct:.3f}x, provided the "
          "server and the flow's threads have CPU cores of their own (here they compete with generation for 2)")
    if problems:
        print("\nPROBLEMS:\n" + "\n".join(problems))
        raise AssertionError(f"{len(problems)} runs did not do the expected work or picked differently")
    print(f"\nevery run generated and graded all {images} images; every flow run recorded {task_runs} task runs a "
          f"search (+{subflows} for the subflow call); every side picked the same seed in every round")


if __name__ == "__main__":
    sys.exit(main())
