"""The models whose defaults ttsf sets itself, under anything a config gives: FLUX.1-dev keeps
tt-scale-flux's FLUX config, and each offline tiny model has CPU defaults that run in seconds. Any other
model's unset call arguments are its pipeline's own."""

from __future__ import annotations

from typing import Any

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"
TINY_FLUX = "tiny-flux"
# The default model keeps tt-scale-flux's FLUX config (configs/flux.1_dev.json), not FluxPipeline's own
# defaults (28 steps): FLUX runs keep the identities (and folders) they always had.
FLUX_DEV_CALL_ARGS: dict[str, Any] = {
    "height": 1024, "width": 1024, "guidance_scale": 3.5, "num_inference_steps": 50, "max_sequence_length": 512,
}
# The offline tiny FLUX is for CPU runs in seconds: its own defaults, under anything given explicitly.
TINY_FLUX_DEFAULTS: dict[str, Any] = {
    "torch_dtype": "fp32",
    # 64 text tokens, not 512: in the tiny transformer the text, not the image, dominates the cost.
    "pipeline_call_args": {"height": 128, "width": 128, "num_inference_steps": 4, "max_sequence_length": 64},
}
# Offline tiny versions of the newer flow-matching families (ttsf_core/pipelines/families/): CPU
# defaults in seconds, with the guidance their real models' cards recommend (so CFG paths run too).
TINY_FLUX2, TINY_FLUX2_KLEIN, TINY_QWEN_IMAGE, TINY_SD3, TINY_Z_IMAGE = (
    "tiny-flux2", "tiny-flux2-klein", "tiny-qwen-image", "tiny-sd3", "tiny-z-image")
_TINY_SIZE = {"height": 128, "width": 128, "num_inference_steps": 4}
TINY_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # 256 text tokens: the chat template's system message alone is ~200 of the tiny byte-level tokens.
    TINY_FLUX2: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 4.0,
                                                               "max_sequence_length": 256}},
    TINY_FLUX2_KLEIN: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 1.0,
                                                                     "max_sequence_length": 64}},
    TINY_QWEN_IMAGE: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "true_cfg_scale": 4.0,
                                                                    "negative_prompt": " "}},
    TINY_SD3: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 4.5,
                                                             "max_sequence_length": 64}},
    TINY_Z_IMAGE: {"torch_dtype": "fp32", "pipeline_call_args": {**_TINY_SIZE, "guidance_scale": 0.0,
                                                                 "max_sequence_length": 64}},
}
# Call arguments a config leaves unset are the pipeline's own defaults, except for these models.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    DEFAULT_MODEL: {"pipeline_call_args": FLUX_DEV_CALL_ARGS},
    TINY_FLUX: {**TINY_FLUX_DEFAULTS,
                "pipeline_call_args": {**FLUX_DEV_CALL_ARGS, **TINY_FLUX_DEFAULTS["pipeline_call_args"]}},
    **TINY_MODEL_DEFAULTS,
}
