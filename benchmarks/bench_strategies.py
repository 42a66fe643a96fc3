"""Search strategies at equal compute: best score found vs denoiser evaluations (NFEs), on CPU.

MACHINERY, NOT IMAGE QUALITY. The model is the offline tiny FLUX with RANDOM weights, and the score is
the imagestats verifier (sharpness, contrast, colourfulness, exposure, entropy of the pixels; it never
reads the prompt). So this measures what each strategy's machinery does with a budget - how many NFEs
it spends, how fast it climbs a fixed objective, whether cheap drafts rank noises as full-step images
do - on a stand-in objective. It says nothing about which strategy finds better FLUX.1-dev images for a
real verifier.

Strategies (ttsf_core.search, through ttsf_core.usecases.runner.run, the direct runner):
  random              round r draws 2**r fresh noises, all at full steps
  zero-order          a pivot and `num_neighbors` neighbours at cosine `threshold`; the best neighbour
                      becomes the next pivot when it beats the pivot
  random+draft        random's noises first at `draft_steps`, the best `draft_keep` again at full steps
  zero-order+draft    the same over zero-order (the pivot is always kept)
  paths               search over paths: N noises part way, each level M re-noised branches of every kept
                      sample, graded on their clean predictions, the best N kept (at 4 steps: start at
                      step 2, back 1 step, on 2: levels (2->1->3), (3->2->4))
  fk                  FK steering: K particles, graded and resampled (potential max, lambda --fk-lambda)
                      at steps 1, 2 and 3 of 4, the best final particle

Both searches on the denoising path grade intermediate images, so each round costs verifier calls as well
as NFEs: the second table puts the same best-so-far against the verifier calls a prompt (records'
`verifier_calls`), where a paid verifier's budget is counted.

For each (prompt, base seed) run, the records give each round's `nfe` (denoiser evaluations that round
added: steps of images not in earlier rounds) and best score; the best-so-far at a budget B is the best
round score among rounds whose cumulative NFEs are <= B (step-wise: nothing is credited before the round
that found it is paid for). Every strategy runs enough rounds to be sure to reach `--budget` NFEs (for
zero-order assuming every pivot is carried), and the table reports the mean over all runs at common
budgets, with the standard error of the mean.

For drafts: the Spearman rank correlation of draft vs full-step scores of the same noises. random+draft
draws the same noises as random, whose records hold every one at full steps, so its pairs are complete
(all drafted noises of random's rounds); zero-order+draft's pairs are only the drafts it kept (its
records hold those at both stages), a sample biased towards the best drafts. Also: how often the kept
drafts contain the round's full-step best (from random's records), and the NFEs saved against the same
strategy without drafts at equal rounds.

    python benchmarks/bench_strategies.py              # ~2-3 min: 3 prompts x 5 seeds, budget 96 NFEs
    python benchmarks/bench_strategies.py --prompts 1 --seeds 2 --budget 48
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root on sys.path)
from ttsf_core.resolve import resolve  # noqa: E402
from ttsf_core.search.selection import average_ranks  # noqa: E402

SHARED_PROMPTS = _common.REPO_ROOT.parent / "shared" / "data" / "open_image_preferences_prompts.txt"
STRATEGIES = ("random", "zero-order", "random+draft", "zero-order+draft", "paths", "fk")
MAX_ROUNDS = 16  # SearchArgs.search_rounds' limit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Best imagestats score vs cumulative NFEs for random, zero-order and cheap-draft search on the "
        "random-weight tiny FLUX (measures the search machinery, not image quality).")
    parser.add_argument("--prompts", type=int, default=3, help="prompts (the first N of --prompts-file)")
    parser.add_argument("--prompts-file", type=Path,
                        default=SHARED_PROMPTS if SHARED_PROMPTS.is_file() else None,
                        help="one prompt a line [../shared/data/open_image_preferences_prompts.txt when present, "
                        "else benchmarks/_common.py's PROMPTS]")
    parser.add_argument("--seeds", type=int, default=5, help="base seeds 0..N-1 (config `seed`) per prompt")
    parser.add_argument("--budget", type=int, default=96, help="NFEs a prompt every strategy must reach")
    parser.add_argument("--budget-step", type=int, default=16, help="spacing of the reported budgets, NFEs")
    parser.add_argument("--steps", type=int, default=4, help="full denoising steps (tiny-flux's default)")
    parser.add_argument("--draft-steps", type=int, default=1, help="denoising steps of a draft")
    parser.add_argument("--draft-keep", type=int, default=2, help="drafts regenerated at full steps a round")
    parser.add_argument("--num-neighbors", type=int, default=4, help="zero-order neighbours a round")
    parser.add_argument("--threshold", type=float, default=0.95, help="zero-order cosine to the pivot")
    parser.add_argument("--num-paths", type=int, default=2, help="paths: samples kept a level in round 1 (N)")
    parser.add_argument("--path-branches", type=int, default=2, help="paths: branches of each kept sample (M)")
    parser.add_argument("--path-start", type=float, default=0.5, help="paths: share of the steps before the search")
    parser.add_argument("--path-forward", type=float, default=0.25, help="paths: share re-noised back a level")
    parser.add_argument("--path-backward", type=float, default=0.5, help="paths: share denoised a level")
    parser.add_argument("--num-particles", type=int, default=4, help="fk: particles in round 1 (K)")
    parser.add_argument("--fk-lambda", type=float, default=10.0, help="fk: the potential's scale")
    parser.add_argument("--fk-every", type=float, default=0.25, help="fk: share of the steps between resamplings")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args(argv)


# ----- rounds each strategy needs to be sure to reach the budget -----

def rounds_for(strategy: str, args) -> int:
    """The fewest rounds whose cumulative NFEs are >= the budget even in the cheapest case."""
    full, draft, keep, neighbours = args.steps, args.draft_steps, args.draft_keep, args.num_neighbors
    total = 0
    if strategy in ("paths", "fk"):  # their rounds cost what their arguments say (ttsf_core.search)
        from ttsf_core.config import build_config
        from ttsf_core.resolve import resolve

        search = resolve(build_config({"pretrained_model_name_or_path": "tiny-flux", "verifier_args": {"name": "imagestats"},
                                       "pipeline_call_args": {"num_inference_steps": full},
                                       **strategy_overrides(strategy, args, rounds=1)})).search
    for search_round in range(1, MAX_ROUNDS + 1):
        if strategy in ("paths", "fk"):
            total += search.nfe(search_round, full)
        elif strategy == "random":
            total += 2 ** search_round * full
        elif strategy == "random+draft":
            total += 2 ** search_round * draft + min(keep, 2 ** search_round) * full
        elif strategy == "zero-order":  # a carried pivot costs nothing
            total += (1 + neighbours if search_round == 1 else neighbours) * full
        else:  # zero-order+draft, cheapest: carried pivot (its draft and full image exist), one neighbour kept
            total += (1 + neighbours) * draft + keep * full if search_round == 1 else neighbours * draft + full
        if total >= args.budget:
            return search_round
    raise SystemExit(f"--budget {args.budget}: {strategy} cannot be sure to reach it in {MAX_ROUNDS} rounds")


def strategy_overrides(strategy: str, args, rounds: int | None = None) -> dict:
    rounds = rounds or rounds_for(strategy, args)
    if strategy == "paths":
        return {"search_args": {"search_method": "paths", "search_rounds": rounds, "num_paths": args.num_paths,
                                "path_branches": args.path_branches, "path_start": args.path_start,
                                "path_forward": args.path_forward, "path_backward": args.path_backward}}
    if strategy == "fk":
        return {"search_args": {"search_method": "fk", "search_rounds": rounds, "num_particles": args.num_particles,
                                "fk_lambda": args.fk_lambda, "fk_resample_start": args.fk_every,
                                "fk_resample_end": 1 - args.fk_every, "fk_resample_every": args.fk_every}}
    search = {"search_method": "zero-order" if strategy.startswith("zero-order") else "random",
              "search_rounds": rounds,
              "threshold": args.threshold, "num_neighbors": args.num_neighbors}
    if strategy.endswith("+draft"):
        search |= {"draft_steps": args.draft_steps, "draft_keep": args.draft_keep}
    return {"search_args": search}


# ----- statistics -----

def mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson on ranks); None for fewer than 3 pairs or a constant side."""
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)  # from the highest: rho is the same either way
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx and vy else None


