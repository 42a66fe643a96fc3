"""Speed options: what each does to pixels decides whether it is part of the images' identity, and
each is refused up front, in one line, where this machine cannot honour it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import small_config
from ttsf_core.config import ConfigError
from ttsf_core.engine.generate import CandidateGenerator, seed_candidates
from ttsf_core.pipelines import load_pipeline
from ttsf_core.pipelines.speed import check_speed_options
from ttsf_core.resolve import resolve


def _images(config):
    generator = CandidateGenerator(load_pipeline(config), resolve(config))
    return [np.asarray(image, dtype=np.int16) for image in generator.generate("a red fox", seed_candidates([1, 2], 2))]


def test_compile_and_the_attention_backend_leave_pixels_and_identity_as_they_are(tmp_path, tiny_flux_dir):
    plain = small_config(tmp_path, device="cpu")
    fast = small_config(tmp_path, device="cpu", compile=True, attention_backend="native")
    assert resolve(fast).identity_hash == resolve(plain).identity_hash
    assert resolve(fast).generation_identity == resolve(plain).generation_identity
    for a, b in zip(_images(plain), _images(fast), strict=True):
        assert np.abs(a - b).max() <= 1  # regional compilation and the native backend: the same function


def test_fp8_and_vae_tiling_are_other_images(tmp_path):
    plain = small_config(tmp_path)
    for changed in (small_config(tmp_path, quantize="fp8"), small_config(tmp_path, vae_tiling=True)):
        assert resolve(changed).generation_identity != resolve(plain).generation_identity
        assert resolve(changed).identity_hash != resolve(plain).identity_hash


def test_vae_tiling_runs(tmp_path, tiny_flux_dir):
    (image, _) = _images(small_config(tmp_path, device="cpu", vae_tiling=True))
    assert image.shape == (64, 64, 3)


@pytest.mark.parametrize("fields,device,message", [
    ({"quantize": "fp8"}, "cpu", "--quantize (quantize): received 'fp8' (this run is on cpu), allowed: none, or fp8"),
    ({"attention_backend": "warp"}, "cpu", "--attention_backend (attention_backend): received 'warp', allowed: one "
                                           "of "),
    ({"attention_backend": "_native_cudnn"}, "cpu", "received '_native_cudnn' (it needs a CUDA device; this run is "
                                                    "on cpu)"),
    ({"attention_backend": "flash"}, "cpu", "received 'flash' (it needs a CUDA device"),
])
def test_options_this_machine_cannot_honour_are_refused_up_front(fields, device, message, tmp_path):
    with pytest.raises(ConfigError) as caught:
        check_speed_options(small_config(tmp_path, **fields), device)
    assert message in str(caught.value) and "\n" not in str(caught.value)
