"""Wan: video latents (C, (F-1)/4+1, H/8, W/8), used as given; frames and size rounded as the pipeline does."""

from __future__ import annotations

from ttsf_core.pipelines.families.base import Family, lcm


class WanFamily(Family):
    name = "wan"
    classes = ("WanPipeline",)
    video = True
    explicit = True
    float32_latents = True
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds")
    hub_ids = ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers",)

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
        return lcm(16, int(vae.get("scale_factor_spatial") or 8) * int(patch[1]))


FAMILIES = (WanFamily(),)
