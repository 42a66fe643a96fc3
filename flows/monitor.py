"""The run as the Prefect UI shows it.

The dataset flow run creates the run's artifacts (so they appear on its page, under keys named by the
search: `ttsf-<hash>-progress`, `-status`, `-batches`, `-best`, `-summary`), and batch runs update
them by id, whichever worker runs them. Each batch run also gets its own (keyless) table and gallery
of best images. Seeds are written as text (JavaScript would round them), prompts are escaped
(a prompt is data, never markup), images are embedded as small JPEG thumbnails (no file server
needed) and linked under `output_url` when one is configured.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from pydantic import BaseModel

from flows.outages import fail_fast, is_outage, ride_out
from ttsf_core.budget import recorded_nfe
from ttsf_core.config import BudgetArgs, RunConfig
from ttsf_core.resolve import resolve
from ttsf_core.engine.search_engine import BatchCounts
from ttsf_core.storage.records import RoundRecord, RunLayout, resolve_image
from ttsf_core.usecases.report import thumbnail_data_uri

GALLERY_PROMPTS = 24  # the run's gallery shows the prompts finished last; the report holds them all
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def artifact_key(config: RunConfig, name: str) -> str:
    return f"ttsf-{resolve(config).identity_hash}-{name}"


def md_text(text: str) -> str:
    """Any text (a prompt, an error) as inert markdown: no markup, no HTML, one line."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=True))


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


# Artifact updates the server could not take (it was unreachable), the latest per artifact: each update
# carries the artifact's whole content, so sending the latest one when the server answers again brings
# the UI up to date. Never waited for: the dataset run keeps watching its batches through an outage.
_unsent: dict[UUID, dict] = {}
_unsent_lock = threading.Lock()
_outage_said = threading.Event()  # set while an outage has been reported (one warning per outage)
_log = logging.getLogger("ttsf.monitor")


def _update(artifact_id: UUID, data, description: str | None = None) -> None:
    fields = {"data": data} | ({"description": description} if description is not None else {})
    with _unsent_lock:
        _unsent[artifact_id] = {**_unsent.get(artifact_id, {}), **fields}
    flush_updates()


def flush_updates() -> bool:
    """Send the artifact updates still unsent, once each; False when the server is (still) unreachable."""
    with _unsent_lock:
        waiting = list(_unsent.items())
    for artifact_id, fields in waiting:
        try:
            with fail_fast(), get_client(sync_client=True) as client:  # a field not given is left as it is
                client.update_artifact(artifact_id, ArtifactUpdate(**fields))
        except Exception as error:  # noqa: BLE001 - an outage leaves the update for later; anything else is raised
            if not is_outage(error):
                raise
            if not _outage_said.is_set():  # said once per outage, not once per update
                _outage_said.set()
                _log.warning("the run's page is not updated while the Prefect server cannot be reached (%s); "
                             "it catches up when the server answers", type(error).__name__)
            return False
        with _unsent_lock:
            if _unsent.get(artifact_id) is fields:
                del _unsent[artifact_id]
    _outage_said.clear()
    return True


