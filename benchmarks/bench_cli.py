"""What a user waits for: whole processes, from the shell prompt back to the shell prompt (imports, model
load, search, report and exit included), interleaved, several repeats, medians; wall and CPU seconds.

Cases (issue 21):
  readme     the README's CPU main job, `ttsf run --prompt ... --model tiny-flux --verifier_to_use imagestats
             --search_rounds 3` into a fresh output folder: the default path (no Prefect server configured)
             vs `--executor threads`, and `--executor prefect` (a temporary Prefect server: what the default
             did before issue 21) unless --skip-prefect.
  rerun      the same command again on a finished output folder (the default path): "Nothing to do".
  gemini-L   ttsf's default path, `ttsf run --dataset PROMPTS.txt --num_prompts all --model tiny-flux
             --verifier_to_use gemini --search_rounds R`, vs a process re-implementing tt-scale-flux's loop
             (benchmarks/_tt_scale_flux_loop.py: batch 1, the prompt re-encoded for every image, a round
             generated then graded on 4 threads, imports and model load included), both against the stand-in
             Gemini (tests/fake_gemini.py, in its own process, answering after L seconds), the same tiny FLUX,
             the same noises; both must pick the same seed in every (prompt, round), with the same number of
             requests.

Wall: time.perf_counter around subprocess.run. CPU: resource.getrusage(RUSAGE_CHILDREN) user + system, the
difference across the run, so a process's own children (Prefect's temporary server) are in it; the stand-in
Gemini, a child of this script that is not waited for until the end, is not. Every command gets the same
environment: no Prefect server configured (PREFECT_API_URL unset, a profiles file that does not exist, an
isolated PREFECT_HOME), HF_HUB_OFFLINE=1, the fake Gemini key, and OMP_NUM_THREADS=--threads (1 by default:
two OpenMP threads on a shared 2-core VM make runs erratic, see BENCHMARKS.md). Untimed warm-up runs first
(they build the tiny model once, create the temporary Prefect server's database and fill the page cache).
Each repeat runs every case once, alternating which side goes first.

    python benchmarks/bench_cli.py                          # ~15 min on a busy 2-core VM: 3 repeats
    python benchmarks/bench_cli.py --threads 0 --skip-prefect  # torch's own thread count, as a user runs it
    python benchmarks/bench_cli.py --threads 1,0 --skip-prefect  # both, interleaved; a table for each
    python benchmarks/bench_cli.py --scaled --cases gemini     # a tiny FLUX whose search weighs more
    python benchmarks/bench_cli.py --repeats 1 --skip-prefect --latencies 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root and tests/ on sys.path)

LOOP = Path(__file__).resolve().parent / "_tt_scale_flux_loop.py"
README_PROMPT = "a tiny astronaut hatching from an egg on the moon"
README_JOB = ["--prompt", README_PROMPT, "--model", "tiny-flux", "--verifier_to_use", "imagestats", "--search_rounds", "3"]
TIMEOUT_S = 900
DID = re.compile(r"This run generated (\d+) images and graded (\d+)")
NOTHING = "Nothing to do: all"
# Targets of issue 21 (ratios side by side in one run).
DEFAULT_VS_THREADS = 1.15  # readme: default wall <= 1.15x --executor threads
SPEEDUP = {0.3: 2.0, 1.0: 2.5}  # gemini-L: the tt-scale-flux-style process's wall / ttsf's >= this
RERUN_S = 3.0  # rerun: wall <= 3 s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Whole `ttsf run` processes vs --executor threads, a re-run and a "
                                     "tt-scale-flux-style process: wall and CPU seconds, interleaved, medians.")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every side of every case")
    parser.add_argument("--latencies", default="0.3,1.0", help="stand-in Gemini latencies in seconds, comma-separated")
    parser.add_argument("--prompts", type=int, default=4, choices=range(1, len(_common.PROMPTS) + 1), metavar="N",
                        help=f"prompts of the gemini cases (1-{len(_common.PROMPTS)})")
    parser.add_argument("--rounds", type=int, default=3, help="search rounds of the gemini cases (2+4+8 images for 3)")
    parser.add_argument("--threads", default="1",
                        help="OMP_NUM_THREADS of every command; 0 leaves it unset (torch's default: one per core); "
                             "several, comma-separated (1,0), are interleaved: each repeat runs every case under each")
    parser.add_argument("--skip-prefect", action="store_true", help="leave out the readme case's --executor prefect side")
    parser.add_argument("--cases", default="readme,rerun,gemini", help="which cases, comma-separated")
    parser.add_argument("--scaled", action="store_true",
                        help="gemini cases on the scaled tiny FLUX of the other CPU benchmarks (width x2, 2+2 blocks, "
                             "128x128, 4 steps, 128 T5 tokens: tens of ms an image) instead of the README's tiny-flux")
    parser.add_argument("--json", type=Path, default=None, help="also write every run and the summary here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    return parser.parse_args(argv)


@dataclass
class Run:
    case: str
    side: str
    repeat: int
    wall_s: float
    cpu_s: float
    load_before: float  # 1-minute load average when it started
    threads: int = 1  # OMP_NUM_THREADS of the command (0: unset)
    generated: int | None = None
    graded: int | None = None
    nothing_to_do: bool = False
    requests: int | None = None  # generateContent requests the stand-in answered during the run
    same_picks: bool | None = None
    picks: dict = field(default_factory=dict, repr=False)


def ttsf_command() -> list[str]:
    """The installed console script beside this interpreter (what a user types), else `python -m ttsf.cli`."""
    script = Path(sys.executable).parent / "ttsf"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ttsf.cli"]


def environment(work: Path, threads: int) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.upper().startswith(("PREFECT_", "GEMINI_", "GOOGLE_", "OMP_", "MKL_"))}
    return env | {
        "PREFECT_PROFILES_PATH": str(work / "no-profiles.toml"),  # does not exist: no profile, no server
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "GEMINI_API_KEY": _common.FAKE_KEY,
    } | ({"OMP_NUM_THREADS": str(threads)} if threads else {})


def timed(command: list[str], env: dict[str, str], label: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """(the finished process, wall seconds, CPU seconds of it and the children it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{label} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, wall, cpu


def ttsf_picks(output: Path) -> dict[str, int]:
    """{"<prompt index>/<round>": best seed} from a ttsf output folder's round records."""
    picks = {}
    for path in output.glob("*/*/*/*/prompts/*/round_*.json"):
        record = json.loads(path.read_text())
        picks[f"{record['prompt_index']}/{record['search_round']}"] = int(record["best_noise_seed"])
    return picks


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.settings = [int(value) for value in str(args.threads).split(",") if value.strip()]
        self.envs = {threads: environment(work, threads) for threads in self.settings}
        self.threads = self.settings[0]  # the setting the next command runs under
        self.ttsf = ttsf_command()
        self.prompts_file = _common.write_prompts(work, args.prompts)
        self.runs: list[Run] = []
        self.servers: dict[float, _common.ProcessServer] = {}
        self.loop_model: str = ""  # the tiny FLUX's folder
        self.gemini_model: str = "tiny-flux"  # what ttsf's gemini cases pass to --model
        self.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
        unknown = set(self.cases) - {"readme", "rerun", "gemini"}
        if unknown or ("rerun" in self.cases and "readme" not in self.cases):
            raise SystemExit(f"--cases: received {args.cases!r}, allowed: readme, rerun (with readme), gemini")
        self.finished: Path | None = None  # a finished readme output folder, for the re-runs
        self._fresh = 0

    @property
    def env(self) -> dict[str, str]:
        return self.envs[self.threads]

    def fresh(self, name: str) -> Path:
        self._fresh += 1
        return self.work / "out" / f"{name}-{self._fresh}"

    # ----- the sides -----

    def readme(self, side: str, repeat: int) -> Run:
        output = self.fresh(f"readme-{side}")
        executor = [] if side == "default" else ["--executor", side.removeprefix("--executor ")]
        load = os.getloadavg()[0]
        done, wall, cpu = timed([*self.ttsf, "run", *README_JOB, "--output_dir", str(output), *executor], self.env,
                                f"readme {side}")
        did = DID.search(done.stdout)
        run = Run("readme", side, repeat, wall, cpu, load, generated=int(did.group(1)), graded=int(did.group(2)))
        if side == "default" and self.finished is None:
            self.finished = output  # the re-runs' folder
        else:
            shutil.rmtree(output, ignore_errors=True)
        return run

    def rerun(self, repeat: int) -> Run:
        load = os.getloadavg()[0]
        done, wall, cpu = timed([*self.ttsf, "run", *README_JOB, "--output_dir", str(self.finished)], self.env, "rerun")
        if NOTHING not in done.stdout:
            raise RuntimeError(f"the re-run did something:\n{done.stdout}")
        return Run("rerun", "default", repeat, wall, cpu, load, generated=0, graded=0, nothing_to_do=True)

    def gemini(self, latency: float, side: str, repeat: int) -> Run:
        server = self.servers[latency]
        output = self.fresh(f"gemini-{latency:g}-{side}")
        env = self.env | {"GEMINI_BASE_URL": server.url}
        if side == "ttsf":
            command = [*self.ttsf, "run", "--dataset", str(self.prompts_file), "--num_prompts", "all", "--model",
                       self.gemini_model, "--verifier_to_use", "gemini", "--search_rounds", str(self.args.rounds),
                       "--output_dir", str(output), *self.call_flags("_")]
        else:
            command = [sys.executable, str(LOOP), "--model", self.loop_model, "--prompts-file", str(self.prompts_file),
                       "--rounds", str(self.args.rounds), "--base-url", server.url, "--out", str(output),
                       *self.call_flags("-")]
        calls, load = server.call_count(), os.getloadavg()[0]
        done, wall, cpu = timed(command, env, f"gemini {latency:g} {side}")
        requests = server.call_count() - calls
        picks = ttsf_picks(output) if side == "ttsf" else \
            {key: int(value) for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items()}
        shutil.rmtree(output, ignore_errors=True)
        run = Run(f"gemini-{latency:g}", side, repeat, wall, cpu, load, requests=requests, picks=picks)
        if side == "ttsf":
            did = DID.search(done.stdout)
            run.generated, run.graded = int(did.group(1)), int(did.group(2))
        return run

    def call_flags(self, joiner: str) -> list[str]:
        """The pipeline call of the gemini cases, spelled for ttsf (`_`) or the loop (`-`): tiny-flux's own
        defaults (128x128, 4 steps, 64 tokens, guidance 3.5: the loop's defaults too), or the scaled model's."""
        if not self.args.scaled:
            return []
        steps = "num_inference_steps" if joiner == "_" else "steps"
        ttsf_only = ["--guidance_scale", "3.5", "--torch_dtype", "fp32"]  # a folder's default dtype is FLUX's bf16
        return ["--height", "128", "--width", "128", f"--{steps}", "4",
                f"--max{joiner}sequence{joiner}length", "128"] + (ttsf_only if joiner == "_" else [])

    # ----- the plan -----

    def warm_up(self) -> None:
        """Untimed: build the tiny FLUX (once per machine), create the temporary server's database, fill
        the page cache for both kinds of process."""
        started = time.perf_counter()
        timed([*self.ttsf, "run", *README_JOB, "--output_dir", str(self.fresh("warm"))], self.env, "warm-up")
        build = ("from ttsf_core.pipelines.tiny import ensure_tiny_flux; " +
                 (f"print(ensure_tiny_flux({str(self.work / 'tiny-flux-w2-l2')!r}, 2, 2))" if self.args.scaled else
                  "print(ensure_tiny_flux())"))
        found = subprocess.run([sys.executable, "-c", build], env=self.env, capture_output=True, text=True,
                               timeout=TIMEOUT_S, cwd=_common.REPO_ROOT, check=True)
        self.loop_model = found.stdout.strip().splitlines()[-1]
        self.gemini_model = self.loop_model if self.args.scaled else "tiny-flux"
        if not self.args.skip_prefect and "readme" in self.cases:
            timed([*self.ttsf, "run", *README_JOB, "--output_dir", str(self.fresh("warm")), "--executor", "prefect"],
                  self.env, "warm-up prefect")
        if self.servers:
            server = self.servers[min(self.servers)]
            timed([sys.executable, str(LOOP), "--model", self.loop_model, "--prompts-file", str(self.prompts_file),
                   "--rounds", "1", "--base-url", server.url, "--out", str(self.fresh("warm")), *self.call_flags("-")],
                  self.env, "warm-up loop")
        print(f"warm-up: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    def run(self) -> None:
        latencies = [float(value) for value in self.args.latencies.split(",") if value.strip()] \
            if "gemini" in self.cases else []
        for latency in latencies:
            self.servers[latency] = _common.ProcessServer(latency)
        try:
            self.warm_up()
            readme_sides = ["default", "--executor threads"] + ([] if self.args.skip_prefect else ["--executor prefect"])
            for repeat in range(self.args.repeats):
                for self.threads in (self.settings[::-1] if repeat % 2 else self.settings):
                    self.repeat_cases(repeat, readme_sides, latencies)
        finally:
            for server in self.servers.values():
                server.stop()

    def repeat_cases(self, repeat: int, readme_sides: list[str], latencies: list[float]) -> None:
        flip = repeat % 2 == 1
        if "readme" in self.cases:
            for side in (readme_sides[::-1] if flip else readme_sides):
                self.record(self.readme(side, repeat))
        if "rerun" in self.cases:
            self.record(self.rerun(repeat))
        for latency in latencies:
            for side in (("loop", "ttsf") if flip else ("ttsf", "loop")):
                self.record(self.gemini(latency, side, repeat))
                self.check_picks(latency)

    def check_picks(self, latency: float) -> None:
        """Whether every run of this latency, either side, picked what the first one did in every (prompt,
        round). A difference is reported (table, target) and its (prompt, round)s printed, not raised: on a
        larger model batched and one-at-a-time float math may differ in the last bits, and a grade that is a
        function of the pixels may then tip a near tie."""
        runs = [run for run in self.runs if run.case == f"gemini-{latency:g}"]
        expected = self.args.prompts * self.args.rounds
        for run in runs:
            run.same_picks = run.picks == runs[0].picks and len(run.picks) == expected
            if not run.same_picks:
                differ = sorted(key for key in set(run.picks) | set(runs[0].picks)
                                if run.picks.get(key) != runs[0].picks.get(key))
                print(f"gemini-{latency:g}: {run.side} (repeat {run.repeat + 1}) picks differ from the first run's in "
                      f"{differ}: {[run.picks.get(k) for k in differ]} vs {[runs[0].picks.get(k) for k in differ]}",
                      file=sys.stderr, flush=True)

    def record(self, run: Run) -> None:
        run.threads = self.threads
        self.runs.append(run)
        print(f"threads {run.threads} {run.case:11} {run.side:20} repeat {run.repeat}: wall {run.wall_s:6.2f} s, CPU {run.cpu_s:6.2f} s, "
              f"load {run.load_before:.1f}", file=sys.stderr, flush=True)


# ----- tables -----

def medians(runs: list[Run], case: str, side: str) -> tuple[float, float, int]:
    chosen = [run for run in runs if run.case == case and run.side == side]
    return _common.median([r.wall_s for r in chosen]), _common.median([r.cpu_s for r in chosen]), len(chosen)


def pair_ratios(runs: list[Run], case: str, numerator: str, denominator: str, cpu: bool = False) -> list[float]:
    """numerator / denominator of each repeat: the two ran next to each other, under about the same load."""
    by = {(run.side, run.repeat): (run.cpu_s if cpu else run.wall_s) for run in runs if run.case == case}
    repeats = sorted({repeat for side, repeat in by if side == numerator} & {repeat for side, repeat in by
                                                                             if side == denominator})
    return [by[(numerator, repeat)] / by[(denominator, repeat)] for repeat in repeats]


def summary(runs: list[Run], args: argparse.Namespace) -> tuple[str, str, list[dict]]:
    rows, targets, verdicts = [], [], []
    for case in dict.fromkeys(run.case for run in runs):
        for side in dict.fromkeys(run.side for run in runs if run.case == case):
            wall, cpu, count = medians(runs, case, side)
            chosen = [run for run in runs if run.case == case and run.side == side]
            requests = sorted({run.requests for run in chosen if run.requests is not None})
            picks = [run.same_picks for run in chosen if run.same_picks is not None]
            rows.append([case, side, count, f"{wall:.2f}", f"{cpu:.2f}",
                         f"{min(r.wall_s for r in chosen):.2f}-{max(r.wall_s for r in chosen):.2f}",
                         ",".join(map(str, requests)) or "-",
                         f"{sum(picks)}/{len(picks)}" if picks else "-"])

    def verdict(name: str, measured: str, holds: bool) -> None:
        targets.append([name, measured, "met" if holds else "MISSED"])
        verdicts.append({"target": name, "measured": measured, "met": holds})

    def ratios(case: str, numerator: str, denominator: str) -> tuple[float, float, float, float]:
        """(ratio of the medians, median of the pairs' ratios) for wall, then for CPU."""
        top, bottom = medians(runs, case, numerator), medians(runs, case, denominator)
        return (top[0] / bottom[0], _common.median(pair_ratios(runs, case, numerator, denominator)),
                top[1] / bottom[1], _common.median(pair_ratios(runs, case, numerator, denominator, cpu=True)))

    cases = {run.case for run in runs}
    if "readme" in cases:
        default, threads = medians(runs, "readme", "default"), medians(runs, "readme", "--executor threads")
        wall, pairs, cpu, cpu_pairs = ratios("readme", "default", "--executor threads")
        verdict(f"readme: default <= {DEFAULT_VS_THREADS}x --executor threads (wall)",
                f"{wall:.2f}x ({default[0]:.2f} s vs {threads[0]:.2f} s; pairs {pairs:.2f}x); CPU {cpu:.2f}x "
                f"(pairs {cpu_pairs:.2f}x)", wall <= DEFAULT_VS_THREADS and pairs <= DEFAULT_VS_THREADS)
        if any(run.side == "--executor prefect" for run in runs):
            prefect = medians(runs, "readme", "--executor prefect")
            wall, pairs, cpu, _ = ratios("readme", "--executor prefect", "default")
            targets.append(["(context) readme: --executor prefect (a temporary server: the default before) / the "
                            "default", f"{wall:.2f}x wall ({prefect[0]:.2f} s; pairs {pairs:.2f}x), {cpu:.2f}x CPU "
                            f"({prefect[1]:.2f} s)", "-"])
    for latency in [float(value) for value in args.latencies.split(",") if value.strip()]:
        case = f"gemini-{latency:g}"
        if case not in cases:
            continue
        ttsf, loop = medians(runs, case, "ttsf"), medians(runs, case, "loop")
        wall, pairs, cpu, cpu_pairs = ratios(case, "loop", "ttsf")
        wanted = SPEEDUP.get(latency)
        picks = all(run.same_picks for run in runs if run.case == case)
        measured = (f"{wall:.2f}x wall ({loop[0]:.2f} s vs {ttsf[0]:.2f} s; pairs {pairs:.2f}x); CPU {ttsf[1]:.2f} s vs "
                    f"{loop[1]:.2f} s ({cpu:.2f}x; pairs {cpu_pairs:.2f}x); picks {'equal' if picks else 'DIFFERENT'}")
        if wanted is None:
            targets.append([f"{case}: tt-scale-flux-style / ttsf (no target at this latency)", measured, "-"])
        else:
            verdict(f"{case}: >= {wanted}x faster than the tt-scale-flux-style process, fewer CPU s, equal picks",
                    measured, min(wall, pairs) >= wanted and ttsf[1] < loop[1] and picks)
    if "rerun" in cases:
        rerun = medians(runs, "rerun", "default")
        verdict(f"rerun: a finished run's re-run <= {RERUN_S:g} s (wall)", f"{rerun[0]:.2f} s (CPU {rerun[1]:.2f} s)",
                rerun[0] <= RERUN_S)
    table = _common.markdown_table(["case", "side", "runs", "median wall s", "median CPU s", "wall range s",
                                    "requests", "same picks"], rows)
    return table, _common.markdown_table(["target", "measured (medians; pairs: median of each repeat's ratio)",
                                          "verdict"], targets), verdicts


def runs_table(runs: list[Run]) -> str:
    return _common.markdown_table(
        ["repeat", "threads", "case", "side", "wall s", "CPU s", "load before", "generated / graded", "requests"],
        [[run.repeat + 1, run.threads or "default", run.case, run.side, f"{run.wall_s:.2f}", f"{run.cpu_s:.2f}", f"{run.load_before:.1f}",
          "Nothing to do" if run.nothing_to_do else
          (f"{run.generated} / {run.graded}" if run.generated is not None else "-"),
          run.requests if run.requests is not None else "-"] for run in runs])


def threads_text(threads: int) -> str:
    return f"OMP_NUM_THREADS={threads}" if threads else "OMP_NUM_THREADS unset (torch's default, one thread per core)"


def machine(settings: list[int], env: dict[str, str]) -> str:
    versions = subprocess.run([sys.executable, "-c", "import torch, diffusers, prefect, platform; print(torch.__version__, "
                               "diffusers.__version__, prefect.__version__, platform.python_version())"],
                              env=env, capture_output=True, text=True, timeout=300).stdout.split()
    torch_v, diffusers_v, prefect_v, python_v = (versions + ["?"] * 4)[:4]
    return (f"{os.cpu_count()} CPUs ({_common.cpu_model()}), python {python_v}, torch {torch_v}, diffusers {diffusers_v}, "
            f"prefect {prefect_v}; every command with " + ", then ".join(threads_text(t) for t in settings)
            + (" (interleaved: each repeat runs every case under each, alternating the order)" if len(settings) > 1 else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ttsf-bench-cli-"))
    bench = Bench(args, work)
    load_start, started = os.getloadavg(), time.perf_counter()
    try:
        bench.run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder: {work}", file=sys.stderr)
    load_end = os.getloadavg()
    print(f"machine: {machine(bench.settings, bench.envs[bench.settings[0]])}")
    print(f"gemini cases' model: {'the scaled tiny FLUX (width x2, 2+2 blocks, 128 T5 tokens)' if args.scaled else 'tiny-flux'}; "
          f"{args.prompts} prompts x {args.rounds} rounds; command: python benchmarks/bench_cli.py "
          + " ".join(sys.argv[1:]))
    print(f"load average (1, 5, 15 min) at start {load_start[0]:.1f} {load_start[1]:.1f} {load_start[2]:.1f}, "
          f"at end {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f}; {time.perf_counter() - started:.0f} s in all\n")
    print(runs_table(bench.runs) + "\n")
    verdicts = []
    for threads in bench.settings:
        table, targets, found = summary([run for run in bench.runs if run.threads == threads], args)
        verdicts += [verdict | {"threads": threads} for verdict in found]
        if len(bench.settings) > 1:
            print(f"### {threads_text(threads)}\n")
        print(table + "\n")
        print(targets + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": [{k: v for k, v in asdict(run).items() if k != "picks"}
                                                   for run in bench.runs],
                                         "targets": verdicts, "load_start": load_start, "load_end": load_end},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
