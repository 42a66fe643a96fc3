"""What `ttsf run` and `ttsf report` do once their input is valid.

`ttsf run` runs the `search_dataset` Prefect flow in this process, on Prefect's embedded temporary
server (or the server PREFECT_API_URL names): nothing to set up, and every run is visible in the UI.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import click
from tqdm import tqdm

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.verifiers.base import RetryableVerifierError, VerifierConfigError, VerifierError

# A fresh embedded server runs its migrations first (10-15 s here); Prefect's default may give up.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def run_and_print(config: RunConfig) -> None:
    from ttsf_core import runner
    from ttsf.cli import fail

    try:
        prepared = runner.prepare_run(config)  # fail on bad input before Prefect or a model starts
    except (ConfigError, VerifierConfigError) as error:
        fail(str(error))
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from flows.search_dataset import search_dataset
    from tasks import runtime

    # Load the pipeline while Prefect's embedded server starts (both take seconds); the flow's
    # first generation waits for it. A failed load is raised again, with its message, by the flow.
    threading.Thread(target=_preload, args=(runtime, config), daemon=True).start()

    rounds = range(1, config.search_args.search_rounds + 1)
    total = len(prepared.prompts) * sum(config.search_args.pool_size(r) for r in rounds)
    with tqdm(total=total, unit="candidate", desc="search", dynamic_ncols=True) as bar:
        runtime.on_progress(bar.update)
        try:
            run_dir = search_dataset(config)
        except (VerifierError, RetryableVerifierError, RuntimeError) as error:
            bar.close()
            fail(f"{type(error).__name__}: {error}; finished rounds and images are kept: "
                 "run the same command again to resume", code=1)
        finally:
            runtime.on_progress(None)
    click.echo(f"This run generated {runtime.images_generated()} images and verified "
               f"{runtime.images_verified()} (the rest were finished before or cached).")
    print_summary(Path(run_dir))


def _preload(runtime, config: RunConfig) -> None:
    try:
        runtime.generator_for(config)
    except Exception:  # noqa: BLE001 - the flow loads again and reports the error in its run
        pass


def print_summary(run_dir: Path) -> None:
    from ttsf_core.report import REPORT_DIRNAME, report_dataframe

    frame = report_dataframe(run_dir)
    by_round = frame.groupby("search_round").agg(images=("num_noises", "first"), mean_best=("best_score", "mean"))
    click.echo(f"{frame['prompt_index'].nunique()} prompts, metric {frame['choice_of_metric'].iloc[0]}")
    for search_round, row in by_round.iterrows():
        click.echo(f"  round {search_round}: {row['images']} images a prompt, mean best score {row['mean_best']:.3f}")
    click.echo(f"Report: {run_dir / REPORT_DIRNAME}")
    click.echo(f"Output: {run_dir}")


def report_and_print(output_dir: Path) -> None:
    from ttsf.cli import fail
    from ttsf_core.report import build_report

    run_dirs = find_run_dirs(output_dir)
    if not run_dirs:
        fail(f"OUTPUT_DIR: received {str(output_dir)!r}, allowed: a ttsf run folder (holding config.json and "
             "prompts/*/round_*.json) or a folder above such runs")
    for run_dir in run_dirs:
        try:
            files = build_report(run_dir)
        except ValueError as error:
            fail(str(error))
        click.echo(f"{run_dir}: {files.folder}")


def find_run_dirs(output_dir: Path) -> list[Path]:
    """`output_dir` itself when it is a run, else every run below it."""
    output_dir = Path(output_dir)
    if (output_dir / "config.json").is_file():
        return [output_dir]
    return sorted(path.parent for path in output_dir.rglob("config.json") if (path.parent / "prompts").is_dir())