def best_within(records, budget: int, cost=lambda record: record.nfe) -> float | None:
    """Best round score among the rounds paid for within `budget` NFEs (or another `cost` a round;
    records in round order)."""
    spent, best = 0, None
    for record in records:
        spent += cost(record)
        if spent > budget:
            break
        best = record.best_score if best is None else max(best, record.best_score)
    return best


# ----- the runs -----

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    _common.quiet_libraries()
    if args.prompts_file is not None:
        prompts = [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        args.prompts_source = str(args.prompts_file)
    else:
        prompts = list(_common.PROMPTS)
        args.prompts_source = "benchmarks/_common.py PROMPTS"
    if not 1 <= args.prompts <= len(prompts):
        raise SystemExit(f"--prompts: received {args.prompts}, allowed: 1-{len(prompts)}")
    prompts = prompts[: args.prompts]
    with tempfile.TemporaryDirectory(prefix="ttsf-bench-strategies-") as folder:
        workdir = Path(folder)
        os.environ["TTSF_CACHE_DIR"] = str(workdir / "cache")
        runs, seconds, images = search_all(args, workdir, prompts)
    print_report(args, prompts, runs, seconds, images)
    return 0


def search_all(args, workdir: Path, prompts: list[str]):
    """runs[strategy][(prompt_index, seed)] = that prompt's records in round order."""
    from ttsf_core.usecases import runner
    from ttsf_core.config import build_config, merge
    from ttsf_core.engine.generate import CandidateGenerator
    from ttsf_core.pipelines import load_pipeline

    prompts_file = workdir / "prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    base = {
        "pretrained_model_name_or_path": "tiny-flux",
        "pipeline_call_args": {"num_inference_steps": args.steps},
        "verifier_args": {"name": "imagestats"},
        "prompts": {"dataset": str(prompts_file), "num_prompts": len(prompts)},
        "output_dir": str(workdir / "out"),  # one store: a noise two strategies share is generated once
    }
    generator = CandidateGenerator(load_pipeline(build_config(base)), resolve(build_config(base)))
    runs = {name: {} for name in STRATEGIES}
    seconds = dict.fromkeys(STRATEGIES, 0.0)
    images = dict.fromkeys(STRATEGIES, 0)
    for seed in range(args.seeds):
        for name in STRATEGIES:
            config = build_config(merge(base, {"seed": seed, **strategy_overrides(name, args)}))
            start = time.perf_counter()
            _, outcome = runner.run(config, generator)
            seconds[name] += time.perf_counter() - start
            outcome.raise_first()
            images[name] += outcome.counts.images_generated
            for index in range(len(prompts)):
                records = sorted((r for r in outcome.records if r.prompt_index == index), key=lambda r: r.search_round)
                assert all(r.nfe is not None for r in records), "records without nfe"
                runs[name][(index, seed)] = records
    return runs, seconds, images


