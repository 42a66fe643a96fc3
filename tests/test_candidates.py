"""Noise specs: a fresh seed or a seeded walk on the sphere, drawn the same way every time."""

import pytest
import torch
from pydantic import ValidationError

from ttsf_core.candidates import Candidate, NoiseSpec
from ttsf_core.noise import draw_latents, sphere_neighbour


def test_a_neighbour_keeps_the_norm_at_the_asked_cosine():
    pivot = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(0))
    for cosine in (0.5, 0.95, 0.999):
        neighbour = sphere_neighbour(pivot, 7, cosine)
        assert neighbour.shape == pivot.shape and neighbour.dtype == torch.float32
        assert torch.linalg.vector_norm(neighbour).item() == pytest.approx(torch.linalg.vector_norm(pivot).item(), rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(neighbour.flatten(), pivot.flatten(), dim=0).item()
        assert cos == pytest.approx(cosine, abs=1e-5)


def test_neighbours_are_seeded_and_distinct():
    pivot = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sphere_neighbour(pivot, 3, 0.9), sphere_neighbour(pivot, 3, 0.9))
    assert not torch.equal(sphere_neighbour(pivot, 3, 0.9), sphere_neighbour(pivot, 4, 0.9))


def test_a_fresh_spec_draws_what_its_seed_draws(tiny_pipe):
    assert torch.equal(NoiseSpec(seed=11).draw(tiny_pipe, 64, 64), draw_latents(tiny_pipe, [11], 64, 64))


def test_a_walk_is_drawn_step_by_step_and_reproducibly(tiny_pipe):
    pivot = NoiseSpec(seed=5)
    one = pivot.neighbour(100, 0.95)
    two = one.neighbour(200, 0.9)
    expected = sphere_neighbour(sphere_neighbour(pivot.draw(tiny_pipe, 64, 64), 100, 0.95), 200, 0.9)
    assert torch.equal(two.draw(tiny_pipe, 64, 64), expected)
    assert torch.equal(two.draw(tiny_pipe, 64, 64), NoiseSpec.model_validate_json(two.model_dump_json()).draw(tiny_pipe, 64, 64))


def test_tags_are_stable_file_names_that_tell_specs_apart():
    pivot = NoiseSpec(seed=5)
    assert pivot.tag() == "s5"
    walked = pivot.neighbour(100, 0.95)
    assert walked.tag().startswith("s5-w") and walked.tag() == pivot.neighbour(100, 0.95).tag()
    assert len({walked.tag(), pivot.neighbour(101, 0.95).tag(), pivot.neighbour(100, 0.9).tag(), pivot.tag()}) == 4
    assert all(ch.isalnum() or ch in "-_" for ch in walked.tag())
    draft, final = Candidate(noise=walked, steps=2, stage="draft"), Candidate(noise=walked, steps=50)
    assert draft.key() != final.key() and draft.key().endswith("-st2")


def test_specs_refuse_what_cannot_be_drawn():
    with pytest.raises(ValidationError):
        NoiseSpec(seed=-1)
    with pytest.raises(ValidationError):
        NoiseSpec(seed=1).neighbour(2, 1.5)
    with pytest.raises(ValidationError):
        Candidate(noise=NoiseSpec(seed=1), steps=0)
