"""Pipeline families: what differs between diffusers pipelines when ttsf draws their noise and calls them.

One module of this package per family (flux, flux2, qwen_image, sd3, z_image, stable_diffusion, pixart,
ltx_video, wan); each defines its Family subclasses and lists them in a module-level `FAMILIES`. Adding a
family is adding a module: this registry finds every module of the package.

For every family ttsf knows, a candidate's initial noise is drawn by ttsf (on the CPU, float32, one
torch.Generator per noise) in the exact shape the pipeline's own prepare_latents makes, read from the
loaded model: latent channels from the transformer/UNet config, spatial scale from the VAE, temporal
compression for video, the family's packing (FLUX's 2x2 tokens, FLUX.2's patchified channels, Qwen-Image's
packed frames, LTX-Video's patch tokens). It is the very noise the pipeline would draw itself with that
generator (same shape, same generator calls), and it is passed as `latents=`, so a noise can be walked on
the sphere (zero-order neighbours) for every family. SD-style pipelines (SD 1.5, SDXL, PixArt) multiply
given latents by scheduler.init_noise_sigma themselves, so they get the unscaled Gaussian; the
flow-matching ones use given latents as they are. The generator, left where drawing the noise left it,
goes with the call too (stochastic schedulers, LTX-Video's decode-time noise), so a fresh seed's image is
the pipeline's own `generator=torch.Generator("cpu").manual_seed(seed)` image.

Each prompt is encoded once (its `encode_prompt`, with the negative prompt and guidance the call would
use) and the embeddings reused for every candidate. A class ttsf does not know falls back to the prompt
text and one generator per candidate in every call (correct, slower; no neighbour noises).
"""

from __future__ import annotations

import importlib
import pkgutil

from ttsf_core.pipelines.families.base import GENERIC, Family, declared_scheduler, uses_flow_matching


def _discover() -> tuple[Family, ...]:
    found: list[Family] = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if module.name == "base" or module.name.startswith("_"):
            continue
        found.extend(importlib.import_module(f"{__name__}.{module.name}").FAMILIES)
    return tuple(found)


FAMILIES: tuple[Family, ...] = _discover()
_BY_CLASS: dict[str, Family] = {}
for _family in FAMILIES:
    for _name in _family.classes:
        if _name in _BY_CLASS:
            raise RuntimeError(f"{_name} is claimed by two families: {_BY_CLASS[_name].name} and {_family.name}")
        _BY_CLASS[_name] = _family
_BY_TINY: dict[str, Family] = {family.tiny: family for family in FAMILIES if family.tiny}


def family_of(pipeline: object | type | str) -> Family:
    """The family of a pipeline (an instance, its class, or a class name); subclasses count."""
    if isinstance(pipeline, str):
        return _BY_CLASS.get(pipeline, GENERIC)
    cls = pipeline if isinstance(pipeline, type) else type(pipeline)
    for klass in cls.__mro__:
        if klass.__name__ in _BY_CLASS:
            return _BY_CLASS[klass.__name__]
    return GENERIC


def family_of_tiny(name: str) -> Family | None:
    """The family whose offline tiny version `--model name` selects (tiny-flux, tiny-flux2, ...)."""
    return _BY_TINY.get(name)


def tiny_models() -> dict[str, Family]:
    return dict(_BY_TINY)


def support_table() -> list[dict[str, object]]:
    """What each family supports, read from the families themselves (the README's table is checked
    against this): noise search, zero-order (neighbour noises), drafts, flow matching (declared
    scheduler), path search / FK steering (flow matching, images, a default sigma list to start part
    way: `Family.drives_paths`), video."""
    rows = []
    for family in FAMILIES:
        paths = "yes" if family.drives_paths else "no"
        rows.append({"family": family.name, "classes": family.classes, "noise_search": True,
                     "zero_order": family.neighbour_noises, "drafts": True, "flow_matching": family.flow_matching,
                     "paths": paths, "fk": paths, "video": family.video,
                     "tiny": family.tiny})
    return rows


# The families by name, as modules elsewhere import them.
from ttsf_core.pipelines.families.flux import FluxFamily  # noqa: E402
from ttsf_core.pipelines.families.flux2 import Flux2Family, Flux2KleinFamily  # noqa: E402
from ttsf_core.pipelines.families.ltx_video import LTXVideoFamily  # noqa: E402
from ttsf_core.pipelines.families.pixart import PixArtSigmaFamily  # noqa: E402
from ttsf_core.pipelines.families.qwen_image import QwenImage21Family, QwenImageFamily  # noqa: E402
from ttsf_core.pipelines.families.sd3 import StableDiffusion3Family  # noqa: E402
from ttsf_core.pipelines.families.stable_diffusion import StableDiffusionFamily, StableDiffusionXLFamily  # noqa: E402
from ttsf_core.pipelines.families.wan import WanFamily  # noqa: E402
from ttsf_core.pipelines.families.z_image import ZImageFamily  # noqa: E402

__all__ = [
    "FAMILIES", "GENERIC", "Family", "Flux2Family", "Flux2KleinFamily", "FluxFamily", "LTXVideoFamily",
    "PixArtSigmaFamily", "QwenImage21Family", "QwenImageFamily", "StableDiffusion3Family", "StableDiffusionFamily",
    "StableDiffusionXLFamily", "WanFamily", "ZImageFamily", "declared_scheduler", "family_of", "family_of_tiny",
    "support_table", "tiny_models", "uses_flow_matching",
]
