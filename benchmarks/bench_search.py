"""A whole search (prompts x rounds) against a local fake Gemini: ttsf vs tt-scale-flux's loop.

Both sides use the same tiny FLUX (built offline), the same candidate seeds (random search's
`plan_round`, ttsf_core.search) and the same latents (ttsf_core.noise.draw_latents), and talk to the same FakeGeminiServer over
real HTTP with the real google-genai client; the server answers after a fixed latency.

  baseline  what tt-scale-flux's main()/sample() do, written here: for each round, for each
            prompt, generate one image per pipeline call (its default batch_size_for_img_gen=1)
            with the prompt TEXT (so the text encoders run again every time), save it, then grade
            the images with one request each on a pool of 4 threads and wait for all of them
            before going on. Grades are kept in input order, so both sides must pick the same seeds.
  ttsf      ttsf_core.usecases.runner.run (the search engine with the thread executor) with GeminiVerifier at
            the default batch size: the prompt is encoded once, candidates are generated in batches,
            and grading of earlier rounds overlaps generation of later ones.

The script asserts that every (prompt, round) selects the same seed on both sides. "generating"
is the time spent inside generation (prompt encoding, latents, pipeline call): for the baseline on
its one thread, for ttsf inside the CandidateGenerator's lock, on whichever of the executor's
generation threads holds it; the rest of the wall time is generator idle time (waiting on the
verifier, bookkeeping, and writing PNGs where that happens on a generating thread: always for the
baseline; ttsf writes them on separate PNG threads beside the next pipeline call, reported apart).

    python benchmarks/bench_search.py                        # latencies 0.2 and 0.4 s; ~2 min
    python benchmarks/bench_search.py --latency-s 0          # generation alone (no verifier wait)
    python benchmarks/bench_search.py --latency-s 0.2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root and tests/ on sys.path)

PROMPTS = _common.PROMPTS
BASELINE_VERIFIER_THREADS = 4  # tt-scale-flux's GeminiVerifier: ThreadPoolExecutor(max_workers=4)
IDLE_TARGET = 0.10
SPEEDUP_TARGET = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Wall time of a full noise search, ttsf (batched, encode once, overlapped grading) vs "
        "tt-scale-flux's loop (one by one, re-encoding, grade after each round), against a local fake Gemini."
    )
    parser.add_argument("--latency-s", default="0.2,0.4",
                        help="fake Gemini answer latency in seconds; a comma list runs one comparison each")
    parser.add_argument("--repeats", type=int, default=2,
                        help="comparisons per latency, alternating which side runs first; medians are reported")
    parser.add_argument("--prompts", type=int, default=4, choices=range(1, len(PROMPTS) + 1), metavar="N",
                        help=f"prompts searched (1-{len(PROMPTS)})")
    parser.add_argument("--rounds", type=int, default=4, help="search rounds (2+4+8+16 candidates for 4)")
    _common.add_tiny_model_args(parser)
    parser.add_argument("--server", choices=("process", "thread"), default="process",
                        help="run the fake Gemini in its own process (default: its request handling does not "
                        "compete with generation for this process's GIL, as a remote service would not) or "
                        "in a thread of this process")
    args = parser.parse_args(argv)
    args.latencies = [float(value) for value in args.latency_s.split(",") if value.strip()]
    return args


BusyClock = _common.BusyClock


@dataclass
class SideResult:
    wall_s: float
    generating_s: float
    generating_cpu_s: float
    png_s: float  # writing candidate PNGs on a generating thread
    tail_s: float  # from the last generation (or PNG write on a generating thread) to the end of the search
    verifier_calls: int
    pipeline_calls: int
    prompt_encodings: int
    picks: dict[tuple[int, int], int] = field(default_factory=dict)
    png_off_s: float = 0.0  # thread-seconds writing PNGs on other threads (overlapping generation)
    png_off_cpu_s: float = 0.0  # their CPU seconds
    process_cpu_s: float = 0.0  # this process, all threads, during the search

    @property
    def idle_fraction(self) -> float:
        return max(0.0, 1.0 - self.generating_s / self.wall_s)


# ----- the baseline: tt-scale-flux's loop -----

def plan_seeds(config, prompt: str, search_round: int) -> list[int]:
    """The round's seeds as ttsf's random search draws them (the baseline searches the same noises)."""
    from ttsf_core.resolve import resolve
    from ttsf_core.search import build_strategy

    return [candidate.noise.seed for candidate in build_strategy(resolve(config)).plan_round(prompt, search_round, [])]


def run_baseline(pipe, config, prompts: list[str], output_dir: Path, server) -> SideResult:
    from ttsf_core.noise import draw_latents
    from ttsf_core.resolve import resolve
    from ttsf_core.verifiers.gemini import GeminiVerifier

    args, metric = config.pipeline_call_args, resolve(config).metric
    clock = BusyClock()
    draw = clock.wrap(draw_latents)
    call = clock.wrap(pipe.__call__)
    picks: dict[tuple[int, int], int] = {}
    save = BusyClock()
    calls_before = server.call_count()
    output_dir.mkdir(parents=True, exist_ok=True)
    with GeminiVerifier(config.verifier_args) as verifier:
        start, cpu = time.perf_counter(), _common.process_cpu_seconds()
        for search_round in range(1, config.search_args.search_rounds + 1):  # rounds outer, as in its main()
            for prompt_index, prompt in enumerate(prompts):
                seeds = plan_seeds(config, prompt, search_round)
                latents = draw(pipe, seeds, args.height, args.width)
                images = []
                for index, seed in enumerate(seeds):
                    image = _common.one_call_per_image(call, prompt, latents[index : index + 1], args)
                    save.wrap(image.save)(output_dir / f"p{prompt_index}_r{search_round}_i{index}_s{seed}.png")
                    images.append(image)
                grades = grade_like_tt_scale_flux(verifier, prompt, images)
                picks[(prompt_index, search_round)] = seeds[first_best(grades, metric)]
        end, cpu = time.perf_counter(), _common.process_cpu_seconds() - cpu
    images_made = sum(len(plan_seeds(config, prompt, r)) for prompt in prompts
                      for r in range(1, config.search_args.search_rounds + 1))
    # One pipeline call per image, and every call encodes the prompt text again.
    tail = end - max(clock.last_end, save.last_end)
    return SideResult(end - start, clock.seconds, clock.cpu_seconds, save.seconds, tail,
                      server.call_count() - calls_before, images_made, images_made, picks, process_cpu_s=cpu)


def first_best(grades: list, metric: str) -> int:
    """tt-scale-flux's pick: a stable sort on the metric, descending, so the first of equals wins."""
    return max(range(len(grades)), key=lambda index: grades[index].score(metric))


