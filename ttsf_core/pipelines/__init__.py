"""Loading diffusers text-to-image pipelines (real ones from the hub, or the offline tiny FLUX)."""

from ttsf_core.pipelines.loader import (
    check_devices,
    check_resolution,
    load_pipeline,
    prompt_length_warnings,
    resolve_model_path,
)

__all__ = ["check_devices", "check_resolution", "load_pipeline", "prompt_length_warnings", "resolve_model_path"]
