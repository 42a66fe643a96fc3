"""ttsf_core: inference-time scaling for text-to-image diffusion (pure library, no Prefect)."""

__version__ = "0.1.0"