def grade_like_tt_scale_flux(verifier, prompt: str, images: list) -> list:
    """One request per image on a fresh pool of min(4, n) threads; the round waits for all of them."""
    with ThreadPoolExecutor(max_workers=min(BASELINE_VERIFIER_THREADS, len(images))) as pool:
        return list(pool.map(lambda image: verifier.score_one(prompt, image), images))


# ----- ttsf -----

def run_ours(pipe, config, server) -> SideResult:
    from ttsf_core.usecases import runner
    from ttsf_core.engine.generate import CandidateGenerator
    from ttsf_core.resolve import resolve

    prepared = runner.prepare_run(config)
    generator = CandidateGenerator(pipe, resolve(config))
    calls_before = server.call_count()
    try:
        with _common.generation_clock(generator) as (clock, threads), _common.png_clocks(threads) as (png, png_off):
            start, cpu = time.perf_counter(), _common.process_cpu_seconds()
            _, outcome = runner.run(prepared, generator)
            end, cpu = time.perf_counter(), _common.process_cpu_seconds() - cpu
    finally:
        prepared.verifier.close()
    outcome.raise_first()
    assert outcome.counts.images_generated == sum(len(r.candidates) for r in outcome.records), "not a fresh run"
    picks = {(record.prompt_index, record.search_round): record.best_noise_seed for record in outcome.records}
    counts = generator.counts
    tail = end - max(clock.last_end, png.last_end)
    return SideResult(end - start, clock.seconds, clock.cpu_seconds, png.seconds, tail,
                      server.call_count() - calls_before, counts.pipeline_calls, counts.prompt_encodings, picks,
                      png_off.seconds, png_off.cpu_seconds, cpu)


def warm_up(pipe, config, prompt: str) -> None:
    """First calls pay one-off costs (allocator, oneDNN kernel choice) per batch shape: pay them
    for every shape both sides will use before anything is timed."""
    from ttsf_core.engine.generate import CandidateGenerator, seed_candidates
    from ttsf_core.resolve import resolve

    generator = CandidateGenerator(pipe, resolve(config))
    for search_round in (1, 2):  # pools of 2 and 4: every ttsf batch shape at batch size 4
        generator.generate(prompt, seed_candidates(plan_seeds(config, prompt, search_round),
                                                   config.pipeline_call_args.num_inference_steps))
    args = config.pipeline_call_args
    pipe(prompt=[prompt], height=args.height, width=args.width, num_inference_steps=args.num_inference_steps,
         max_sequence_length=args.max_sequence_length, output_type="pil")


