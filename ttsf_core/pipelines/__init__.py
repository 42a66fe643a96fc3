"""Loading diffusers text-to-image pipelines (real ones from the hub, or an offline tiny version: tiny-flux,
tiny-flux2, tiny-flux2-klein, tiny-qwen-image, tiny-sd3, tiny-z-image), and their families (families/)."""

from ttsf_core.pipelines.loader import (
    check_devices,
    check_resolution,
    load_pipeline,
    prompt_length_warnings,
    resolve_model_path,
)

__all__ = ["check_devices", "check_resolution", "load_pipeline", "prompt_length_warnings", "resolve_model_path"]
