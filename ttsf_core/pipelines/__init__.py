"""Loading diffusers text-to-image pipelines (real ones from the hub, or the offline tiny FLUX)."""

from ttsf_core.pipelines.loader import load_pipeline, resolve_model_path, check_resolution

__all__ = ["load_pipeline", "resolve_model_path", "check_resolution"]