# ----- the report -----

def print_report(args, prompts, runs, seconds, images) -> None:
    print(_common.machine_line(args.threads))
    print("MACHINERY, NOT IMAGE QUALITY: tiny-flux has random weights and imagestats scores pixel statistics without "
          "reading the prompt; this measures how each strategy spends NFEs and climbs a fixed stand-in objective, "
          "not which finds better images.")
    print(f"model: tiny-flux (random weights), 128x128, {args.steps} full steps, drafts {args.draft_steps} step(s), "
          f"draft_keep {args.draft_keep}; zero-order: {args.num_neighbors} neighbours at cosine {args.threshold:g}; "
          f"verifier imagestats, metric overall_score; {len(prompts)} prompts x {args.seeds} base seeds = "
          f"{len(prompts) * args.seeds} runs a strategy; direct runner (ttsf_core.usecases.runner.run)")
    print(f"prompts: the first {len(prompts)} of {args.prompts_source}")
    rows = []
    for name in STRATEGIES:
        totals = [sum(r.nfe for r in records) for records in runs[name].values()]
        rounds = len(next(iter(runs[name].values())))
        rows.append([name, rounds, f"{min(totals)}-{max(totals)}", f"{sum(totals) / len(totals):.1f}",
                     images[name], f"{seconds[name]:.1f}"])
    print(_common.markdown_table(["strategy", "rounds", "NFEs a prompt (min-max)", "NFEs a prompt (mean)",
                                  "images generated (all runs; shared store)", "wall s (all runs)"], rows))

    budgets = list(range(args.budget_step, args.budget + 1, args.budget_step))
    if budgets[-1] != args.budget:
        budgets.append(args.budget)
    print(f"\nbest-so-far (overall_score, 0-10) within a budget of NFEs a prompt: mean over {len(prompts) * args.seeds} "
          "runs ± standard error; '-' where some run had not paid for its first round yet. Full-step image = "
          f"{args.steps} NFEs.")
    header = ["strategy"] + [f"{b} NFE" for b in budgets]
    rows, at_budget = [], {}
    for name in STRATEGIES:
        row = [name]
        for budget in budgets:
            values = [best_within(records, budget) for records in runs[name].values()]
            if any(value is None for value in values):
                row.append("-")
                continue
            mean, se = mean_se(values)
            row.append(f"{mean:.3f} ± {se:.3f}")
            at_budget[(name, budget)] = dict(zip(runs[name], values))
        rows.append(row)
    print(_common.markdown_table(header, rows))

    print("\npaired difference vs random at the same budget (same prompt and base seed; mean ± standard error):")
    rows = []
    for name in STRATEGIES[1:]:
        row = [name]
        for budget in budgets:
            if (name, budget) not in at_budget or ("random", budget) not in at_budget:
                row.append("-")
                continue
            ours, theirs = at_budget[(name, budget)], at_budget[("random", budget)]
            mean, se = mean_se([ours[key] - theirs[key] for key in ours])
            row.append(f"{mean:+.3f} ± {se:.3f}")
        rows.append(row)
    print(_common.markdown_table(header, rows))

    print_calls(args, prompts, runs)
    print_drafts(args, runs)


