"""What this process has done so far, image by image: a tally the engine and its jobs add to as each
image is written or found and each grade is stored or found, read by whoever shows progress (the
terminal's bars). It is process-wide on purpose: the jobs run on executor threads (or Prefect task
threads) that share nothing else with the one who shows it, and it holds counts only, never state that
decides anything.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields


@dataclass
class Counts:
    images_generated: int = 0  # written by a pipeline call of this process
    images_found: int = 0  # already stored (an earlier run, another worker)
    images_graded: int = 0  # a verdict stored from the verifier's answer
    grades_found: int = 0  # a verdict already stored

    @property
    def images(self) -> int:
        return self.images_generated + self.images_found

    @property
    def grades(self) -> int:
        return self.images_graded + self.grades_found


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = Counts()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self._counts, name, getattr(self._counts, name) + value)

    def snapshot(self) -> Counts:
        with self._lock:
            return Counts(**{field.name: getattr(self._counts, field.name) for field in fields(Counts)})


TALLY = Tally()
