import numpy as np
import pytest

from conftest import small_config
from ttsf_core.generate import CandidateGenerator
from ttsf_core.noise import round_seeds


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def config(tmp_path):
    return small_config(tmp_path, batch_size_for_img_gen=4)


def test_batched_generation_equals_one_by_one(tiny_pipe, config):
    seeds = round_seeds(0, "a red fox", 1, 6)
    batched = CandidateGenerator(tiny_pipe, config).generate("a red fox", seeds)
    single_config = config.model_copy(update={"batch_size_for_img_gen": 1})
    single = CandidateGenerator(tiny_pipe, single_config).generate("a red fox", seeds)
    # Batched matmuls differ from single ones by ~1e-6 in float32: at most one 8-bit level per pixel.
    for a, b in zip(batched, single, strict=True):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1


def test_different_seeds_give_different_images(tiny_pipe, config):
    first, second = CandidateGenerator(tiny_pipe, config).generate("a red fox", [1, 2])
    assert np.abs(_pixels(first) - _pixels(second)).mean() > 1.0


def test_text_encoders_run_once_per_prompt_whatever_the_candidates(tiny_pipe, config):
    calls = {"clip": 0, "t5": 0}
    hooks = [
        tiny_pipe.text_encoder.register_forward_hook(lambda *_: calls.__setitem__("clip", calls["clip"] + 1)),
        tiny_pipe.text_encoder_2.register_forward_hook(lambda *_: calls.__setitem__("t5", calls["t5"] + 1)),
    ]
    try:
        generator = CandidateGenerator(tiny_pipe, config)
        for search_round in (1, 2, 3):
            generator.generate("a red fox", round_seeds(0, "a red fox", search_round, 2**search_round))
        generator.generate("a blue bird", [5, 6, 7])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"clip": 2, "t5": 2}
    assert generator.counts.images == 2 + 4 + 8 + 3
    assert generator.counts.pipeline_calls == 1 + 1 + 2 + 1  # batches of 4


def test_image_size_follows_the_config(tiny_pipe, tmp_path):
    config = small_config(tmp_path, pipeline_call_args={"height": 96, "width": 64})
    (image,) = CandidateGenerator(tiny_pipe, config).generate("tall", [3])
    assert image.size == (64, 96)
