"""SD 1.x/2.x and SDXL: a UNet over (C, H/8, W/8) latents, scaled by init_noise_sigma inside the pipeline."""

from __future__ import annotations

from ttsf_core.pipelines.families.base import Family, gaussian, lcm, vae_scale


class StableDiffusionFamily(Family):
    name = "stable-diffusion"
    classes = ("StableDiffusionPipeline",)
    explicit = True
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds")
    hub_ids = ("stable-diffusion-v1-5/stable-diffusion-v1-5",)

    def geometry(self, pipe, args):
        default = pipe.unet.config.sample_size * pipe.vae_scale_factor
        return {"height": args.get("height") or default, "width": args.get("width") or default}

    def draw(self, pipe, generator, geometry):
        return gaussian(pipe.unet.config.in_channels, geometry, pipe.vae_scale_factor, generator)

    def multiple(self, read, args):
        return lcm(8, vae_scale(read))  # the pipeline checks 8 whatever the VAE


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "stable-diffusion-xl"
    classes = ("StableDiffusionXLPipeline",)
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                      "negative_pooled_prompt_embeds")
    hub_ids = ("stabilityai/stable-diffusion-xl-base-1.0",)


FAMILIES = (StableDiffusionFamily(), StableDiffusionXLFamily())
