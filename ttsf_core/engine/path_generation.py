"""Generating candidates on a denoising path (search over paths, FK steering) with a loaded pipeline.

A candidate's pipeline call continues from its parent's state: the sample where the parent's last run
stopped (ttsf_core.pipelines.paths.PathState), kept in `states` (the store's, or memory when a record is
replayed). Every call is made the same way whatever is already stored, so a resumed search, another run
reusing its images, and `ttsf regenerate` all compute the same floats:
- a stage's candidates are cut into calls by `plan_batches` (one segment a call);
- the parents that start at the initial noise (search over paths runs N noises part way before its first
  graded stage) are computed first, in their own calls over all of the stage's such parents, and a call
  runs again whole when any of its states is missing;
- a parent state that is not stored (a finished round's states are removed) is rebuilt by replaying the
  round's earlier stages, which the generate job carries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from ttsf_core.candidates import Candidate, parent_of

if TYPE_CHECKING:
    from ttsf_core.engine.generate import CandidateGenerator, Media
    from ttsf_core.pipelines.paths import PathState

LOGGER = logging.getLogger("ttsf.paths")
# A stage's candidates -> the most candidates one of its pipeline calls holds (the strategy's choice:
# FK steering runs all its particles in one call; otherwise batch_size_for_img_gen).
Batching = Callable[[Sequence[Candidate]], int]


class PathStates(Protocol):
    def find_state(self, prompt: str, candidate: Candidate) -> "PathState | None": ...
    def write_state(self, prompt: str, candidate: Candidate, state: "PathState") -> None: ...


class MemoryStates:
    """States in memory: what a replay (ttsf regenerate) needs, nothing written."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], PathState] = {}

    def find_state(self, prompt: str, candidate: Candidate) -> "PathState | None":
        return self._states.get((prompt, candidate.key()))

    def write_state(self, prompt: str, candidate: Candidate, state: "PathState") -> None:
        self._states[(prompt, candidate.key())] = state


def noise_rooted_parents(stage: Sequence[Candidate]) -> list[Candidate]:
    """The stage's parents that start at an initial noise and are no candidate of an earlier stage
    (their path is a single run), each once, in the order the stage first needs them."""
    found: dict[str, Candidate] = {}
    for candidate in stage:
        parent = parent_of(candidate)
        if parent is not None and len(parent.path.moves) == 1:
            found.setdefault(parent.key(), parent)
    return list(found.values())


def prepare_stage(generator: "CandidateGenerator", prompt: str, stage: Sequence[Candidate], states: PathStates,
                  earlier: Sequence[Sequence[Candidate]], batching: Batching) -> int:
    """Make every parent state the stage's calls continue from available: compute missing noise-rooted
    ones (their calls whole), replay `earlier` stages for the rest. Returns the denoiser evaluations
    spent (0 when everything was stored)."""
    from ttsf_core.engine.generate import plan_batches

    spent = 0
    rooted = noise_rooted_parents(stage)
    for batch in plan_batches(rooted, generator.batch_size):
        if any(states.find_state(prompt, parent) is None for parent in batch):
            generate_path_batch(generator, prompt, batch, states, decode=False)
            spent += len(batch) * batch[0].own_nfe
    rooted_keys = {parent.key() for parent in rooted}
    missing = [parent for parent in (parent_of(c) for c in stage) if parent is not None
               and parent.key() not in rooted_keys and states.find_state(prompt, parent) is None]
    if missing:
        if not earlier:
            raise RuntimeError(f"the state of {missing[0].key()} (prompt {prompt!r}) is neither stored nor "
                               "replayable: the round's earlier stages were not given")
        LOGGER.info("rebuilding %d path states of prompt %r by replaying %d earlier stages", len(missing), prompt,
                    len(earlier))
        spent += replay(generator, prompt, earlier, states, batching)
    return spent


def replay(generator: "CandidateGenerator", prompt: str, stages: Sequence[Sequence[Candidate]],
           states: PathStates, batching: Batching) -> int:
    """Generate `stages` in order, as the search did, leaving every state in `states` (images dropped)."""
    from ttsf_core.engine.generate import plan_batches

    spent = 0
    for number, stage in enumerate(stages):
        spent += prepare_stage(generator, prompt, stage, states, stages[:number], batching)
        for batch in plan_batches(unique(stage), batching(stage)):
            generate_path_batch(generator, prompt, batch, states, decode=False)
            spent += len(batch) * batch[0].own_nfe
    return spent


def stages_of(candidates: Sequence[Candidate]) -> list[list[Candidate]]:
    """A round's candidates (as its record lists them) cut into its stages: runs of one stage kind
    stopping at one step."""
    stages: list[list[Candidate]] = []
    for candidate in candidates:
        last = stages[-1][-1] if stages else None
        if last is not None and (last.stage, last.path.stop) == (candidate.stage, candidate.path.stop):
            stages[-1].append(candidate)
        else:
            stages.append([candidate])
    return stages


def unique(stage: Sequence[Candidate]) -> list[Candidate]:
    """A stage's candidates with one entry per image (search over paths grades its last level twice
    with --path_verifier: the same images)."""
    return list({candidate.key(): candidate for candidate in stage}.values())


def generate_path_batch(generator: "CandidateGenerator", prompt: str, batch: list[Candidate], states: PathStates,
                        decode: bool = True) -> "list[Media]":
    """One call: each candidate from its parent's state (or its initial noise) through the bridge
    moves, then its last run; every end state is written to `states` before the images are returned."""
    import torch

    from ttsf_core.pipelines.paths import SegmentRun, bridge

    if states is None:
        raise ValueError("candidates on a denoising path need a place for their states")
    first = batch[0]
    latents, known = [], None
    for candidate in batch:
        parent = parent_of(candidate)
        if parent is None:
            latents.append(candidate.noise.draw_with_generator(generator.pipe, generator.geometry)[0])
            continue
        state = states.find_state(prompt, parent)
        if state is None:
            raise RuntimeError(f"path state {parent.key()} of prompt {prompt!r} is missing")
        loop_latents = bridge(state, parent.path.stop, candidate.path.bridge())
        latents.append(generator.family.call_latents(generator.pipe, loop_latents, generator.geometry))
        known = state.sigmas
    base = generator.family.path_sigmas(generator.pipe, first.steps)
    with generator.lock, SegmentRun(generator.pipe, base, first.path.start, first.path.stop, known) as segment:
        kwargs = generator.call_kwargs(prompt, batch, torch.cat(latents, dim=0))
        kwargs.update(segment.call_kwargs())
        if not decode:
            kwargs["output_type"] = "latent"
        output = generator.call(kwargs, len(batch))
    for candidate, state in zip(batch, segment.states(), strict=True):
        states.write_state(prompt, candidate, state)
    if not decode:
        return []
    from ttsf_core.engine.generate import media_of

    return media_of(output)
