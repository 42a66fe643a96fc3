"""Pipeline families: what differs between diffusers pipelines when ttsf draws their noise and calls them.

For every family ttsf knows, a candidate's initial noise is drawn by ttsf (on the CPU, float32, one
torch.Generator per noise) in the exact shape the pipeline's own prepare_latents makes, read from the
loaded model: latent channels from the transformer/UNet config, spatial scale from the VAE, temporal
compression for video, 2x2 packing for FLUX and LTX-Video's patch packing. It is the very noise the
pipeline would draw itself with that generator (same shape, same generator calls), and it is passed
as `latents=`, so a noise can be walked on the sphere (zero-order neighbours) for every family. SD-style
pipelines (SD 1.5, SDXL, PixArt) multiply given latents by scheduler.init_noise_sigma themselves, so they
get the unscaled Gaussian; FLUX, LTX-Video and Wan use given latents as they are. The generator, left
where drawing the noise left it, goes with the call too (stochastic schedulers, LTX-Video's decode-time
noise), so a fresh seed's image is the pipeline's own `generator=torch.Generator().manual_seed(seed)` image.

Each prompt is encoded once (its `encode_prompt`, with the negative prompt and guidance the call would
use) and the embeddings reused for every candidate. A class ttsf does not know falls back to the prompt
text and one generator per candidate in every call (correct, slower; no neighbour noises).
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

# encode_prompt arguments that come from the call's arguments (the rest are ttsf's: prompt, device, ...).
_ENCODE_ARGS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3", "max_sequence_length", "clip_skip",
                "clean_caption")
# Call arguments an encoding replaces: passing them beside the embeddings is an error in diffusers.
_CONSUMED_BY_ENCODING = ("prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3")

ConfigReader = Callable[[str], dict]  # subfolder -> that component's config.json ({} when absent)


class Family:
    """A pipeline family ttsf does not know: prompt text and a generator per candidate in every call."""

    name = "generic"
    classes: tuple[str, ...] = ()
    video = False
    explicit = False  # ttsf draws the latents and passes them (else the pipeline draws its own)
    # encode_prompt's return values, each named by the __call__ keyword it is passed as (None: dropped)
    encode_outputs: tuple[str | None, ...] = ()
    float32_latents = False  # the pipeline makes its latents in float32 whatever the model's dtype
    pass_generators = True

    def geometry(self, pipe, args: dict[str, Any]) -> dict[str, int]:
        """The pixel size (and frames) of the latents the pipeline will use with these call arguments."""
        return {}

    def draw(self, pipe, generator: "torch.Generator", geometry: dict[str, int]) -> "torch.Tensor":
        raise NotImplementedError(f"{type(pipe).__name__} draws its own noise")

    def multiple(self, read: ConfigReader, args: dict[str, Any]) -> int:
        """What height and width must be a multiple of (from the component configs, no weights)."""
        return _vae_scale(read)

    def do_cfg(self, pipe, args: dict[str, Any]) -> bool:
        guidance = args.get("guidance_scale")
        unet = getattr(pipe, "unet", None)
        distilled = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
        return guidance is not None and guidance > 1 and not distilled

    def encode(self, pipe, prompt: str, args: dict[str, Any], device) -> dict[str, Any]:
        """The call's prompt keywords for `prompt`: its embeddings (once per prompt), or the text itself."""
        if not self.encode_outputs:
            return {"prompt": prompt}
        return self._encoded(pipe, prompt, args, device, self.encode_outputs)

    def _encoded(self, pipe, prompt, args, device, outputs) -> dict[str, Any]:
        import torch

        kwargs = {}
        for name in inspect.signature(pipe.encode_prompt).parameters:
            if name == "prompt":
                kwargs[name] = prompt
            elif name in ("prompt_2", "prompt_3"):
                kwargs[name] = args.get(name) or prompt
            elif name == "device":
                kwargs[name] = device
            elif name in ("num_images_per_prompt", "num_videos_per_prompt"):
                kwargs[name] = 1
            elif name == "do_classifier_free_guidance":
                kwargs[name] = self.do_cfg(pipe, args)
            elif name in _ENCODE_ARGS and name in args:
                kwargs[name] = args[name]
        with torch.no_grad():
            encoded = pipe.encode_prompt(**kwargs)
        return {name: value for name, value in zip(outputs, encoded) if name is not None and value is not None}

    def consumed(self) -> tuple[str, ...]:
        """Call arguments the encoding took in (never passed beside it)."""
        return _CONSUMED_BY_ENCODING if self.encode_outputs else ()

    def frames_per_second(self, args: dict[str, Any]) -> int:
        return 16