def verifier_calls(record) -> int:
    return record.verifier_calls + (record.path_verifier_calls or 0)


def print_calls(args, prompts, runs) -> None:
    """Best-so-far against verifier calls a prompt (every grade, intermediate ones included)."""
    per_round = {name: sorted({verifier_calls(r) for records in runs[name].values() for r in records})
                 for name in STRATEGIES}
    budgets = [8, 16, 32, 64]
    print(f"\nbest-so-far within a budget of verifier calls a prompt (every grade: intermediate images included); "
          f"mean over {len(prompts) * args.seeds} runs ± standard error; '-' where some run had not paid for its "
          "first round yet; 'ran out' where the rounds run for the NFE budget spent fewer calls:")
    rows = []
    for name in STRATEGIES:
        row = [name, ", ".join(map(str, per_round[name][:4]))]
        spent = min(sum(verifier_calls(r) for r in records) for records in runs[name].values())
        for budget in budgets:
            values = [best_within(records, budget, verifier_calls) for records in runs[name].values()]
            if budget > spent:
                row.append(f"ran out ({spent})")
                continue
            if any(value is None for value in values):
                row.append("-")
                continue
            mean, se = mean_se(values)
            row.append(f"{mean:.3f} ± {se:.3f}")
        rows.append(row)
    print(_common.markdown_table(["strategy", "calls a round"] + [f"{b} calls" for b in budgets], rows))