def compare(args, pipe, model_dir: Path, prompts_file: Path, run_dir: Path, latency: float, order: int) -> dict:
    """One side-by-side comparison at one latency; `order` alternates which side goes first, so a
    slow spell on the machine does not always land on the same side."""
    from ttsf_core.prompts import load_prompts

    server = (_common.ProcessServer if args.server == "process" else _common.ThreadServer)(latency)
    try:
        config = _common.search_config(args, model_dir, prompts_file, run_dir / "ours", server.url)
        prompts = load_prompts(config.prompts)
        sides = {
            "baseline": lambda: run_baseline(pipe, config, prompts, run_dir / "baseline", server),
            "ttsf": lambda: run_ours(pipe, config, server),
        }
        names = ["baseline", "ttsf"] if order % 2 == 0 else ["ttsf", "baseline"]
        results = {name: sides[name]() for name in names}
    finally:
        server.stop()
    return {"latency": latency, "concurrency": config.verifier_args.max_concurrency, **results}


def mismatches(result: dict) -> list[str]:
    ours, base = result["ttsf"].picks, result["baseline"].picks
    return [f"prompt {p} round {r}: baseline seed {base.get((p, r))}, ttsf seed {ours.get((p, r))}"
            for (p, r) in sorted(set(ours) | set(base)) if ours.get((p, r)) != base.get((p, r))]


def print_runs(results: list[dict]) -> list[str]:
    """One row per side per comparison; returns the selection mismatches found."""
    header = ["latency s", "run", "side", "wall s", "generating s", "generating CPU s", "generator idle",
              "idle: PNG writes s", "idle: after last image+PNG s", "PNG writes on other threads: thread-s / CPU s",
              "this process CPU s: all / besides generation",
              "verifier calls", "pipeline calls", "prompt encodings", "same picks"]
    rows, problems = [], []
    for result in results:
        bad = mismatches(result)
        problems += [f"latency {result['latency']:g} run {result['run']}: {line}" for line in bad]
        same = f"{len(result['ttsf'].picks) - len(bad)}/{len(result['ttsf'].picks)}"
        for name in ("baseline", "ttsf"):
            side = result[name]
            rows.append([f"{result['latency']:g}", result["run"], name, f"{side.wall_s:.2f}",
                         f"{side.generating_s:.2f}", f"{side.generating_cpu_s:.2f}", f"{100 * side.idle_fraction:.1f}%",
                         f"{side.png_s:.2f}", f"{side.tail_s:.2f}", f"{side.png_off_s:.2f} / {side.png_off_cpu_s:.2f}",
                         f"{side.process_cpu_s:.2f} / {side.process_cpu_s - side.generating_cpu_s:.2f}", side.verifier_calls,
                         side.pipeline_calls,
                         side.prompt_encodings, same])
    print(_common.markdown_table(header, rows))
    return problems


def print_summary(results: list[dict]) -> None:
    """Per latency, medians over the runs, and the targets."""
    rows = []
    for latency in dict.fromkeys(result["latency"] for result in results):
        runs = [result for result in results if result["latency"] == latency]
        med = lambda values: _common.median(list(values))  # noqa: E731
        ratio = med(r["baseline"].wall_s / r["ttsf"].wall_s for r in runs)
        idle = med(r["ttsf"].idle_fraction for r in runs)
        generating = med(r["ttsf"].generating_s for r in runs)
        verifier_work = med(r["ttsf"].verifier_calls for r in runs) * latency / runs[0]["concurrency"]
        verifier_bound = verifier_work >= generating
        rows.append([
            f"{latency:g}",
            f"{ratio:.2f}x",
            f"{med(r['baseline'].generating_s / r['ttsf'].generating_s for r in runs):.2f}x",
            f"{med(r['baseline'].generating_cpu_s / r['ttsf'].generating_cpu_s for r in runs):.2f}x",
            f"{med(r['baseline'].idle_fraction for r in runs) * 100:.1f}%",
            f"{idle * 100:.1f}%",
            f"{verifier_work:.2f} s vs {generating:.2f} s ({'verifier' if verifier_bound else 'generation'}-bound)",
            "met" if ratio >= SPEEDUP_TARGET else "MISSED",
            "n/a (verifier-bound)" if verifier_bound else ("met" if idle < IDLE_TARGET else "MISSED"),
        ])
    header = ["latency s", "wall ratio baseline/ttsf", "generating wall ratio", "generating CPU ratio",
              "baseline idle", "ttsf idle", "ttsf verifier work/concurrency vs generating",
              f"target >= {SPEEDUP_TARGET:g}x", f"target idle < {100 * IDLE_TARGET:.0f}%"]
    print(_common.markdown_table(header, rows))