class FluxFamily(Family):
    name = "flux"
    classes = ("FluxPipeline",)
    explicit = True
    encode_outputs = ("prompt_embeds", "pooled_prompt_embeds", None)
    pass_generators = False  # nothing after the noise draws from it (and FLUX calls stay as they were)

    def geometry(self, pipe, args):
        default = pipe.default_sample_size * pipe.vae_scale_factor
        return {"height": args.get("height") or default, "width": args.get("width") or default}

    def draw(self, pipe, generator, geometry):
        import torch

        channels = pipe.transformer.config.in_channels // 4  # 2x2 patches packed into channels
        latents = pipe.prepare_latents(1, channels, geometry["height"], geometry["width"], torch.float32,
                                       torch.device("cpu"), generator)
        return latents[0] if isinstance(latents, tuple) else latents

    def multiple(self, read, args):
        return 2 * _vae_scale(read)  # the pipeline's own check: vae_scale_factor * 2

    def encode(self, pipe, prompt, args, device):
        encoding = self._encoded(pipe, prompt, args, device, self.encode_outputs)
        # True CFG (true_cfg_scale > 1 with a negative prompt) encodes the negative prompt the same way.
        negative = args.get("negative_prompt")
        if (negative or args.get("negative_prompt_2")) and (args.get("true_cfg_scale") or 1) > 1:
            negative_args = {**args, "prompt_2": args.get("negative_prompt_2") or negative}
            encoding |= self._encoded(pipe, negative or args.get("negative_prompt_2"), negative_args, device,
                                      ("negative_prompt_embeds", "negative_pooled_prompt_embeds", None))
        return encoding


class StableDiffusionFamily(Family):
    """SD 1.x/2.x: a UNet over (C, H/8, W/8) latents, scaled by init_noise_sigma inside the pipeline."""

    name = "stable-diffusion"
    classes = ("StableDiffusionPipeline",)
    explicit = True
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds")

    def geometry(self, pipe, args):
        default = pipe.unet.config.sample_size * pipe.vae_scale_factor
        return {"height": args.get("height") or default, "width": args.get("width") or default}

    def draw(self, pipe, generator, geometry):
        return _gaussian(pipe.unet.config.in_channels, geometry, pipe.vae_scale_factor, generator)

    def multiple(self, read, args):
        return math.lcm(8, _vae_scale(read))  # the pipeline checks 8 whatever the VAE


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "stable-diffusion-xl"
    classes = ("StableDiffusionXLPipeline",)
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                      "negative_pooled_prompt_embeds")


class PixArtSigmaFamily(Family):
    """A transformer over (C, H/8, W/8) latents scaled by init_noise_sigma; with resolution binning (the
    default) the latents are those of the nearest aspect-ratio bin and the image is resized back."""

    name = "pixart-sigma"
    classes = ("PixArtSigmaPipeline",)
    explicit = True
    encode_outputs = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                      "negative_prompt_attention_mask")

    def geometry(self, pipe, args):
        sample_size = pipe.transformer.config.sample_size
        height = args.get("height") or sample_size * pipe.vae_scale_factor
        width = args.get("width") or sample_size * pipe.vae_scale_factor
        if args.get("use_resolution_binning", True):
            height, width = pipe.image_processor.classify_height_width_bin(height, width,
                                                                           ratios=_pixart_bins(sample_size))
        return {"height": height, "width": width}

    def draw(self, pipe, generator, geometry):
        return _gaussian(pipe.transformer.config.in_channels, geometry, pipe.vae_scale_factor, generator)

    def multiple(self, read, args):
        if args.get("use_resolution_binning", True):
            return 1  # any size: the latents are the nearest bin's, the image is resized back
        return math.lcm(8, _vae_scale(read) * int(read("transformer").get("patch_size") or 2))


