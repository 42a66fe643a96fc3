"""Seeds -> initial noises.

Every seed is derived from (base seed, prompt, round, index, purpose) alone, so the same config
draws the same candidates on any machine and in any order. Each noise is drawn on the CPU with its own
torch.Generator (one generator for a whole batch would tie an image to its batch position), in float32,
then cast to the model's dtype: CPU float32 draws are identical everywhere.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where noise is drawn: reading records never loads it
    import torch

SEED_BITS = 63


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on `parts` (not on Python's salted hash())."""
    key = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> (64 - SEED_BITS)


def candidate_seed(base_seed: int, prompt: str, search_round: int, index: int) -> int:
    """The seed of a fresh noise: candidate `index` of `search_round` for `prompt`."""
    return derive_seed("ttsf-noise-v1", base_seed, search_round, index, prompt)


def round_seeds(base_seed: int, prompt: str, search_round: int, pool_size: int) -> list[int]:
    return [candidate_seed(base_seed, prompt, search_round, index) for index in range(pool_size)]


def latent_channels(pipe) -> int:
    """Unpacked latent channels, read from the loaded model's config (FLUX packs 2x2 patches)."""
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet")
    channels = denoiser.config.in_channels
    return channels // 4 if _packs_latents(pipe) else channels


def _packs_latents(pipe) -> bool:
    from ttsf_core.pipelines.families import FluxFamily, family_of

    return isinstance(family_of(pipe), FluxFamily)


def draw_noise(pipe, seed: int, geometry: dict[str, int]) -> tuple["torch.Tensor", "torch.Generator"]:
    """The float32 CPU latents (1, ...) the pipeline itself would draw for `geometry` (its resolved
    height, width and frames) with a generator seeded `seed`, and that generator as drawing left it."""
    import torch

    from ttsf_core.pipelines.families import family_of

    generator = torch.Generator("cpu").manual_seed(seed)
    return family_of(pipe).draw(pipe, generator, geometry), generator


def draw_latents(pipe, seeds: list[int], height: int, width: int, num_frames: int | None = None) -> "torch.Tensor":
    """Float32 CPU latents for `seeds`, shaped as the pipeline's own prepare_latents shapes them."""
    import torch

    geometry = {"height": height, "width": width, **({"num_frames": num_frames} if num_frames else {})}
    return torch.cat([draw_noise(pipe, seed, geometry)[0] for seed in seeds], dim=0)


def sphere_neighbour(pivot: "torch.Tensor", seed: int, cosine: float) -> "torch.Tensor":
    """A point on the sphere of the pivot's norm at cosine similarity `cosine` to it (Ma et al.'s
    zero-order neighbour, as tt-scale-flux draws it, but seeded): the pivot direction u, a random
    direction w orthogonal to it (a seeded float64 Gaussian with its u-component removed), and
    |pivot| * (cosine * u + sqrt(1 - cosine^2) * w). Computed in float64, returned in float32."""
    import torch

    flat = pivot.reshape(-1).to(torch.float64)
    norm = torch.linalg.vector_norm(flat)
    unit = flat / norm.clamp_min(1e-12)
    direction = torch.randn(flat.numel(), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float64)
    orthogonal = direction - (direction @ unit) * unit
    orthogonal = orthogonal / torch.linalg.vector_norm(orthogonal).clamp_min(1e-12)
    neighbour = norm * (cosine * unit + (1.0 - cosine**2) ** 0.5 * orthogonal)
    return neighbour.reshape(pivot.shape).to(torch.float32)
