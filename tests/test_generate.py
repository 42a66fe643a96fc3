import numpy as np
import pytest

from conftest import small_config
from ttsf_core.resolve import resolve
from ttsf_core.engine.generate import CandidateGenerator, plan_batches, seed_candidates
from ttsf_core.noise import round_seeds


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def config(tmp_path):
    return small_config(tmp_path, batch_size_for_img_gen=4)


def test_batched_generation_equals_one_by_one(tiny_pipe, config):
    seeds = seed_candidates(round_seeds(0, "a red fox", 1, 6), 2)
    batched = CandidateGenerator(tiny_pipe, resolve(config)).generate("a red fox", seeds)
    single_config = config.model_copy(update={"batch_size_for_img_gen": 1})
    single = CandidateGenerator(tiny_pipe, resolve(single_config)).generate("a red fox", seeds)
    # Batched matmuls differ from single ones by ~1e-6 in float32: at most one 8-bit level per pixel.
    for a, b in zip(batched, single, strict=True):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1


def test_different_seeds_give_different_images(tiny_pipe, config):
    first, second = CandidateGenerator(tiny_pipe, resolve(config)).generate("a red fox", seed_candidates([1, 2], 2))
    assert np.abs(_pixels(first) - _pixels(second)).mean() > 1.0


def test_text_encoders_run_once_per_prompt_whatever_the_candidates(tiny_pipe, config):
    calls = {"clip": 0, "t5": 0}
    hooks = [
        tiny_pipe.text_encoder.register_forward_hook(lambda *_: calls.__setitem__("clip", calls["clip"] + 1)),
        tiny_pipe.text_encoder_2.register_forward_hook(lambda *_: calls.__setitem__("t5", calls["t5"] + 1)),
    ]
    try:
        generator = CandidateGenerator(tiny_pipe, resolve(config))
        for search_round in (1, 2, 3):
            seeds = round_seeds(0, "a red fox", search_round, 2**search_round)
            generator.generate("a red fox", seed_candidates(seeds, 2))
        generator.generate("a blue bird", seed_candidates([5, 6, 7], 2))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"clip": 2, "t5": 2}
    assert generator.counts.images == 2 + 4 + 8 + 3
    assert generator.counts.pipeline_calls == 1 + 1 + 2 + 1  # batches of 4


def test_image_size_follows_the_config(tiny_pipe, tmp_path):
    config = small_config(tmp_path, pipeline_call_args={"height": 96, "width": 64})
    (image,) = CandidateGenerator(tiny_pipe, resolve(config)).generate("tall", seed_candidates([3], 2))
    assert image.size == (64, 96)


def test_each_pipeline_call_shares_one_step_count(tiny_pipe, config):
    mixed = seed_candidates([1, 2, 3], 1) + seed_candidates([4], 2) + seed_candidates([5, 6, 7, 8, 9], 1)
    assert [[c.noise.seed for c in batch] for batch in plan_batches(mixed, 4)] == [[1, 2, 3], [4], [5, 6, 7, 8], [9]]
    generator = CandidateGenerator(tiny_pipe, resolve(config))
    images = generator.generate("a red fox", mixed)
    assert len(images) == 9 and generator.counts.pipeline_calls == 4
    # A draft (1 step) and a full image (2 steps) of one noise differ.
    draft, full = generator.generate("a red fox", seed_candidates([4], 1) + seed_candidates([4], 2))
    assert np.abs(_pixels(draft) - _pixels(full)).mean() > 0.5


def test_generators_sharing_a_pipeline_never_run_it_at_once(tiny_pipe, config):
    """The scheduler keeps per-call state: two configs on one pipeline must take turns."""
    import threading

    candidates = seed_candidates([1, 2, 3, 4, 5, 6], 2)
    alone = CandidateGenerator(tiny_pipe, resolve(config)).generate("a red fox", candidates)
    results: dict[int, list] = {}
    other = config.model_copy(update={"batch_size_for_img_gen": 2})
    threads = [threading.Thread(target=lambda i=i, c=c: results.__setitem__(i, CandidateGenerator(tiny_pipe, resolve(c))
                                                                           .generate("a red fox", candidates)))
               for i, c in enumerate([config, other, config])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [0, 1, 2]
    for images in results.values():
        assert all(np.abs(_pixels(a) - _pixels(b)).max() <= 1 for a, b in zip(images, alone, strict=True))
