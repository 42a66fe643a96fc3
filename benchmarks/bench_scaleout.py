"""Scale-out: the same search with its batches on 1 and then 2 workers of a process pool.

A real `prefect server` (on PostgreSQL when Debian's postgresql is installed, else SQLite) with the
`search-batch/cpu` deployment of deployments/prefect.yaml on the pool `ttsf-batch-cpu`; `ttsf run
--dispatch pool` sends the batches there. The tiny FLUX runs with one torch thread per worker
(OMP_NUM_THREADS=1, from the deployment), so on this 2-core VM two workers can use both cores. The
verifier is the fake Gemini (tests/fake_gemini.py, its own process) with a latency, under a shared
requests-per-minute limit (`verifier_rpm`): its arrival times show whether the workers together
stay under it.

Three runs of the same search: 1 and 2 workers under `--rpm` (by default high enough never to bind,
so the ratio is the workers' alone), then 2 workers under `--tight-rpm`, a cap the two would exceed
without it: its requests must stay within the cap in every window, and its wall time cannot be
shorter than the cap allows.

    python benchmarks/bench_scaleout.py              # ~5 min
    python benchmarks/bench_scaleout.py --rpm 600    # a cap that binds at the two workers' peaks
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

PROMPTS_FILE = REPO.parent / "shared" / "data" / "open_image_preferences_prompts.txt"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="1 vs 2 pool workers for the same search: wall time ratio, "
                                                 "and the verifier request rate the two keep together.")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts-per-batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=192, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--latency-s", type=float, default=0.2, help="fake Gemini answer latency")
    parser.add_argument("--rpm", type=int, default=6000, help="verifier_rpm of the 1- and 2-worker runs")
    parser.add_argument("--tight-rpm", type=int, default=180,
                        help="verifier_rpm of the third run (2 workers), one they would exceed without it")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from postgres import postgres_bin, running_postgres
    from prefect_server import PREFECT, cli, running_server, start, stop

    folder = Path(tempfile.mkdtemp(prefix="ttsf-bench-scaleout-"))
    prompts = folder / "prompts.txt"
    lines = [line for line in PROMPTS_FILE.read_text().splitlines() if line.strip()][: args.prompts]
    prompts.write_text("\n".join(lines) + "\n")
    os.environ.setdefault("TTSF_CACHE_DIR", str(folder / "cache"))
    with ExitStack() as stack:
        database = stack.enter_context(running_postgres()) if postgres_bin() else None
        api_url, env, _ = stack.enter_context(running_server(folder, database))
        env = {**env, "GEMINI_API_KEY": "bench-key"}
        cli(["work-pool", "create", "ttsf-batch-cpu", "--type", "process"], env)
        cli(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "cpu"], env)
        _build_tiny_model(env)
        rows = [_one(args, folder, prompts, env, workers, rpm, start, stop, PREFECT)
                for workers, rpm in ((1, args.rpm), (2, args.rpm), (2, args.tight_rpm))]
    _print(args, database, rows)


def _print(args, database, rows: list[dict]) -> None:
    print(f"server: {'PostgreSQL' if database else 'SQLite'}; {args.prompts} prompts x {args.rounds} rounds in batches "
          f"of {args.prompts_per_batch}; tiny FLUX {args.size}px {args.steps} steps, 1 torch thread per worker; "
          f"fake Gemini {args.latency_s:.2f} s")
    print("| workers | verifier_rpm | wall s | images | requests | max requests in any 10 s "
          "| allowed in 10 s (burst + rate) | shortest wall the cap allows s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['rpm']} | {row['wall']:.1f} | {row['images']} | {row['requests']} "
              f"| {row['max10']} | {row['allowed10']:.0f} | {row['cap_floor']:.1f} |")
    one, two, tight = rows
    print(f"speed-up with 2 workers at verifier_rpm {args.rpm}: {one['wall'] / two['wall']:.2f}x (target >= 1.6x)")
    held = all(row["max10"] <= row["allowed10"] for row in rows)
    print(f"the cap held in every 10 s window of every run: {'yes' if held else 'NO'}; 2 workers under "
          f"verifier_rpm {args.tight_rpm} took {tight['wall'] / two['wall']:.2f}x their uncapped time")


def _build_tiny_model(env: dict) -> None:
    subprocess.run([sys.executable, "-c", "from ttsf_core.pipelines.tiny import ensure_tiny_flux; ensure_tiny_flux()"],
                   env=env, cwd=REPO, check=True, timeout=300)


def _one(args, folder: Path, prompts: Path, env: dict, workers: int, rpm: int, start, stop, prefect: list) -> dict:
    run_folder = folder / f"workers-{workers}-rpm-{rpm}"
    run_folder.mkdir()
    fake = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_gemini.py"), "--port", "0", "--latency_s",
                             str(args.latency_s)], stdout=subprocess.PIPE, text=True)
    url = fake.stdout.readline().strip()
    processes = [start(prefect + ["worker", "start", "--pool", "ttsf-batch-cpu", "--limit", "1", "--name",
                                  f"w{index}"], env, run_folder / f"w{index}.log", run_folder)
                 for index in range(workers)]
    config = {
        "pretrained_model_name_or_path": "tiny-flux", "device": "cpu",
        "pipeline_call_args": {"height": args.size, "width": args.size, "num_inference_steps": args.steps},
        "verifier_args": {"name": "gemini", "options": {"base_url": url}, "max_concurrency": 4},
        "search_args": {"search_rounds": args.rounds}, "verifier_rpm": rpm,
        "prompts": {"dataset": str(prompts), "num_prompts": "all"}, "output_dir": str(run_folder / "output"),
        "prompts_per_batch": args.prompts_per_batch, "dispatch": {"mode": "pool", "deployment": "search-batch/cpu"},
    }
    config_path = run_folder / "config.json"
    config_path.write_text(json.dumps(config))
    try:
        time.sleep(5)  # the workers poll the pool (PREFECT_WORKER_QUERY_SECONDS=2)
        began = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "ttsf.cli", "run", "--config", str(config_path)], env=env,
                                cwd=REPO, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - began
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        import urllib.request

        with urllib.request.urlopen(f"{url}/_fake/requests", timeout=10) as answer:
            requests = json.loads(answer.read())["requests"]
    finally:
        for process in processes:
            stop(process)
        fake.kill()
        fake.wait(timeout=10)
    arrivals = sorted(r["arrived_at"] for r in requests)
    from tasks.rate_limit import rpm_burst

    burst, rate = rpm_burst(rpm), rpm / 60.0
    max10 = max((sum(1 for t in arrivals if first <= t < first + 10) for first in arrivals), default=0)
    images = len(list((run_folder / "output").rglob("store/images/*/*/*.png")))
    return {"workers": workers, "rpm": rpm, "wall": wall, "images": images, "requests": len(arrivals),
            "max10": max10, "allowed10": burst + rate * 10, "cap_floor": max(0, len(arrivals) - burst) / rate}


if __name__ == "__main__":
    main()
