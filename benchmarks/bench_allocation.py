"""Uniform vs adaptive allocation of rounds across a dataset, at equal NFE budgets, on CPU.

A SYNTHETIC OBJECTIVE: it measures the allocation policy, not image quality. Images are real (the
offline tiny FLUX, random weights, 64x64, 2 steps, through ttsf_core.usecases.runner.run), but their score is a
stand-in with prompt-dependent difficulty, built so the right allocation is known:
    prompt p has a difficulty d_p in [0, 1) (from a hash of its text), a mean mu_p = 9.6 - 4 d_p and a
    spread sd_p = 0.5 + 1.0 d_p; an image's score is mu_p + sd_p * z clipped to the rubric's 0-10, where z
    is a standard normal drawn from a hash of the image's pixels (the same image always scores the same).
So an easy prompt's first images already reach the top of the scale (nothing to gain from more: the
issue's "its first image already scored 9.8"), a hard one's best keeps climbing with more images:
uniform allocation spends the same on both, adaptive should not. Like the rubric graders, the stand-in
says its top (score_max 10), which the allocation's estimator uses.

Each policy runs random search (2, 4, 8, ... images a round) over the same prompts and base seeds:
  uniform   --rounds rounds for every prompt: the budget B = what that costs (every prompt's rounds)
  adaptive  budget.allocation adaptive, budget.max_nfe at 60%, 80% and 100% of B, up to --max-rounds
            rounds a prompt, --plateau-rounds/--plateau-delta if given
Each run has its own output folder (its records, its allocation), all linked to one image and grade store:
a round two runs share is generated and graded once, which changes nothing the policies decide. Reported, per base seed and pooled: the dataset mean of the best
scores, the share of prompts whose best is higher under adaptive than uniform at the same budget (and
lower), and the NFEs adaptive needs to reach uniform's mean (linear between the measured budgets).

    python benchmarks/bench_allocation.py                     # ~25 min on 2 cores: 200 prompts x 3 seeds
    python benchmarks/bench_allocation.py --prompts 120 --seeds 1   # ~5 min
"""

from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ttsf_core.resolve import resolve
import _common  # noqa: E402  (puts the repo root on sys.path)

