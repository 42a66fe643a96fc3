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

A fourth run loses a worker: 2 workers, and one of them SIGKILLed (with its batch's flow-run process)
once its batch has recorded some but not all of its rounds, no replacement started. It measures how
long the dataset run takes to notice (the loss to the lost batch's resubmission, against
`dispatch.lost_after_s`), to get it going again on the surviving worker, and that the run still ends
with every image, each once.

    python benchmarks/bench_scaleout.py              # ~9 min (the loss run waits out lost_after_s, 180 s)
    python benchmarks/bench_scaleout.py --rpm 600    # a cap that binds at the two workers' peaks
    python benchmarks/bench_scaleout.py --lost-after-s 20 --heartbeat-s 2 --only-loss   # the test's settings
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

from ttsf_core.config import DispatchArgs  # noqa: E402 - after the path is set


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
    defaults = DispatchArgs()
    parser.add_argument("--lost-after-s", type=float, default=defaults.lost_after_s,
                        help="dispatch.lost_after_s of the loss run (default: the shipped default)")
    parser.add_argument("--heartbeat-s", type=float, default=defaults.heartbeat_s,
                        help="dispatch.heartbeat_s of the loss run (default: the shipped default)")
    parser.add_argument("--only-loss", action="store_true", help="run only the loss run")
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
        rows = [] if args.only_loss else [_one(args, folder, prompts, env, workers, rpm, start, stop, PREFECT)
                                          for workers, rpm in ((1, args.rpm), (2, args.rpm), (2, args.tight_rpm))]
        loss = _loss(args, folder, prompts, env, api_url, start, stop, PREFECT)
    if rows:
        _print(args, database, rows)
    _print_loss(args, loss)


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


def _print_loss(args, loss: dict) -> None:
    print(f"a worker lost mid-batch (2 workers, 1 killed with its batch's process, no replacement; "
          f"dispatch.lost_after_s {args.lost_after_s:g}, heartbeat_s {args.heartbeat_s:g}):")
    print("| loss -> lost batch resubmitted s | loss -> running again on the survivor s | lost batch's run "
          "| wall s | images (expected) | exit |")
    print("|---:|---:|---|---:|---:|---:|")
    print(f"| {loss['resubmitted_s']:.1f} | {loss['restarted_s']:.1f} | {loss['lost_state']} | {loss['wall']:.1f} "
          f"| {loss['images']} ({loss['expected']}) | {loss['exit']} |")
    print(f"detection: {loss['resubmitted_s']:.1f} s after the loss, against lost_after_s {args.lost_after_s:g} "
          f"(+ at most one heartbeat before the loss counted, + the 2 s poll)")


def _loss(args, folder: Path, prompts: Path, env: dict, api_url: str, start, stop, prefect: list) -> dict:
    """2 workers; SIGKILL one (and its batch's flow-run process) mid-batch; time the fleet's recovery."""
    from prefect_server import post_json

    run_folder = folder / "loss"
    run_folder.mkdir()
    fake = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_gemini.py"), "--port", "0", "--latency_s",
                             str(args.latency_s)], stdout=subprocess.PIPE, text=True)
    url = fake.stdout.readline().strip()
    workers = {f"w{index}": start(prefect + ["worker", "start", "--pool", "ttsf-batch-cpu", "--limit", "1", "--name",
                                             f"w{index}"], env, run_folder / f"w{index}.log", run_folder)
               for index in range(2)}
    config = _search_config(args, prompts, run_folder, url, args.rpm)
    config["dispatch"].update({"lost_after_s": args.lost_after_s, "heartbeat_s": args.heartbeat_s})
    config_path = run_folder / "config.json"
    config_path.write_text(json.dumps(config))
    out = (run_folder / "ttsf.out").open("wb")
    run = None
    try:
        time.sleep(5)  # the workers poll the pool (PREFECT_WORKER_QUERY_SECONDS=2)
        began, began_wall = time.monotonic(), time.time()
        run = subprocess.Popen([sys.executable, "-m", "ttsf.cli", "run", "--config", str(config_path)], env=env,
                               cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        parent_id, victim, killed_at = _kill_mid_batch(api_url, run, workers, began_wall, run_folder, post_json)
        code = run.wait(timeout=3600)
        wall = time.monotonic() - began
        children = post_json(f"{api_url}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}})
    finally:
        out.close()
        if run is not None:
            stop(run)
        for process in workers.values():
            stop(process)
        fake.kill()
        fake.wait(timeout=10)
    lost = next(r for r in children if r["id"] == victim)
    again = [r for r in children if r["parameters"]["batch_index"] == lost["parameters"]["batch_index"]
             and r["id"] != victim]
    first = min(again, key=lambda r: r["created"])
    images = len(list((run_folder / "output").rglob("store/images/*/*/*.png")))
    return {"resubmitted_s": _epoch(first["created"]) - killed_at,
            "restarted_s": _epoch(first["start_time"]) - killed_at if first["start_time"] else float("nan"),
            "lost_state": lost["state_type"], "wall": wall, "images": images, "exit": code,
            "expected": args.prompts * sum(2 ** r for r in range(1, args.rounds + 1))}


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _kill_mid_batch(api_url, run, workers: dict, began_wall: float, run_folder: Path, post_json):
    """Waits (up to 10 min) for a batch with some, not all, of its rounds recorded (its heartbeat file
    carries its counts), then SIGKILLs its worker's process group and its flow-run process."""
    import os
    import signal

    deadline = time.monotonic() + 600
    for _ in range(6000):
        assert run.poll() is None, (run_folder / "ttsf.out").read_text()[-3000:]
        parents = [r for r in post_json(f"{api_url}/flow_runs/filter", {"flows": {"name": {"any_": ["search-dataset"]}}})
                   if _epoch(r["created"]) >= began_wall - 5]
        for parent in parents:
            for child in post_json(f"{api_url}/flow_runs/filter",
                                   {"flow_runs": {"parent_flow_run_id": {"any_": [parent["id"]]}}}):
                beats = list((run_folder / "output").rglob(f"heartbeats/batch-*-{child['id']}.json"))
                if child["state_type"] != "RUNNING" or not beats:
                    continue
                try:
                    recorded = json.loads(beats[0].read_text())["counts"].get("rounds_recorded", 0)
                except (OSError, ValueError):
                    continue
                config = json.loads((run_folder / "config.json").read_text())
                if 1 <= recorded < config["search_args"]["search_rounds"] * config["prompts_per_batch"]:
                    worker = workers[child["labels"]["prefect.worker.name"]]
                    for kill in (lambda: os.killpg(worker.pid, signal.SIGKILL),
                                 lambda: os.kill(int(str(child["infrastructure_pid"]).rsplit(":", 1)[-1]),
                                                 signal.SIGKILL)):
                        try:
                            kill()
                        except ProcessLookupError:
                            pass
                    return parent["id"], child["id"], time.time()
        assert time.monotonic() < deadline, "no batch got going"
        time.sleep(0.1)
    raise AssertionError("no batch got going")


def _build_tiny_model(env: dict) -> None:
    subprocess.run([sys.executable, "-c", "from ttsf_core.pipelines.tiny import ensure_tiny_flux; ensure_tiny_flux()"],
                   env=env, cwd=REPO, check=True, timeout=300)


def _search_config(args, prompts: Path, run_folder: Path, url: str, rpm: int) -> dict:
    return {
        "pretrained_model_name_or_path": "tiny-flux", "device": "cpu",
        "pipeline_call_args": {"height": args.size, "width": args.size, "num_inference_steps": args.steps},
        "verifier_args": {"name": "gemini", "options": {"base_url": url}, "max_concurrency": 4},
        "search_args": {"search_rounds": args.rounds}, "verifier_rpm": rpm,
        "prompts": {"dataset": str(prompts), "num_prompts": "all"}, "output_dir": str(run_folder / "output"),
        "prompts_per_batch": args.prompts_per_batch, "dispatch": {"mode": "pool", "deployment": "search-batch/cpu"},
    }


def _one(args, folder: Path, prompts: Path, env: dict, workers: int, rpm: int, start, stop, prefect: list) -> dict:
    run_folder = folder / f"workers-{workers}-rpm-{rpm}"
    run_folder.mkdir()
    fake = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_gemini.py"), "--port", "0", "--latency_s",
                             str(args.latency_s)], stdout=subprocess.PIPE, text=True)
    url = fake.stdout.readline().strip()
    processes = [start(prefect + ["worker", "start", "--pool", "ttsf-batch-cpu", "--limit", "1", "--name",
                                  f"w{index}"], env, run_folder / f"w{index}.log", run_folder)
                 for index in range(workers)]
    config = _search_config(args, prompts, run_folder, url, rpm)
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