class LTXVideoFamily(Family):
    """Video latents (C, (F-1)/t+1, H/s, W/s) packed into tokens by the pipeline's own prepare_latents,
    used as given; decoding draws noise from the call's generators (timestep-conditioned VAE)."""

    name = "ltx-video"
    classes = ("LTXPipeline",)
    video = True
    explicit = True
    float32_latents = True
    encode_outputs = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                      "negative_prompt_attention_mask")

    def geometry(self, pipe, args):
        return {"height": args["height"], "width": args["width"], "num_frames": args["num_frames"]}

    def draw(self, pipe, generator, geometry):
        import torch

        return pipe.prepare_latents(1, pipe.transformer.config.in_channels, geometry["height"], geometry["width"],
                                    geometry["num_frames"], torch.float32, torch.device("cpu"), generator)

    def multiple(self, read, args):
        vae, transformer = read("vae"), read("transformer")
        ratio = vae.get("spatial_compression_ratio") or \
            int(vae.get("patch_size", 4)) * 2 ** sum(bool(s) for s in vae.get("spatio_temporal_scaling", (1, 1, 1)))
        return math.lcm(32, int(ratio) * int(transformer.get("patch_size") or 1))

    def frames_per_second(self, args):
        return int(args.get("frame_rate") or 25)


class WanFamily(Family):
    """Video latents (C, (F-1)/4+1, H/8, W/8), used as given; frames and size rounded as the pipeline does."""

    name = "wan"
    classes = ("WanPipeline",)
    video = True
    explicit = True
    float32_latents = True
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds")

    def geometry(self, pipe, args):
        temporal = pipe.vae_scale_factor_temporal
        frames = args["num_frames"]
        if frames % temporal != 1:
            frames = frames // temporal * temporal + 1
        denoiser = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        _, patch_h, patch_w = denoiser.config.patch_size
        step_h, step_w = pipe.vae_scale_factor_spatial * patch_h, pipe.vae_scale_factor_spatial * patch_w
        return {"height": args["height"] // step_h * step_h, "width": args["width"] // step_w * step_w,
                "num_frames": max(frames, 1)}

    def draw(self, pipe, generator, geometry):
        import torch

        denoiser = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        return pipe.prepare_latents(1, denoiser.config.in_channels, geometry["height"], geometry["width"],
                                    geometry["num_frames"], torch.float32, torch.device("cpu"), generator)

    def multiple(self, read, args):
        vae, transformer = read("vae"), read("transformer") or read("transformer_2")
        patch = transformer.get("patch_size") or (1, 2, 2)
        return math.lcm(16, int(vae.get("scale_factor_spatial") or 8) * int(patch[1]))


GENERIC = Family()
FAMILIES = (FluxFamily(), StableDiffusionFamily(), StableDiffusionXLFamily(), PixArtSigmaFamily(),
            LTXVideoFamily(), WanFamily())
_BY_CLASS = {name: family for family in FAMILIES for name in family.classes}


def family_of(pipeline: object | type | str) -> Family:
    """The family of a pipeline (an instance, its class, or a class name); subclasses count."""
    if isinstance(pipeline, str):
        return _BY_CLASS.get(pipeline, GENERIC)
    cls = pipeline if isinstance(pipeline, type) else type(pipeline)
    for klass in cls.__mro__:
        if klass.__name__ in _BY_CLASS:
            return _BY_CLASS[klass.__name__]
    return GENERIC


def _vae_scale(read: ConfigReader) -> int:
    return 2 ** (len(read("vae").get("block_out_channels", [0])) - 1)


def _gaussian(channels: int, geometry: dict[str, int], scale: int, generator) -> "torch.Tensor":
    """What an SD-style prepare_latents draws before its init_noise_sigma scaling."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, channels, int(geometry["height"]) // scale, int(geometry["width"]) // scale)
    return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)


def _pixart_bins(sample_size: int) -> dict:
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
        ASPECT_RATIO_256_BIN,
        ASPECT_RATIO_512_BIN,
        ASPECT_RATIO_1024_BIN,
    )
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

    bins = {256: ASPECT_RATIO_2048_BIN, 128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}
    if sample_size not in bins:
        raise ValueError(f"pipeline_call_args.use_resolution_binning: received true for a transformer of sample size "
                         f"{sample_size}, allowed: false (diffusers has aspect-ratio bins for sample sizes "
                         f"{', '.join(map(str, sorted(bins)))} only)")
    return bins[sample_size]