def print_diagnosis(results: list[dict]) -> None:
    """Where ttsf's wall time beyond its generation CPU went, per latency (medians over runs), and the
    ratio it would reach without those losses: the reasons a target is missed, in seconds."""
    print("\nwhere ttsf's time went (medians), and the ratio without those losses:")
    for latency in dict.fromkeys(result["latency"] for result in results):
        runs = [result for result in results if result["latency"] == latency]
        med = lambda values: _common.median(list(values))  # noqa: E731
        png = med(r["ttsf"].png_s for r in runs)
        png_off = med(r["ttsf"].png_off_s for r in runs)
        tail = med(r["ttsf"].tail_s for r in runs)
        other = med(r["ttsf"].wall_s - r["ttsf"].generating_s - r["ttsf"].png_s - r["ttsf"].tail_s for r in runs)
        slowed = med(r["ttsf"].generating_s - r["ttsf"].generating_cpu_s for r in runs)
        besides = med(r["ttsf"].process_cpu_s - r["ttsf"].generating_cpu_s for r in runs)
        # The baseline's wall time with its own generation at CPU speed too, so contention does not inflate it.
        bound = med((r["baseline"].wall_s - r["baseline"].generating_s + r["baseline"].generating_cpu_s)
                    / r["ttsf"].generating_cpu_s for r in runs)
        print(f"- latency {latency:g} s: {png:.2f} s writing PNGs on the generator thread ({png_off:.2f} thread-s more on "
              f"ttsf's PNG threads, overlapped), {tail:.2f} s waiting for the last round's grades after the last image, "
              f"{other:.2f} s other idle, and generation itself {slowed:.2f} s slower than its CPU time (this process's "
              f"verifier, PNG-writing and engine threads, {besides:.2f} CPU-s besides generation, and other processes "
              f"holding the GIL/CPU); with none of these: {bound:.2f}x")


def print_contention(results: list[dict]) -> None:
    """The baseline generates with nothing else running in this process, on one torch thread: its
    generation wall time exceeds its CPU time only when other processes take the CPU."""
    wall = sum(result["baseline"].generating_s for result in results)
    cpu = sum(result["baseline"].generating_cpu_s for result in results)
    print(f"\nmachine contention: the baseline's generation got {100 * cpu / wall:.0f}% of a core "
          "(100% on a quiet machine); wall-time ratios are only as steady as this. The CPU ratio is not "
          "affected by other processes.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    _common.quiet_libraries()
    _common.use_fake_gemini_key()

    results = []
    with tempfile.TemporaryDirectory(prefix="ttsf-bench-search-") as folder:
        workdir = Path(folder)
        model_dir = _common.build_tiny_model(workdir, args.width_multiplier, args.num_layers)
        prompts_file = workdir / "prompts.txt"
        prompts_file.write_text("\n".join(PROMPTS[: args.prompts]) + "\n")
        pipe = _common.load_tiny_pipeline(model_dir)
        warm_up(pipe, _common.search_config(args, model_dir, prompts_file, workdir / "warm", "http://127.0.0.1:9"), PROMPTS[0])
        for latency in args.latencies:
            for run in range(args.repeats):
                run_dir = workdir / f"latency-{latency:g}" / f"run-{run}"  # fresh: nothing to resume
                result = compare(args, pipe, model_dir, prompts_file, run_dir, latency, len(results))
                results.append({**result, "run": run + 1})

    candidates = sum(2 * 2 ** (r - 1) for r in range(1, args.rounds + 1))
    print(_common.machine_line(args.threads))
    print(f"search: {args.prompts} prompts x {args.rounds} rounds = {candidates} candidates a prompt; tiny FLUX width "
          f"x{args.width_multiplier}, {args.num_layers}+{args.num_layers} blocks, {args.resolution}px, {args.steps} steps, "
          f"max_sequence_length {args.max_sequence_length}; baseline grades with {BASELINE_VERIFIER_THREADS} threads, "
          f"ttsf with max_concurrency {results[0]['concurrency']}; fake Gemini in a {args.server}")
    problems = print_runs(results)
    print()
    print_summary(results)
    print_diagnosis(results)
    print_contention(results)
    if problems:
        print("\nSELECTION MISMATCH (the two sides must pick the same seed):\n" + "\n".join(problems))
        raise AssertionError(f"{len(problems)} (prompt, round) picks differ between baseline and ttsf")
    print(f"\nselections: every (prompt, round) picked the same seed on both sides, in all {len(results)} comparisons.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