def print_drafts(args, runs) -> None:
    full_steps = args.steps

    def full_scores(key) -> dict[str, float]:
        """Every full-step score of (prompt, seed) in any strategy's records, by noise tag."""
        found = {}
        for name in STRATEGIES:
            for record in runs[name][key]:
                for candidate in record.candidates:
                    if candidate.steps == full_steps and candidate.path is None:  # not a path's intermediate
                        found[candidate.noise.tag()] = candidate.score
        return found

    print(f"\ncheap drafts ({args.draft_steps} step(s)) vs full steps ({full_steps}): Spearman rank correlation of the "
          "draft and full-step scores of the same noises")
    def cell(values: list[float]) -> str:
        return f"{mean_se(values)[0]:.3f} ± {mean_se(values)[1]:.3f} ({len(values)})" if values else "-"

    rows = []
    for name, source in (("random+draft", "all drafted noises of random's rounds (full-step scores from random's "
                          "records): complete"),
                         ("zero-order+draft", "kept drafts only (both stages in its own records, one pair a noise): "
                          "biased to the best drafts")):
        pooled_x, pooled_y, per_run, per_round = [], [], [], []
        for key, records in runs[name].items():
            if name == "random+draft":
                full = full_scores(key)
            else:
                full = {c.noise.tag(): c.score for r in records for c in r.candidates
                        if c.stage == "final" and c.steps == full_steps}
            drafts = {}  # one pair a noise: a carried pivot's draft shows up again in later rounds
            for record in records:
                rx, ry = [], []
                for candidate in record.candidates:
                    tag = candidate.noise.tag()
                    if candidate.stage == "draft" and tag in full:
                        drafts[tag] = candidate.score
                        rx.append(candidate.score)
                        ry.append(full[tag])
                rho = spearman(rx, ry) if len(rx) >= 4 and name == "random+draft" else None
                if rho is not None:
                    per_round.append(rho)
            xs, ys = list(drafts.values()), [full[tag] for tag in drafts]
            pooled_x += xs
            pooled_y += ys
            rho = spearman(xs, ys)
            if rho is not None:
                per_run.append(rho)
        pooled = spearman(pooled_x, pooled_y)
        rows.append([name, len(pooled_x), f"{pooled:.3f}" if pooled is not None else "-", cell(per_run),
                     cell(per_round), source])
    print(_common.markdown_table(["strategy", "pairs", "rho, all pairs pooled", "rho per (prompt, seed) run: mean ± se (runs)",
                                  "rho per round of >= 4 pairs: mean ± se (rounds)", "pairs are"], rows))

    # Did the kept drafts contain the round's full-step best? (random's records grade every noise at full steps.)
    hits, rounds_seen, loss = 0, 0, []
    for key, records in runs["random+draft"].items():
        plain = {r.search_round: r for r in runs["random"][key]}
        for record in records:
            reference = plain.get(record.search_round)
            if reference is None or len(reference.candidates) <= args.draft_keep:
                continue
            kept = {c.noise.tag() for c in record.candidates if c.stage == "final"}
            rounds_seen += 1
            hits += reference.best.noise.tag() in kept
            loss.append(reference.best_score - record.best_score)
    if rounds_seen:
        mean, se = mean_se(loss)
        print(f"\nrandom+draft: in {hits}/{rounds_seen} rounds with more than {args.draft_keep} noises "
              f"({100 * hits / rounds_seen:.0f}%) the kept drafts included the round's full-step best; the round's "
              f"best score was {mean:.3f} ± {se:.3f} below random's on the same noises (mean ± se)")

    print("\nNFEs at equal rounds, with and without drafts (mean a prompt, cumulative):")
    rows = []
    for plain, drafted in (("random", "random+draft"), ("zero-order", "zero-order+draft")):
        common = min(len(next(iter(runs[plain].values()))), len(next(iter(runs[drafted].values()))))
        for rounds in sorted({1, max(1, common // 2), common}):
            without = [sum(r.nfe for r in recs[:rounds]) for recs in runs[plain].values()]
            with_drafts = [sum(r.nfe for r in recs[:rounds]) for recs in runs[drafted].values()]
            best_without = [max(r.best_score for r in recs[:rounds]) for recs in runs[plain].values()]
            best_with = [max(r.best_score for r in recs[:rounds]) for recs in runs[drafted].values()]
            a, b = sum(without) / len(without), sum(with_drafts) / len(with_drafts)
            rows.append([plain, rounds, f"{a:.1f}", f"{b:.1f}", f"{a - b:.1f} ({100 * (a - b) / a:.0f}%)",
                         f"{sum(best_without) / len(best_without):.3f}", f"{sum(best_with) / len(best_with):.3f}"])
    print(_common.markdown_table(["strategy", "rounds", "NFEs without drafts", "NFEs with drafts", "saved",
                                  "best-so-far without drafts", "best-so-far with drafts"], rows))


if __name__ == "__main__":
    sys.exit(main())