STAND_IN = "bench-difficulty"
SHARES = (0.6, 0.7, 0.8, 0.9, 1.0)
SHARED_PROMPTS = _common.REPO_ROOT.parent / "shared" / "data" / "open_image_preferences_prompts.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Uniform vs adaptive allocation at equal NFE budgets on a "
                                     "synthetic objective with prompt-dependent difficulty (the policy, not image quality).")
    parser.add_argument("--prompts", type=int, default=200, help="prompts (from --prompts-file, repeated with a suffix "
                        "when it has fewer)")
    parser.add_argument("--prompts-file", type=Path, default=SHARED_PROMPTS if SHARED_PROMPTS.is_file() else None)
    parser.add_argument("--seeds", type=int, default=3, help="base seeds 0..N-1")
    parser.add_argument("--rounds", type=int, default=3, help="uniform: rounds a prompt (the budget B)")
    parser.add_argument("--max-rounds", type=int, default=5, help="adaptive: the most rounds a prompt may get")
    parser.add_argument("--plateau-rounds", type=int, default=None)
    parser.add_argument("--plateau-delta", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args(argv)


def difficulty(prompt: str) -> float:
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64


class DifficultyVerifier:
    """The stand-in objective (module docstring): mu_p + sd_p * z(image)."""

    name = STAND_IN
    batch_size = 64
    score_max = 10.0
    metrics = ("overall_score",)
    default_metric = "overall_score"

    def __init__(self, args):
        pass

    def score(self, prompt, images):
        from ttsf_core.verifiers.base import grades_from_scores

        d = difficulty(prompt)
        found = []
        for image in images:
            digest = hashlib.sha256(image.tobytes()).digest()
            uniform = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
            z = statistics.NormalDist().inv_cdf(uniform)
            score = min(10.0, max(0.0, 9.6 - 4 * d + (0.5 + 1.0 * d) * z))
            found.append(grades_from_scores({"overall_score": score}, "stand-in"))
        return found

    def close(self) -> None:
        pass


def load_prompts(args) -> list[str]:
    base = [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if args.prompts_file is not None else list(_common.PROMPTS)
    found = []
    while len(found) < args.prompts:
        round_ = len(found) // len(base)
        found += [p if round_ == 0 else f"{p} (variant {round_})" for p in base]
    return found[: args.prompts]


def run_policy(base: dict, seed: int, rounds: int, budget: dict, generator, folder: Path,
               store: Path) -> tuple[dict[int, float], int, float]:
    """prompt index -> best score, the NFEs spent (records), wall seconds. The run's own output folder
    `folder` holds its records; its store is the shared one (a link)."""
    from ttsf_core.usecases import runner
    from ttsf_core.config import build_config, merge

    folder.mkdir(parents=True)
    (folder / "store").symlink_to(store, target_is_directory=True)
    config = build_config(merge(base, {"seed": seed, "search_args": {"search_rounds": rounds}, "budget": budget,
                                       "output_dir": str(folder)}))
    start = time.perf_counter()
    _, outcome = runner.run(config, generator)
    seconds = time.perf_counter() - start
    outcome.raise_first()
    best: dict[int, float] = {}
    for record in outcome.records:
        if record.best_score is not None:
            best[record.prompt_index] = max(best.get(record.prompt_index, -math.inf), record.best_score)
    return best, sum(record.nfe for record in outcome.records), seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    _common.quiet_libraries()
    from ttsf_core.config import build_config
    from ttsf_core.engine.generate import CandidateGenerator
    from ttsf_core.pipelines import load_pipeline
    from ttsf_core.verifiers import catalog

    catalog.BUILTIN_VERIFIERS[STAND_IN] = f"{__name__}:DifficultyVerifier"
    if __name__ == "__main__":
        sys.modules.setdefault("bench_allocation", sys.modules[__name__])
        catalog.BUILTIN_VERIFIERS[STAND_IN] = "bench_allocation:DifficultyVerifier"
    prompts = load_prompts(args)
    results: dict[tuple[int, str, float], tuple[dict[int, float], int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ttsf-bench-allocation-") as folder:
        prompts_file = Path(folder) / "prompts.txt"
        prompts_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
        base = {"pretrained_model_name_or_path": "tiny-flux", "device": "cpu",
                "pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 2},
                "verifier_args": {"name": STAND_IN}, "batch_size_for_img_gen": 8,
                "prompts": {"dataset": str(prompts_file), "num_prompts": "all"}}
        generator = CandidateGenerator(load_pipeline(build_config(base)), resolve(build_config(base)))
        store = Path(folder) / "store"
        store.mkdir()
        for seed in range(args.seeds):
            runs = Path(folder) / f"seed-{seed}"
            best, spent, seconds = run_policy(base, seed, args.rounds, {}, generator, runs / "uniform", store)
            results[(seed, "uniform", 1.0)] = (best, spent, seconds)
            for share in SHARES:
                budget = {"allocation": "adaptive", "max_nfe": int(spent * share),
                          "plateau_rounds": args.plateau_rounds, "plateau_delta": args.plateau_delta}
                results[(seed, "adaptive", share)] = run_policy(base, seed, args.max_rounds, budget, generator,
                                                                runs / f"adaptive-{share:.0%}", store)
            print(f"seed {seed} done", file=sys.stderr, flush=True)
    report(args, prompts, results)
    return 0


def report(args, prompts, results) -> None:
    print(_common.machine_line(args.threads))
    print("SYNTHETIC OBJECTIVE: the allocation policy is measured, not image quality (score = mu_p + sd_p * z(image) "
          "clipped to 0-10, mu_p = 9.6 - 4 d_p, sd_p = 0.5 + 1.0 d_p, d_p from a hash of the prompt).")
    print(f"{len(prompts)} prompts x {args.seeds} base seeds; random search; uniform: {args.rounds} rounds a prompt "
          f"(budget B); adaptive: up to {args.max_rounds} rounds, max_nfe at {', '.join(f'{s:.0%}' for s in SHARES)} "
          f"of B, plateau {args.plateau_rounds or 'off'}")
    rows = []
    for seed in range(args.seeds):
        uniform, spent, seconds = results[(seed, "uniform", 1.0)]
        rows.append([seed, "uniform", "100%", spent, f"{statistics.fmean(uniform.values()):.4f}", "-", "-",
                     f"{seconds:.1f}"])
        for share in SHARES:
            best, used, took = results[(seed, "adaptive", share)]
            higher = sum(best[i] > uniform[i] + 1e-12 for i in uniform) / len(uniform)
            lower = sum(best[i] < uniform[i] - 1e-12 for i in uniform) / len(uniform)
            rows.append([seed, "adaptive", f"{share:.0%}", used, f"{statistics.fmean(best.values()):.4f}",
                         f"{higher:.0%}", f"{lower:.0%}", f"{took:.1f}"])
    print(_common.markdown_table(["seed", "policy", "budget (of B)", "NFEs spent", "mean best score",
                                  "prompts higher than uniform", "prompts lower", "wall s (shared store)"], rows))
    print("\nPooled over the seeds (every prompt of every seed):")
    rows = []
    for share in SHARES:
        gains, higher, lower, count = [], 0, 0, 0
        for seed in range(args.seeds):
            uniform = results[(seed, "uniform", 1.0)][0]
            best = results[(seed, "adaptive", share)][0]
            gains.append(statistics.fmean(best.values()) - statistics.fmean(uniform.values()))
            higher += sum(best[i] > uniform[i] + 1e-12 for i in uniform)
            lower += sum(best[i] < uniform[i] - 1e-12 for i in uniform)
            count += len(uniform)
        rows.append([f"{share:.0%}", f"{statistics.fmean(gains):+.4f}", f"{min(gains):+.4f} .. {max(gains):+.4f}",
                     f"{higher / count:.0%}", f"{lower / count:.0%}"])
    print(_common.markdown_table(["adaptive budget (of B)", "mean best minus uniform's", "range over seeds",
                                  "prompts higher", "prompts lower"], rows))
    print("\nNFEs adaptive needs to reach uniform's mean best score (linear between the measured budgets):")
    rows = []
    for seed in range(args.seeds):
        uniform, spent, _ = results[(seed, "uniform", 1.0)]
        target = statistics.fmean(uniform.values())
        points = [(results[(seed, "adaptive", s)][1], statistics.fmean(results[(seed, "adaptive", s)][0].values()))
                  for s in SHARES]
        needed = _reach(points, target)
        saved = "not within 100% of B" if needed is None else \
            f"{needed:.0f} ({1 - needed / spent:.0%} fewer than uniform's {spent})"
        rows.append([seed, f"{target:.4f}", saved])
    print(_common.markdown_table(["seed", "uniform's mean best", "adaptive NFEs to match (saved)"], rows))


def _reach(points: list[tuple[int, float]], target: float) -> float | None:
    """The NFEs where the (NFEs, mean) polyline first reaches `target` (None: not within the budgets)."""
    if points[0][1] >= target:
        return float(points[0][0])
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y0 < target <= y1:
            return x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return None


if __name__ == "__main__":
    sys.exit(main())
