"""Seeds -> initial noises.

Every candidate's seed is derived from (base seed, prompt, round, index) alone, so the same config
draws the same candidates on any machine and in any order. Each candidate's latents are drawn on the
CPU with its own torch.Generator (one generator for a whole batch would tie an image to its batch
position), in float32, then cast to the model's dtype: CPU float32 draws are identical everywhere.
"""

from __future__ import annotations

import hashlib

import torch

SEED_BITS = 63


def candidate_seed(base_seed: int, prompt: str, search_round: int, index: int) -> int:
    """A 63-bit seed that depends only on its arguments (not on Python's salted hash())."""
    key = f"ttsf-noise-v1\x1f{base_seed}\x1f{search_round}\x1f{index}\x1f{prompt}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> (64 - SEED_BITS)


def round_seeds(base_seed: int, prompt: str, search_round: int, pool_size: int) -> list[int]:
    return [candidate_seed(base_seed, prompt, search_round, index) for index in range(pool_size)]


def latent_channels(pipe) -> int:
    """Unpacked latent channels, read from the loaded model's config (FLUX packs 2x2 patches)."""
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet")
    channels = denoiser.config.in_channels
    return channels // 4 if _packs_latents(pipe) else channels


def _packs_latents(pipe) -> bool:
    return hasattr(pipe, "_pack_latents")


def draw_latents(pipe, seeds: list[int], height: int, width: int) -> torch.Tensor:
    """Float32 CPU latents for `seeds`, shaped as the pipeline's own prepare_latents shapes them."""
    channels = latent_channels(pipe)
    drawn = []
    for seed in seeds:
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = pipe.prepare_latents(1, channels, height, width, torch.float32, torch.device("cpu"), generator)
        drawn.append(latents[0] if isinstance(latents, tuple) else latents)
    return torch.cat(drawn, dim=0)


def supports_explicit_latents(pipe) -> bool:
    """Pipelines whose prepare_latents returns ready-to-use latents (no init_noise_sigma rescale)."""
    return _packs_latents(pipe) and hasattr(pipe, "prepare_latents")
