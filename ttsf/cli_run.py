"""What `ttsf run`, `ttsf report` and `ttsf regenerate` do once their input is valid.

`ttsf run` runs the `search_dataset` Prefect flow in this process on the Prefect server configured
(PREFECT_API_URL, a .env or prefect.toml, the active Prefect profile: ttsf.prefect_api), or the same
search loop on local threads without Prefect (`--executor threads`, and `auto`, the default, when no
server is configured: a temporary server nobody sees would cost seconds and show nothing). Only the
chosen path is imported: the threads path imports no Prefect. A run with nothing left to do starts
neither Prefect nor a model, and imports no torch, nor pandas (its summary is read back from the report
folder).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ttsf.progress_bars import RunProgress

from ttsf_core.config import ConfigError, RunConfig
from ttsf_core.verifiers.base import VerifierConfigError

if TYPE_CHECKING:
    from ttsf.prefect_api import PrefectApi

# A fresh embedded server runs its migrations first (10-15 s here); Prefect's default may give up.
# Flow and task logs go to the API (and so the UI) at INFO; the terminal shows the progress bar and
# ttsf's own lines only: tracebacks go to the run's log file and the UI.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    # The dataset run heartbeats like every other ttsf flow run (docs/scale-out.md, "the one rule").
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}
RESUME_HINT = "finished rounds, images and grades are kept: run the same command again to resume"


# Config fields only the Prefect executor acts on: `--executor auto` takes Prefect when one is set.
PREFECT_ONLY = {
    "dispatch.mode=pool": lambda config: config.dispatch.mode == "pool",
    "verifier_rpm": lambda config: config.verifier_rpm is not None,
    "result_storage": lambda config: config.result_storage is not None,
}
UI_HINT = ("To watch runs in the Prefect UI: `prefect server start` and PREFECT_API_URL=http://127.0.0.1:4200/api "
           "(or --executor prefect: a temporary server for this run).")


@dataclass(frozen=True)
class ExecutorChoice:
    """What `--executor` comes to: `name` prefect or threads, the Prefect API found (prefect_api), and
    the line that says why (None: nothing worth a line)."""

    name: str
    api: "PrefectApi"
    note: str | None = None

    @property
    def temporary_server(self) -> bool:
        return self.name == "prefect" and not self.api.configured


def choose_executor(config: RunConfig, asked: str = "auto", api: "PrefectApi | None" = None) -> ExecutorChoice:
    """`asked` (auto, prefect or threads, checked by the CLI) -> the executor this run uses."""
    from ttsf.prefect_api import configured_api

    api = configured_api() if api is None else api
    if asked != "auto":
        return ExecutorChoice(asked, api)
    if api.configured:
        return ExecutorChoice("prefect", api, f"ttsf: orchestrated by the Prefect server at {api.url} ({api.source}): "
                                              "watch this run in its UI")
    wanted = [name for name, asks in PREFECT_ONLY.items() if asks(config)]
    if wanted:
        return ExecutorChoice("prefect", api, f"ttsf: note: {' and '.join(wanted)} only work through Prefect: this "
                                              "run uses it (no server configured: a temporary one)")
    return ExecutorChoice("threads", api, "ttsf: note: no Prefect server configured: this run goes without Prefect "
                                          f"(same search, same files). {UI_HINT}")


def run_and_print(config: RunConfig, executor: str = "auto") -> None:
    from ttsf.exit import fail
    from ttsf_core.usecases import runner
    from ttsf_core.storage.locks import RunLock

    try:
        prepared = runner.prepare_run(config, write=False)  # bad input fails before Prefect or a model starts
        choice = choose_executor(prepared.config, executor)
        if choice.name == "prefect":
            _check_prefect_inputs(config)
        runner.start_run(prepared)  # nothing is written before every input passed
        lock = RunLock(prepared.layout.run_dir)
        lock.acquire()
    except (ConfigError, VerifierConfigError) as error:
        fail(str(error))
    for note in prepared.notes:
        click.echo(f"ttsf: note: {note}", err=True)
    for warning in prepared.warnings:
        click.echo(f"ttsf: warning: {warning}", err=True)
    try:
        _run_locked(prepared, choice, fail)
    finally:
        lock.release()


def _check_prefect_inputs(config: RunConfig) -> None:
    """What only the Prefect path uses: where it persists batch summaries (a block slug is looked up
    on the Prefect server, so Prefect's settings are applied first)."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from flows.storage import check_result_storage

    check_result_storage(config)


def _run_locked(prepared, choice: ExecutorChoice, fail) -> None:
    config, executor = prepared.config, choice.name
    pending = pending_rounds(prepared)
    if pending:
        remaining = _migrate_legacy_folder(prepared)
        pending = pending if remaining is None else remaining
    if not pending:
        click.echo(f"Nothing to do: all {len(prepared.prompts)} prompts x {config.search_args.search_rounds} rounds "
                   "are recorded (0 images generated, 0 graded).")
    else:
        log_path = start_log_file(prepared.layout.run_dir)
        click.echo(f"Log: {log_path}")
        if choice.note:
            click.echo(choice.note, err=True)
        if choice.temporary_server:
            click.echo("ttsf: starting a temporary Prefect server for this run (10-30 s the first time on a machine; "
                       "PREFECT_API_URL names a running one, --executor threads runs without Prefect) ...", err=True)
        # The direct path only: there nothing else imports while the last grades arrive (a flow's task
        # threads may, and the flow writes its own report).
        warm = ReportImports() if executor == "threads" else None
        with RunProgress(prepared, pending_rounds, when_generated=None if warm is None else warm.start):
            counts, error = _search(prepared, executor)
        if warm is not None:
            warm.wait()  # the report needs them next: never two threads importing the same libraries
        if error is not None:  # after the progress bar is closed: the error gets its own line
            _fail_search(error, fail, log_path)
        click.echo(f"This run generated {counts['images_generated']} images and graded {counts['images_graded']} "
                   f"({counts['images_found']} images and {counts['grades_found']} grades were already stored; "
                   f"{counts['rounds_skipped']} rounds already recorded)."
                   + _grading_trouble(counts) + billed_line(counts))
    from ttsf_core.usecases.report import build_report

    if pending_rounds(prepared) < len(prepared.prompts) * config.search_args.search_rounds:  # a round to report
        build_report(prepared.layout.run_dir, only_if_changed=True)
        print_summary(prepared.layout.run_dir)
    if pending and counts.get("rounds_over_budget"):
        click.echo(budget_line(config, counts))


class ReportImports:
    """What the report needs (pandas, matplotlib: 1.5-3 s of CPU on the VM of BENCHMARKS.md), imported on
    a thread of its own while the last grades arrive (`start`, called when every image is generated), so
    that the report is written the moment they are in. `wait` joins it before the report is built: the
    main thread never imports beside it. Not a daemon: an exit meanwhile lets the import end rather than
    tearing it down half done. An import that fails here fails again, with its message, in the report."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._load, name="ttsf-report-imports")
            self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()

    @staticmethod
    def _load() -> None:
        import importlib

        try:
            for name in ("pandas", "matplotlib.figure", "matplotlib.backends.backend_agg", "ttsf_core.usecases.report"):
                importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the report imports them again and says what failed
            pass


def billed_line(counts: dict) -> str:
    """What this run was billed for by API graders (nothing for a verifier that is not billed)."""
    if not counts.get("verifier_requests"):
        return ""
    cost = f"${counts['cost_usd']:.4f}" + (f" (and {counts['unpriced_requests']} requests of a model without a price)"
                                          if counts.get("unpriced_requests") else "")
    return (f" Billed: {counts['verifier_requests']} verifier requests, {counts['prompt_tokens']:,} prompt, "
            f"{counts['thought_tokens']:,} thought and {counts['output_tokens']:,} answer tokens: {cost}.")


def budget_line(config: RunConfig, counts: dict) -> str:
    """The last line of a run the budget stopped: what it spent of what, what was not run, how to go on."""
    budget, spent = config.budget, []
    if budget.max_verifier_requests is not None:
        spent.append(f"{counts.get('verifier_requests', 0)} of {budget.max_verifier_requests} verifier requests")
    if budget.max_verifier_cost_usd is not None:
        spent.append(f"${counts.get('cost_usd', 0.0):.4f} of ${budget.max_verifier_cost_usd:g}")
    rounds, prompts = counts["rounds_over_budget"], counts.get("prompts_over_budget", 0)
    return (f"Budget reached: this run spent {' and '.join(spent)}; {rounds} round{'s' * (rounds != 1)} of {prompts} "
            f"prompt{'s' * (prompts != 1)} not run (each stopped before the first round that would go over). "
            "Finished rounds are kept: run again with a larger --max_verifier_requests / --max_verifier_cost, or "
            "none, to pay only for the rounds not yet done.")


def _grading_trouble(counts: dict) -> str:
    parts = []
    if counts.get("images_ungradeable"):
        parts.append(f"{counts['images_ungradeable']} images the verifier never graded (excluded from selection)")
    if counts.get("rate_limited") or counts.get("retries"):
        parts.append(f"{counts.get('rate_limited', 0)} requests rate limited, {counts.get('retries', 0)} retries, "
                     f"{counts.get('retry_wait_s', 0):.0f} s waited")
    return (" " + "; ".join(parts) + ".") if parts else ""


def start_log_file(run_dir: Path) -> Path:
    """Every log record of this process, tracebacks included, to RUN_DIR/logs/<time>-<pid>.log."""
    import logging
    import time

    path = Path(run_dir) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    logging.getLogger("ttsf").setLevel(logging.INFO)
    return path.absolute()


def _migrate_legacy_folder(prepared) -> int | None:
    """A search begun before the image store: import its work first (nothing is paid for twice).
    Returns the rounds still pending afterwards, or None when there was nothing to import."""
    from ttsf_core.usecases.migrate import legacy_run_dir, migrate

    legacy = legacy_run_dir(prepared.config)
    if legacy is None:
        return None
    migrated = migrate(legacy)
    click.echo(f"ttsf: note: imported {migrated.images} images and {migrated.grades} grades of this search from "
               f"{legacy} (the layout before the image store; left as it was)", err=True)
    return pending_rounds(prepared)


def _search(prepared, executor: str) -> tuple[dict | None, Exception | None]:
    try:
        return _search_with(prepared, executor), None
    except Exception as error:  # noqa: BLE001 - reported by _fail_search, in one line
        return None, error


def _fail_search(error: Exception, fail, log_path: Path) -> None:
    import logging

    if isinstance(error, ConfigError):
        fail(str(error))
    logging.getLogger("ttsf").error("the search failed", exc_info=error)  # the traceback: log file only
    fail(f"{_one_line(error)}; {RESUME_HINT} (details: {log_path})", code=1)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _search_with(prepared, executor: str) -> dict:
    from ttsf_core.usecases import runner
    if executor == "threads":
        _, outcome = runner.run(prepared)
        if outcome.failures:
            first = outcome.failures[0]
            raise RuntimeError(f"{len(outcome.failures)} rounds failed; first: prompt {first.prompt_index} round "
                               f"{first.search_round}: {_one_line(first.error)}")
        return vars(outcome.counts)
    from flows.search_dataset import search_dataset
    from tasks import runtime
    from ttsf_core.prompts import prompt_list_source, save_prompt_list

    # Load the pipeline while Prefect's embedded server starts (both take seconds); the flow's
    # first generation waits for it. A failed load is raised again, with its message, by the flow.
    threading.Thread(target=_preload, args=(runtime, prepared.config), daemon=True).start()
    # The flow gets the prompts by reference (a saved list), never the texts: the dataset is read
    # once, and no prompt is too large for Prefect's parameters.
    prompt_list = save_prompt_list(prepared.layout.run_dir, prepared.prompts, prepared.config.prompts)
    config = prepared.config.model_copy(update={"prompts": prompt_list_source(prompt_list)})
    runtime.adopt(config, prepared)  # prepared once: the flow does not build the verifier or check it again
    return search_dataset(config)["counts"]


def pending_rounds(prepared) -> int:
    """Rounds of this run with no record yet."""
    rounds = range(1, prepared.config.search_args.search_rounds + 1)
    return sum(not prepared.layout.record_path(prompt, r).is_file() for prompt in prepared.prompts for r in rounds)


def _preload(runtime, config: RunConfig) -> None:
    try:
        runtime.generator_for(config)
    except Exception:  # noqa: BLE001 - the flow loads again and reports the error in its run
        pass


def print_summary(run_dir: Path) -> None:
    from ttsf_core.usecases.report import REPORT_DIRNAME, summary_lines

    for line in summary_lines(run_dir):
        click.echo(line)
    click.echo(f"Report: {run_dir / REPORT_DIRNAME}")
    click.echo(f"Output: {run_dir}")


def report_and_print(output_dir: Path) -> None:
    from ttsf.exit import fail
    from ttsf_core.usecases.report import build_report, cost_lines, report_dataframe

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
        for line in cost_lines(report_dataframe(run_dir)):
            click.echo(f"  {line}")


def find_run_dirs(output_dir: Path) -> list[Path]:
    """`output_dir` itself when it is a run, else every run below it."""
    output_dir = Path(output_dir)
    if (output_dir / "config.json").is_file():
        return [output_dir]
    return sorted(path.parent for path in output_dir.rglob("config.json") if (path.parent / "prompts").is_dir())


def regenerate_and_print(record: Path, index: int, out: Path | None, device: str | None) -> None:
    from ttsf.exit import fail
    from ttsf_core.usecases.regenerate import regenerate

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
    from ttsf.exit import fail
    from ttsf_core.usecases.migrate import migrate

    try:
        migrated = migrate(old_run_dir)
    except (ConfigError, ValueError) as error:
        fail(str(error))
    click.echo(f"Imported {migrated.images} images and {migrated.grades} grades into the store; "
               f"wrote {migrated.rounds} round records (0 images generated, 0 graded).")
    click.echo(f"Output: {migrated.run_dir}")


def serve_output(output_dir: Path, host: str, port: int) -> None:
    """A read-only static file server over OUTPUT_DIR (the standard library's, directory-bound)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(Path(output_dir).resolve()))
    with ThreadingHTTPServer((host, port), handler) as server:
        click.echo(f"Serving {Path(output_dir).resolve()} at http://{host}:{server.server_address[1]}/ "
                   f"(runs link images there with --output_url http://{host}:{server.server_address[1]}/); Ctrl-C stops")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