class RunView(BaseModel):
    """What a batch needs to keep the run's progress and status true (passed to batch runs)."""

    run_name: str
    total_prompts: int
    done_at_start: int  # prompts with every round recorded before this run began
    done_before: int  # ... before this batch began (earlier runs and earlier batches of this one)
    started_at: float
    counts_before: dict[str, int | float]  # this run's counts before this batch
    batches_failed: int
    rpm_text: str
    budget: dict[str, Any] = {}  # the run's budget (BudgetArgs as data): shown with what it spent
    nfe_before: int = 0  # denoiser evaluations recorded before this run (budget.max_nfe counts them)
    progress_id: UUID | None = None  # None only while the artifacts are being created
    status_id: UUID | None = None

    def update(self, done_in_batch: int, counts: BatchCounts) -> None:
        done = self.done_before + done_in_batch
        total = max(self.total_prompts, 1)
        with_batch = BatchCounts(**self.counts_before)
        with_batch.add(counts)
        _update(self.progress_id, 100.0 * done / total, f"{done} of {self.total_prompts} prompts finished")
        _update(self.status_id, self.status_markdown(done, with_batch))

    def status_markdown(self, done: int, counts: BatchCounts, ended: str | None = None) -> str:
        finished_now = done - self.done_at_start
        elapsed = time.time() - self.started_at
        if ended is not None:
            when = ended
        elif done >= self.total_prompts:
            when = "all prompts finished"
        elif finished_now > 0:
            when = f"about {duration(elapsed / finished_now * (self.total_prompts - done))} left"
        else:
            when = "time left: known once a prompt finishes"
        rows = [
            ("images generated", counts.images_generated), ("images graded", counts.images_graded),
            ("images / grades found stored (not paid again)", f"{counts.images_found} / {counts.grades_found}"),
            ("images never gradeable (excluded)", counts.images_ungradeable),
            ("verifier requests rate limited (429)", counts.rate_limited), ("grading retries", counts.retries),
            ("time waited before retries", duration(counts.retry_wait_s)), ("batches failed", self.batches_failed),
        ]
        if counts.verifier_requests:
            rows += [("verifier requests billed", counts.verifier_requests),
                     ("tokens: prompt / thought / answer", f"{counts.prompt_tokens:,} / {counts.thought_tokens:,} / "
                                                          f"{counts.output_tokens:,}"),
                     ("cost so far (USD, price table)", f"{counts.cost_usd:.4f}" + (
                         f" + {counts.unpriced_requests} requests without a price" if counts.unpriced_requests else ""))]
        if BudgetArgs(**self.budget).limited():
            rows.append(("budget", budget_text(self.budget, counts, self.nfe_before)))
        if self.budget.get("allocation") == "adaptive":
            rows.append(("prompts still searched (adaptive allocation)", self.total_prompts - done))
        return "\n".join([
            f"### {md_text(self.run_name)}",
            f"**Prompts finished: {done} of {self.total_prompts}** ({100 * done / max(self.total_prompts, 1):.0f}%) "
            f"· {when} · running for {duration(elapsed)}",
            "",
            "| this run | |",
            "|---|---:|",
            *(f"| {name} | {value} |" for name, value in rows),
            "",
            f"Verifier budget: {md_text(self.rpm_text)}",
        ])


