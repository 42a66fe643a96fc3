"""`ttsf` command line. Flags keep tt-scale-flux's names where it had them; a config file sets any
field and flags override it. Every bad input is reported as one line before any model loads."""

from __future__ import annotations

import atexit
import gc
import os
import sys
from pathlib import Path
from typing import Any


def exit_now() -> None:
    """The last exit handler of a `ttsf` process whose command succeeded: flush what was printed and
    leave without the interpreter's teardown of torch's, diffusers' and transformers' modules, which
    frees nothing the OS does not (0.3-0.5 s after a `ttsf run` that generated, on the loaded 2-core VM
    of BENCHMARKS.md; 0.05-0.10 s with this). Every exit handler registered after this one (logging's,
    tqdm's, torch's, weakref finalizers...) has run by then, after every non-daemon thread ended, and
    every file ttsf writes is closed and renamed before then. Declines (the usual exit follows) unless
    this process is the `ttsf` command itself (not a test runner or a program that called main), no exit
    handler was registered before this one (it would be skipped), its command exited 0 and nothing failed
    after it, and Prefect was never imported (its clients and temporary server keep their own clean-up)."""
    if (_ENDED["handlers_before"] != 0 or _ENDED.get("code", "unset") not in (0, None)
            or hasattr(sys, "last_value") or Path(sys.argv[0]).stem != "ttsf" or "prefect" in sys.modules):
        return
    if "logging" in sys.modules:  # a file handler's last line (its own exit handler may come after this one)
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass
    os._exit(0)


# Before any other import: exit handlers run last-registered first, so this one runs after all the others.
_ENDED: dict[str, Any] = {"handlers_before": getattr(atexit, "_ncallbacks", lambda: -1)()}
atexit.register(exit_now)

import click  # noqa: E402 - after exit_now's registration

