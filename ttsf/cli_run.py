"""What `ttsf run`, `ttsf report` and `ttsf regenerate` do once their input is valid.

`ttsf run` runs the `search_dataset` Prefect flow in this process, on Prefect's embedded temporary
server (or the server PREFECT_API_URL names), or with `--executor threads` the same search loop on
local threads without Prefect. A run with nothing left to do starts neither Prefect nor a model.
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
RESUME_HINT = "finished rounds, images and grades are kept: run the same command again to resume"


def run_and_print(config: RunConfig, executor: str = "prefect") -> None:
    from ttsf.cli import fail
    from ttsf_core import runner

    try:
        prepared = runner.prepare_run(config)  # fail on bad input before Prefect or a model starts
    except (ConfigError, VerifierConfigError) as error:
        fail(str(error))
    pending = pending_rounds(prepared)
    if pending:
        remaining = _migrate_legacy_folder(prepared)
        pending = pending if remaining is None else remaining
    if not pending:
        click.echo(f"Nothing to do: all {len(prepared.prompts)} prompts x {config.search_args.search_rounds} rounds "
                   "are recorded (0 images generated, 0 graded).")
    else:
        with RecordProgress(prepared, pending):
            counts = _search(prepared, executor, fail)
        click.echo(f"This run generated {counts['images_generated']} images and graded {counts['images_graded']} "
                   f"({counts['images_found']} images and {counts['grades_found']} grades were already stored; "
                   f"{counts['rounds_skipped']} rounds already recorded).")
    from ttsf_core.report import build_report

    build_report(prepared.layout.run_dir, only_if_changed=True)
    print_summary(prepared.layout.run_dir)


def _migrate_legacy_folder(prepared) -> int | None:
    """A search begun before the image store: import its work first (nothing is paid for twice).
    Returns the rounds still pending afterwards, or None when there was nothing to import."""
    from ttsf_core.migrate import legacy_run_dir, migrate

    legacy = legacy_run_dir(prepared.config)
    if legacy is None:
        return None
    migrated = migrate(legacy)
    click.echo(f"ttsf: note: imported {migrated.images} images and {migrated.grades} grades of this search from "
               f"{legacy} (the layout before the image store; left as it was)", err=True)
    return pending_rounds(prepared)


def _search(prepared, executor: str, fail) -> dict:
    from ttsf_core import runner

    if executor == "threads":
        _, outcome = runner.run(prepared)
        if outcome.failures:
            error = outcome.failures[0].error
            fail(f"{type(error).__name__}: {error}; {RESUME_HINT}", code=1)
        return vars(outcome.counts)
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from flows.search_dataset import search_dataset
    from tasks import runtime
    from ttsf_core.prompts import save_prompt_list

    # Load the pipeline while Prefect's embedded server starts (both take seconds); the flow's
    # first generation waits for it. A failed load is raised again, with its message, by the flow.
    threading.Thread(target=_preload, args=(runtime, prepared.config), daemon=True).start()
    prompt_list = save_prompt_list(prepared.layout.run_dir, prepared.prompts)
    try:
        result = search_dataset(prepared.config, prompt_list=str(prompt_list))
    except (VerifierError, RetryableVerifierError, RuntimeError) as error:
        fail(f"{type(error).__name__}: {error}; {RESUME_HINT}", code=1)
    return result["counts"]


def pending_rounds(prepared) -> int:
    """Rounds of this run with no record yet."""
    rounds = range(1, prepared.config.search_args.search_rounds + 1)
    return sum(not prepared.layout.record_path(prompt, r).is_file() for prompt in prepared.prompts for r in rounds)


class RecordProgress:
    """A progress bar over rounds recorded, read from the run folder (true whoever writes them)."""

    def __init__(self, prepared, pending: int, interval_s: float = 1.0):
        self.prepared, self.interval_s = prepared, interval_s
        total = len(prepared.prompts) * prepared.config.search_args.search_rounds
        self.bar = tqdm(total=total, initial=total - pending, unit="round", desc="search", dynamic_ncols=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(self.interval_s):
            self._update()

    def _update(self) -> None:
        done = self.bar.total - pending_rounds(self.prepared)
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "RecordProgress":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()
        self._update()
        self.bar.close()


def _preload(runtime, config: RunConfig) -> None:
    try:
        runtime.generator_for(config)
    except Exception:  # noqa: BLE001 - the flow loads again and reports the error in its run
        pass


def print_summary(run_dir: Path) -> None:
    from ttsf_core.report import REPORT_DIRNAME, report_dataframe

    frame = report_dataframe(run_dir)
    by_round = frame.groupby("search_round").agg(images=("images_generated", "mean"), nfe=("nfe_so_far", "mean"),
                                                 mean_best=("best_score", "mean"))
    click.echo(f"{frame['prompt_index'].nunique()} prompts, metric {frame['choice_of_metric'].iloc[0]}, "
               f"search {frame['search_method'].iloc[0]}")
    for search_round, row in by_round.iterrows():
        click.echo(f"  round {search_round}: {row['images']:g} images ({row['nfe']:g} NFEs) a prompt so far, "
                   f"mean best score {row['mean_best']:.3f}")
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


def regenerate_and_print(record: Path, index: int, out: Path | None, device: str | None) -> None:
    from ttsf.cli import fail
    from ttsf_core.regenerate import regenerate

    try:
        result = regenerate(record, index, out, device)
    except (ConfigError, ValueError) as error:
        fail(str(error))
    verdict = "byte-identical to the recorded image" if result.identical else \
        f"DIFFERENT from the recorded image (recorded {result.recorded_sha256}, got {result.sha256})"
    click.echo(f"{result.path}: {verdict}")
    if not result.identical:
        raise SystemExit(1)


def migrate_and_print(old_run_dir: Path) -> None:
    from ttsf.cli import fail
    from ttsf_core.migrate import migrate

    try:
        migrated = migrate(old_run_dir)
    except (ConfigError, ValueError) as error:
        fail(str(error))
    click.echo(f"Imported {migrated.images} images and {migrated.grades} grades into the store; "
               f"wrote {migrated.rounds} round records (0 images generated, 0 graded).")
    click.echo(f"Output: {migrated.run_dir}")