class RunMonitor:
    """The dataset flow run's artifacts: created once, then kept true as batches finish."""

    def __init__(self, config: RunConfig, run_name: str, prompts: list[str], rpm_text: str):
        self.config, self.run_name, self.prompts, self.rpm_text = config, run_name, prompts, rpm_text
        self.layout = RunLayout(resolve(config))
        self.finished = {index for index, prompt in enumerate(prompts) if self._recorded(prompt)}
        self.done_at_start = len(self.finished)
        self.counts = BatchCounts()
        self.nfe_before = recorded_nfe(self.layout, list(enumerate(prompts)), config.search_args.search_rounds) \
            if config.budget.max_nfe is not None else 0
        self.batches: dict[int, dict] = {}
        self.recent: list[str] = []
        self.shown: set[int] = set()  # prompts in the gallery (or finished before this run)
        self.started_at = time.time()
        total, done = len(prompts), len(self.finished)
        budget = config.dispatch.server_outage_s  # nothing is submitted yet: waiting out an outage costs nothing
        self.progress_id = ride_out(lambda: create_progress_artifact(
            progress=100.0 * done / max(total, 1), key=artifact_key(config, "progress"),
            description=f"{done} of {total} prompts finished · {run_name}"), "the run's progress artifact", budget)
        self.status_id = ride_out(lambda: create_markdown_artifact(
            markdown=self.view().status_markdown(done, self.counts), key=artifact_key(config, "status"),
            description=f"Progress, counts and time left · {run_name}"), "the run's status artifact", budget)
        self.batches_id = ride_out(lambda: create_table_artifact(
            table=[], key=artifact_key(config, "batches"), description=f"One row per batch · {run_name}"),
            "the run's batches artifact", budget)
        self.best_id = ride_out(lambda: create_markdown_artifact(
            markdown="No prompt finished yet.", key=artifact_key(config, "best"),
            description=f"Each round's best image, last {GALLERY_PROMPTS} prompts finished · {run_name}"),
            "the run's gallery artifact", budget)

    def _recorded(self, prompt: str) -> bool:
        rounds = range(1, self.config.search_args.search_rounds + 1)
        return all(self.layout.record_path(prompt, r).is_file() for r in rounds)

    def view(self) -> RunView:
        """What a batch about to start needs to keep progress and status true."""
        return RunView(run_name=self.run_name, total_prompts=len(self.prompts), done_at_start=self.done_at_start,
                       done_before=len(self.finished), started_at=self.started_at, counts_before=vars(self.counts),
                       batches_failed=sum(row["status"] == "failed" for row in self.batches.values()),
                       rpm_text=self.rpm_text, budget=self.config.budget.model_dump(), nfe_before=self.nfe_before,
                       progress_id=getattr(self, "progress_id", None),
                       status_id=getattr(self, "status_id", None))

    def tick(self) -> None:
        """Prompts finished by batches still running elsewhere (pool mode): read from the run folder."""
        newly = [i for i in range(len(self.prompts)) if i not in self.finished and self._recorded(self.prompts[i])]
        if newly:
            self.finished.update(newly)
            self._show_progress()

    def _show_progress(self) -> None:
        """The progress bar and the status as the finished prompts and counts now stand."""
        done = len(self.finished)
        _update(self.progress_id, 100.0 * done / max(len(self.prompts), 1),
                f"{done} of {len(self.prompts)} prompts finished · {self.run_name}")
        _update(self.status_id, self.view().status_markdown(done, self.counts))

    def settle(self, stops: dict[int, str]) -> None:
        """Prompts the adaptive allocation gives no further round (every round, a plateau, the top score,
        the budget): finished for this run."""
        newly = set(stops) - self.finished
        if newly:
            self.finished.update(newly)
            self._show_progress()

    def batch_done(self, batch_index: int, start: int, stop: int, counts: BatchCounts | None = None,
                   error: str | None = None, skipped: bool = False, worker: str = "") -> None:
        finished = [i for i in range(start, stop) if i in self.finished or self._recorded(self.prompts[i])]
        self.finished.update(finished)
        newly = [] if skipped else [i for i in finished if i not in self.shown]
        self.shown.update(newly)
        if counts is not None:
            self.counts.add(counts)
        if skipped:
            self.counts.rounds_skipped += (stop - start) * self.config.search_args.search_rounds
        counts = counts or BatchCounts()
        finished_here = len(finished)
        self.batches[batch_index] = {
            "batch": batch_index, "status": "already finished" if skipped else ("failed" if error else "finished"),
            "error": (error or "")[:300], "prompts": f"{start}-{stop - 1}",
            "prompts finished": f"{finished_here} of {stop - start}", "images generated": counts.images_generated,
            "images graded": counts.images_graded, "ungradeable": counts.images_ungradeable,
            "rate limited (429)": counts.rate_limited, "retries": counts.retries,
            "waited (s)": round(counts.retry_wait_s, 1), "verifier requests": counts.verifier_requests,
            "cost (USD)": round(counts.cost_usd, 4), "rounds over budget": counts.rounds_over_budget, "ran on": worker,
        }
        _update(self.batches_id, json.dumps([self.batches[index] for index in sorted(self.batches)]))
        self._show_progress()
        if newly:
            self.recent = (self.recent + [self.prompts[i] for i in newly])[-GALLERY_PROMPTS:]
            _update(self.best_id, gallery_markdown(self.config, self.recent))

    def ended(self, failed: int, fatal: bool, stopped: str | None = None) -> None:
        """The status once the run stops: no time-left estimate for a run that is over."""
        how = (f"{stopped} (re-run to resume)" if stopped else
               "ended: the verifier refused its configuration" if fatal else
               f"ended with {failed} failed batch{'es' if failed != 1 else ''} (re-run to resume)" if failed else
               "finished: budget reached (re-run with a larger budget, or none, to go on)"
               if self.counts.rounds_over_budget else "finished")
        _update(self.status_id, self.view().status_markdown(len(self.finished), self.counts, ended=f"run {how}"))