# Library chatter (torchvision fallbacks, CLIP truncation) would drown the progress bar.
for _name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
    os.environ.setdefault(_name, "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from ttsf.exit import fail  # noqa: E402 - after the environment above
from ttsf.flags import EXECUTORS, RUN_FLAGS, config_from_options, metavar  # noqa: E402
from ttsf_core.config import ConfigError  # noqa: E402
from ttsf_core.usecases.export import FORMATS as EXPORT_FORMATS  # noqa: E402


class RunCommand(click.Command):
    """`ttsf run`, with click's own usage errors (unknown flag, flag without its value, stray argument)
    in the same one-line shape as every other bad input."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            extra = super().parse_args(ctx, args)
        except click.UsageError as error:
            fail(_usage_problem(self, error))
        if extra:
            fail(f"arguments: received {' '.join(extra)!r}, allowed: none (every input is a --flag)")
        return extra


def _usage_problem(command: click.Command, error: click.UsageError) -> str:
    if isinstance(error, click.NoSuchOption):
        close = ", ".join(error.possibilities or ()) or "the flags `ttsf run --help` lists"
        return f"flags: received unknown flag {error.option_name!r}, allowed: {close}"
    if not isinstance(error, click.BadOptionUsage):  # none other arises: every option takes a plain string
        raise error
    name = error.option_name
    if any(getattr(param, "is_flag", False) and name in param.opts for param in command.params):
        return f"{name.lstrip('-')}: received a value, allowed: {name} alone"
    return f"{name.lstrip('-')}: received nothing, allowed: a value after {name}"


def run_options(function):
    for flag in reversed(RUN_FLAGS):
        path, text = RUN_FLAGS[flag]
        function = click.option(f"--{flag}", flag, default=None, metavar=metavar(path), help=text)(function)
    function = click.option("--compile", "compile_", is_flag=True, default=False,
                            help="Regional torch.compile of the denoiser's repeated blocks (same pixels; compiles "
                                 "in seconds to a minute on first use).")(function)
    function = click.option("--vae_tiling", is_flag=True, default=False,
                            help="Decode in tiles (less memory at large sizes; changes pixels slightly).")(function)
    function = click.option("--use_low_gpu_vram", is_flag=True, default=False,
                            help="Diffusers' model CPU offload: each component on the GPU only while it runs.")(function)
    function = click.option("--config", "--pipeline_config_path", "config", default=None,
                            help="JSON, TOML or YAML file setting any field (tt-scale-flux configs load as they are); "
                                 "flags override it.")(function)
    return function


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        fail(f"--executor: received {executor!r}, allowed: one of {', '.join(EXECUTORS)}")


class TtsfGroup(click.Group):
    """The `ttsf` group; it notes how its command ended, for `exit_now`."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except SystemExit as done:
            _ENDED["code"] = done.code
            raise


@click.group(cls=TtsfGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ttsf: inference-time scaling for text-to-image diffusion by searching over initial noises."""
    exit_without_last_collection()


def exit_without_last_collection() -> None:
    """Exit at once when the work is done. A run that generated has imported torch, diffusers and
    transformers: millions of objects that the interpreter's last garbage collection walks on the way
    out (1.8-2.1 s after such a `ttsf run` returned, on the loaded 2-core VM of BENCHMARKS.md; 0.34-0.39 s
    with them frozen; `exit_now` then skips the modules' teardown too). atexit calls gc.freeze after
    every non-daemon thread has ended; the other exit handlers run as before (freezing only keeps the
    last collection from walking what exists), and every file ttsf writes is closed and renamed before
    then. Registered when a command runs, never on import."""
    atexit.unregister(gc.freeze)  # once, however often the group runs in one process (tests)
    atexit.register(gc.freeze)


@main.command("run", cls=RunCommand, context_settings={"allow_extra_args": True},
              short_help="Search noises per prompt, grade them, record each round's best.")
@run_options
@click.option("--executor", default="auto", show_default=True, metavar="[" + "|".join(EXECUTORS) + "]",
              help="prefect: the search-dataset flow, every job a task run (visible in the Prefect UI; without a "
                   "configured server, on a temporary one for this run); threads: the same search loop on local "
                   "threads, no orchestrator (the same records, images and report). auto: prefect when a Prefect "
                   "server is configured (PREFECT_API_URL, .env, prefect.toml or the active Prefect profile) or "
                   "the config asks for what only Prefect does (dispatch pool, verifier_rpm, result_storage); "
                   "threads otherwise.")
def run_command(executor: str, **options: Any) -> None:
    """Search noises for each prompt, grade every image, record each round's best."""
    from ttsf.cli_run import run_and_print

    check_executor(executor)
    try:
        config = config_from_options(options)
    except ConfigError as error:
        fail(str(error))
    run_and_print(config, executor)


@main.command("estimate", cls=RunCommand, context_settings={"allow_extra_args": True},
              short_help="What `ttsf run` with these flags would spend, before it runs.")
@run_options
@click.option("--executor", default="auto", show_default=True, metavar="[" + "|".join(EXECUTORS) + "]",
              help="As for `ttsf run` (ignored here).")
def estimate_command(executor: str, **options: Any) -> None:
    """Print what `ttsf run` with the same flags would spend (images, denoiser evaluations, verifier
    requests, tokens, cost), before anything runs: nothing is generated, graded or sent."""
    from ttsf.cli_estimate import estimate_and_print

    check_executor(executor)
    try:
        config = config_from_options(options)
    except ConfigError as error:
        fail(str(error))
    estimate_and_print(config)


@main.command("report", short_help="Rebuild the report of every run in OUTPUT_DIR from its records.")
@click.argument("output_dir", type=click.Path(path_type=Path))
def report_command(output_dir: Path) -> None:
    """Rebuild report.parquet/csv/html, the scaling curve, collages and the image archive of every run
    in OUTPUT_DIR (a run folder or a folder above runs), from the records on disk alone."""
    from ttsf.cli_run import report_and_print

    report_and_print(output_dir)


@main.command("regenerate", short_help="Remake a recorded image and check it is byte-identical.")
@click.argument("record", type=click.Path(path_type=Path))
@click.option("--index", type=int, default=None, help="Candidate index in the record [the round's best].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the PNG [./<noise tag>-st<steps>.png].")
@click.option("--device", default=None, help="Device for the pipeline [the run's].")
def regenerate_command(record: Path, index: int | None, out: Path | None, device: str | None) -> None:
    """Regenerate one candidate's image from its round RECORD alone (noise spec, steps, batch) and
    check it is byte-identical to the recorded image (exit 1 if not)."""
    from ttsf.cli_run import regenerate_and_print
    from ttsf_core.storage.records import read_round_record

    if index is None:
        found = read_round_record(record) if record.is_file() else None
        index = found.best_index if found is not None else 0
    regenerate_and_print(record, index, out, device)


@main.command("serve", short_help="Serve OUTPUT_DIR over HTTP (full-size images for the UI).")
@click.argument("output_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
def serve_command(output_dir: Path, host: str, port: int) -> None:
    """Serve OUTPUT_DIR (images, records, reports) read-only over HTTP, so that links in the Prefect UI
    open full-size images: run with --output_url http://HOST:PORT/ pointing here."""
    from ttsf.cli_run import serve_output

    serve_output(output_dir, host, port)


@main.command("export", short_help="Write a run's records in tt-scale-flux's layout.")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "format_", type=click.Choice(EXPORT_FORMATS), default="tt-scale-flux", show_default=True,
              help="tt-scale-flux: its flat folder of per-round JSON datapoints and best images, as its "
                   "process_results.py reads them.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The folder to write.")
def export_command(run_dir: Path, format_: str, out: Path) -> None:
    """Write RUN_DIR's records in another tool's layout (the run folder is left as it is)."""
    from ttsf_core.usecases.export import export_tt_scale_flux

    exported = export_tt_scale_flux(run_dir, out)
    click.echo(f"Exported {exported.rounds} rounds to {exported.folder}"
               + (f" ({exported.skipped} rounds without a gradeable image left out)" if exported.skipped else ""))


@main.command("migrate", short_help="Bring a run folder from before the image store up to date.")
@click.argument("old_run_dir", type=click.Path(path_type=Path))
def migrate_command(old_run_dir: Path) -> None:
    """Bring a run folder written before the image store (images beside their records) into the
    current layout: its images and grades go into the store, its records are rewritten beside them.
    Nothing is generated or graded; running the same command afterwards resumes from there."""
    from ttsf.cli_run import migrate_and_print

    migrate_and_print(old_run_dir)


if __name__ == "__main__":  # pragma: no cover
    main()
