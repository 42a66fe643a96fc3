"""Liveness that needs no server: each pooled batch run's heartbeat file in the shared run folder.

A batch run (flows/search_batch.py) rewrites `RUN_DIR/batches/heartbeats/batch-N-<flow run id>.json`
every `dispatch.heartbeat_s` from a thread, with a counter that grows by one each write, the counts of
its work so far and, once its work is on disk, how it ended. The dataset run (flows/dispatch.py) reads
the file of every attempt it waits for: a counter that has not changed for `dispatch.lost_after_s`, on
the dataset run's own monotonic clock, means the batch's process or machine is gone. Nothing compares
two machines' clocks (file times included), so a worker whose clock is off by hours is judged right;
the one assumption is the shared disk's: a file renamed into place on one machine is read whole on
another (POSIX rename; NFS close-to-open consistency).

The same folder carries the other way what a server may not: the dataset run asks a batch to stop by
writing `<heartbeat>.stop`; the batch's heartbeat thread sees it within one beat and ends its own process
with SIGTERM (which Prefect's engine turns into a TerminationSignal), even when its worker can no longer
hear the server's cancellation (after an outage a 3.9.1 worker stops watching for it: "Cancellation
observer failed. Flow run cancellation disabled", seen in tests/test_scaleout.py's outage run).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ttsf_core.storage.files import atomic_write_bytes, write_json

HEARTBEAT_DIR = "heartbeats"
_log = logging.getLogger("ttsf.heartbeat")


def heartbeat_path(run_dir: Path, batch_index: int, run_id: str) -> Path:
    return Path(run_dir) / "batches" / HEARTBEAT_DIR / f"batch-{batch_index}-{run_id}.json"


def stop_path(beat_path: Path) -> Path:
    return beat_path.with_suffix(".stop")


class Beat(BaseModel):
    """What a heartbeat file holds."""

    run_id: str
    batch_index: int
    beat: int  # +1 every write: a change is noticed by the reader's clock, never by comparing clocks
    where: str  # the worker, host and process
    counts: dict[str, int | float] = {}  # the batch's counts so far (BatchCounts), as of this beat
    # None while it works; "completed" or "failed" once its work is on disk; "stopped" when it ends itself
    # on the dataset run's stop file
    ended: str | None = None
    message: str = ""


class Heartbeat:
    """Batch side: a daemon thread rewrites the file every `interval_s`; `end()` writes the last one."""

    def __init__(self, path: Path, run_id: str, batch_index: int, interval_s: float, where: str,
                 logger: logging.Logger | None = None):
        self.path, self.interval_s, self.logger = Path(path), interval_s, logger or _log
        self.beat = Beat(run_id=run_id, batch_index=batch_index, beat=0, where=where)
        self.live_counts = None  # the engine's BatchCounts, once a round is recorded (read at each beat)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"ttsf-heartbeat-{batch_index}", daemon=True)
        self._last_warning = 0.0

    def __enter__(self) -> "Heartbeat":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.interval_s, 1.0) + 5)

    def stop_requested(self) -> str | None:
        """The dataset run's reason, when it asked this attempt to stop before it began; else None."""
        stop = stop_path(self.path)
        if not stop.is_file():
            return None
        return stop.read_text(encoding="utf-8").strip() or "no reason given"

    def end(self, outcome: str, message: str = "") -> None:
        """The work is on disk (records, summary): say so before anything is reported to the server."""
        self._stop.set()
        self._thread.join(timeout=max(self.interval_s, 1.0) + 5)
        with self._lock:
            self.beat = self.beat.model_copy(update={"ended": outcome, "message": message[:500]})
        self._write()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()
            stop = stop_path(self.path)
            if stop.is_file():
                self._stop_own_process(stop)
                return

    def _write(self) -> None:
        with self._lock:
            counts = dict(vars(self.live_counts)) if self.live_counts is not None else self.beat.counts
            self.beat = self.beat.model_copy(update={"beat": self.beat.beat + 1, "counts": counts})
            payload = self.beat.model_dump(mode="json")
        try:
            write_json(self.path, payload)
        except OSError as error:  # a full or flaky shared disk: keep beating; a stale file is the signal
            if time.monotonic() - self._last_warning > 60:
                self._last_warning = time.monotonic()
                self.logger.warning("could not write the heartbeat %s: %s", self.path, error)

    def _stop_own_process(self, stop: Path) -> None:
        try:
            reason = stop.read_text(encoding="utf-8").strip()
        except OSError as error:
            reason = f"(the stop file could not be read: {error})"
        self.logger.warning("the dataset run asked this batch to stop: %s", reason or "no reason given")
        # The last beat says so first: the dataset run knows at once that this process is going, whether or
        # not its worker can still tell the server (which then confirms it Cancelled).
        with self._lock:
            self.beat = self.beat.model_copy(update={"ended": "stopped", "message": (reason or "")[:500]})
        self._write()
        # Prefect's engine installs a SIGTERM handler that raises TerminationSignal in the main thread
        # (prefect/utilities/engine capture_sigterm, 3.9.1): the batch ends as a flow run killed by its
        # worker would; without that handler SIGTERM ends the process as well.
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class BeatWatch:
    """Dataset-run side: one attempt's heartbeat file, as seen on this process's monotonic clock."""

    path: Path
    last: Beat | None = None
    changed_at: float | None = None  # when the counter (or the end) last changed, by time.monotonic()
    _read_warning_at: float = field(default=0.0, repr=False)

    def read(self, now: float) -> Beat | None:
        """The latest beat (None: none written yet); notes when it last changed."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self.last
        except OSError as error:  # the shared disk hiccuped: no news this time, said once a minute
            if now - self._read_warning_at > 60:
                self._read_warning_at = now
                _log.warning("could not read the heartbeat %s: %s", self.path, error)
            return self.last
        try:
            beat = Beat.model_validate_json(text)
        except ValidationError as error:  # files are renamed into place whole; a bad one is someone else's
            raise ValueError(f"{self.path}: not a ttsf heartbeat ({error.error_count()} problems)") from None
        if self.last is None or (beat.beat, beat.ended) != (self.last.beat, self.last.ended):
            self.changed_at = now
        self.last = beat
        return beat

    def silent_for(self, now: float, since: float) -> float:
        """Seconds without a new beat, counted from `since` at the earliest (when it was seen running)."""
        return now - max(self.changed_at if self.changed_at is not None else since, since)

    def ask_to_stop(self, reason: str) -> None:
        atomic_write_bytes(stop_path(self.path), (reason + "\n").encode())

    def remove(self) -> None:
        """An attempt the dataset run is done with leaves no heartbeat behind. Its stop file, if it was
        asked to stop, stays unless its last beat said it ended: a process still starting, or one its
        worker could not reach, finds it when it begins and does not run (flows/search_batch.py)."""
        self.path.unlink(missing_ok=True)
        if self.last is not None and self.last.ended:
            stop_path(self.path).unlink(missing_ok=True)
