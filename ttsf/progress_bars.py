"""What the terminal shows while a run goes on: two bars, images made and images graded, each moving
image by image (a 16-image round moves them 16 times), with elapsed time and time left, and the rounds
recorded beside them.

The counts are this process's (ttsf_core.progress: the engine and its jobs add to them as each image is
written or found and each grade is stored or found). Batches that run in other processes (a work pool)
show nothing here: then the rounds recorded in the run folder, whoever wrote them, move the bars.
"""

from __future__ import annotations

import threading

from tqdm import tqdm

from ttsf_core.progress import TALLY

POLL_S = 0.2
RECORDS_EVERY = 5  # polls between two reads of the run folder's records


def planned_images(prepared) -> int:
    """Images the pending rounds hold (each stage; later stages as many as they may hold): the bars'
    length. An image already stored counts too, and moves the bar the moment it is found."""
    strategy, layout = prepared.strategy, prepared.layout
    total = 0
    for index, prompt in prepared.indexed_prompts():
        for search_round in range(1, prepared.config.search_args.search_rounds + 1):
            if layout.record_path(prompt, search_round).is_file():
                continue
            if prepared.allowance is not None and not prepared.allowance.allows(index, search_round):
                continue
            first = strategy.next_stage(prompt, search_round, [], [])
            total += len(first) + strategy.later_stage_bound(first)
    return total


class RunProgress:
    """Two bars over the run's pending images, and the rounds recorded, until the search ends.
    `when_generated` is called once (on the bars' thread) when every planned image is made: what is
    left is grading, the time to get the report ready."""

    def __init__(self, prepared, pending_rounds, interval_s: float = POLL_S, when_generated=None):
        self.pending_rounds, self.interval_s = pending_rounds, interval_s
        self.when_generated = when_generated
        self.prepared = prepared
        self.rounds_total = len(prepared.prompts) * prepared.config.search_args.search_rounds
        self.rounds_at_start = self.rounds_total - pending_rounds(prepared)
        total = planned_images(prepared)
        self.start = TALLY.snapshot()
        self.made = tqdm(total=total, unit="img", desc="generate", dynamic_ncols=True, position=0)
        self.graded = tqdm(total=total, unit="img", desc="grade   ", dynamic_ncols=True, position=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="ttsf-progress", daemon=True)
        self._polls = 0
        self._rounds = self.rounds_at_start

    def _poll(self) -> None:
        while not self.stop.wait(self.interval_s):
            self._update()

    def _update(self, final: bool = False) -> None:
        now = TALLY.snapshot()
        if final or self._polls % RECORDS_EVERY == 0:
            self._rounds = self.rounds_total - self.pending_rounds(self.prepared)
        self._polls += 1
        made, graded = now.images - self.start.images, now.grades - self.start.grades
        if made == 0 and graded == 0 and self._rounds > self.rounds_at_start:
            # nothing of this process's: batches elsewhere (a work pool) record rounds; show those
            share = (self._rounds - self.rounds_at_start) / max(self.rounds_total - self.rounds_at_start, 1)
            made = graded = round(share * self.made.total)
        for bar, value in ((self.made, made), (self.graded, graded)):
            if value > bar.total:  # a later stage held fewer than it might: the plan was an upper bound
                bar.total = value
            bar.update(value - bar.n)
        if self.when_generated is not None and made >= self.made.total and not final:
            when, self.when_generated = self.when_generated, None
            when()
        self.made.set_postfix_str(f"rounds {self._rounds}/{self.rounds_total}", refresh=final)

    def __enter__(self) -> "RunProgress":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()
        self._update(final=True)
        self.graded.close()
        self.made.close()
