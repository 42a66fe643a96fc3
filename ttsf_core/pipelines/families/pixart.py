"""PixArt-Sigma: a transformer over (C, H/8, W/8) latents scaled by init_noise_sigma; with resolution
binning (the default) the latents are those of the nearest aspect-ratio bin and the image is resized back."""

from __future__ import annotations

from ttsf_core.pipelines.families.base import Family, gaussian, lcm, vae_scale


class PixArtSigmaFamily(Family):
    name = "pixart-sigma"
    classes = ("PixArtSigmaPipeline",)
    explicit = True
    encode_outputs = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                      "negative_prompt_attention_mask")
    hub_ids = ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",)

    def geometry(self, pipe, args):
        sample_size = pipe.transformer.config.sample_size
        height = args.get("height") or sample_size * pipe.vae_scale_factor
        width = args.get("width") or sample_size * pipe.vae_scale_factor
        if args.get("use_resolution_binning", True):
            height, width = pipe.image_processor.classify_height_width_bin(height, width,
                                                                           ratios=_pixart_bins(sample_size))
        return {"height": height, "width": width}

    def draw(self, pipe, generator, geometry):
        return gaussian(pipe.transformer.config.in_channels, geometry, pipe.vae_scale_factor, generator)

    def multiple(self, read, args):
        if args.get("use_resolution_binning", True):
            return 1  # any size: the latents are the nearest bin's, the image is resized back
        return lcm(8, vae_scale(read) * int(read("transformer").get("patch_size") or 2))


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


FAMILIES = (PixArtSigmaFamily(),)