def budget_text(budget: dict, counts: BatchCounts, nfe_before: int = 0) -> str:
    """What a budgeted run spent of its limits, and whether it stopped prompts ("budget reached").
    `nfe_before`: denoiser evaluations recorded before this run (budget.max_nfe counts every record)."""
    parts = []
    if budget.get("max_nfe") is not None:
        spent = nfe_before + counts.nfe_recorded
        parts.append(f"{spent:,} of {budget['max_nfe']:,} NFEs ({max(0, budget['max_nfe'] - spent):,} left)")
    if budget.get("max_verifier_requests") is not None:
        parts.append(f"{counts.verifier_requests} of {budget['max_verifier_requests']} requests")
    if budget.get("max_verifier_cost_usd") is not None:
        parts.append(f"${counts.cost_usd:.4f} of ${budget['max_verifier_cost_usd']:g}")
    reached = (f" · **budget reached**: {counts.prompts_over_budget} prompts stopped before a round, "
               f"{counts.rounds_over_budget} rounds not run") if counts.rounds_over_budget else ""
    return (" and ".join(parts) or "no limit") + reached


def prompt_rows(config: RunConfig, prompt: str) -> list[tuple[Path, RoundRecord]]:
    from ttsf_core.storage.records import read_round_record

    layout = RunLayout(resolve(config))
    found = []
    for search_round in range(1, config.search_args.search_rounds + 1):
        path = layout.record_path(prompt, search_round)
        record = read_round_record(path)
        if record is not None:
            found.append((path, record))
    return found


def gallery_markdown(config: RunConfig, prompts: list[str]) -> str:
    """For each prompt: its text, then each round's best image with its seed and score."""
    lines = []
    for prompt in prompts:
        rows = prompt_rows(config, prompt)
        index = rows[0][1].prompt_index if rows else "?"
        lines += [f"**#{index}** {md_text(prompt[:300])}", ""]
        cells = [_cell(config, path, record) for path, record in rows]
        lines += ["| " + " | ".join(f"round {record.search_round}" for _, record in rows) + " |",
                  "|" + "---|" * len(rows), "| " + " | ".join(cells) + " |", ""]
    return "\n".join(lines) if lines else "No prompt finished yet."


def _cell(config: RunConfig, record_path: Path, record: RoundRecord) -> str:
    if record.best is None:
        return f"no gradeable image ({record.ungradeable} ungradeable)"
    image = resolve_image(record_path, record.best_img_path)
    picture = f"![round {record.search_round} best]({thumbnail_data_uri(image, 128)})"
    link = image_link(config, image)
    return (f"{picture}<br>score {record.best_score:.3f}<br>seed `{record.best_noise_seed}`"
            f"<br>noise `{record.best.noise.tag()}`" + (f"<br>[full image]({link})" if link else ""))


def image_link(config: RunConfig, image: Path) -> str | None:
    """A link a browser can follow: under `output_url` (where OUTPUT_DIR is served), else none."""
    if not config.output_url:
        return None
    relative = Path(image).resolve().relative_to(Path(config.output_dir).resolve())
    return config.output_url.rstrip("/") + "/" + relative.as_posix()
