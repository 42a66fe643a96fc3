"""Every identity stays what it was for existing output folders: a changed hash would make a run look
for its images, grades and records in new folders and pay for them again. These hashes were taken
from fixed configs; a change that moves one must say so and carry old folders over (`ttsf migrate`)."""

from __future__ import annotations

import pytest

from ttsf_core.resolve import resolve
from ttsf_core.config import build_config
from ttsf_core.storage.records import RunLayout
from ttsf_core.storage.store import Store

TINY = {"pretrained_model_name_or_path": "tiny-flux", "verifier_args": {"name": "imagestats"}}
PINNED = [
    ({}, "output/FLUX_1_dev/gemini/overall_score/b878d450bf9e", "FLUX_1_dev-9a7b3ba5d77b", "gemini-8e6cc1299194"),
    ({"verifier_args": {"name": "gemini", "model_name": "gemini-2.5-flash"}},
     "output/FLUX_1_dev/gemini/overall_score/5ca17a78df63", "FLUX_1_dev-9a7b3ba5d77b", "gemini-c5a68b43491b"),
    ({"verifier_args": {"name": "gemini", "model_name": "gemini-2.0-flash", "seed": 7}},
     "output/FLUX_1_dev/gemini/overall_score/bbbd379da4cb", "FLUX_1_dev-9a7b3ba5d77b", "gemini-164371d6c0c4"),
    (TINY | {"pipeline_call_args": {"height": 64, "width": 64, "num_inference_steps": 2}},
     "output/tiny_flux/imagestats/overall_score/4f97fd0e35f2", "tiny_flux-e6efa632aa81", "imagestats-cb3d860f6fa2"),
    (TINY | {"search_args": {"search_method": "zero-order", "threshold": 0.9, "num_neighbors": 3, "draft_steps": 2,
                             "draft_keep": 1}},
     "output/tiny_flux/imagestats/overall_score/448eb9db5d76", "tiny_flux-f646a08cec9a", "imagestats-cb3d860f6fa2"),
    (TINY | {"seed": 5, "verifier_args": {"name": "clip,imagestats", "ensemble": "mean_score"},
             "search_args": {"initial_pool_size": 3}},
     "output/tiny_flux/clip_imagestats/ensemble/5a8ba1e56b92", "tiny_flux-f646a08cec9a", "clip_imagestats-ffec163213f5"),
    ({"pretrained_model_name_or_path": "tiny-flux", "quantize": "fp8", "vae_tiling": True,
      "verifier_args": {"name": "openai", "model_name": "gpt-4o-mini", "choice_of_metric": "accuracy_to_prompt"},
      "export_args": {"fps": 8, "grade_frames": 2}},
     "output/tiny_flux/openai/accuracy_to_prompt/141c61517a4d", "tiny_flux-2f1cb848ae40", "openai-8c803cea94e6"),
]


@pytest.mark.parametrize("data,run_dir,images,grades", PINNED, ids=[str(i) for i in range(len(PINNED))])
def test_identities_of_fixed_configs_never_move(data, run_dir, images, grades):
    config = build_config(data)
    store = Store(resolve(config))
    assert (str(RunLayout(resolve(config)).run_dir), store.images_dir.name, store.grades_dir.name) == (run_dir, images, grades)
