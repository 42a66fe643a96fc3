"""Stable Diffusion 3 / 3.5 (StableDiffusion3Pipeline): an MMDiT over (C, H/8, W/8) latents, flow matching.

Latents: unpacked (1, transformer.in_channels, H/8, W/8), used as given (no init_noise_sigma scaling:
the pipeline's prepare_latents returns given latents as they are). ttsf draws them with that very
prepare_latents. Prompt: two CLIPs (pooled) and T5 (optional), encoded once with their negatives when
guidance_scale > 1 (the pipeline's own rule), prompt_2/prompt_3 and negative_prompt_2/3 included.
"""

from __future__ import annotations

from ttsf_core.model_defaults import TINY_SD3
from ttsf_core.pipelines.families.base import Family, vae_scale


class StableDiffusion3Family(Family):
    name = "stable-diffusion-3"
    classes = ("StableDiffusion3Pipeline",)
    explicit = True
    pass_generators = False  # nothing after the noise draws from it (FlowMatchEuler is deterministic)
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                      "negative_pooled_prompt_embeds")
    hub_ids = ("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large-turbo",
               "stabilityai/stable-diffusion-3.5-medium")
    tiny = TINY_SD3

    def geometry(self, pipe, args):
        default = pipe.default_sample_size * pipe.vae_scale_factor
        return {"height": args.get("height") or default, "width": args.get("width") or default}

    def draw(self, pipe, generator, geometry):
        import torch

        return pipe.prepare_latents(1, pipe.transformer.config.in_channels, geometry["height"], geometry["width"],
                                    torch.float32, torch.device("cpu"), generator)

    def multiple(self, read, args):
        # The pipeline's check: vae_scale_factor * transformer patch_size.
        return vae_scale(read) * int(read("transformer").get("patch_size") or 2)

    def build_tiny(self):
        """SD3.5's geometry (16 latent channels, an 8x VAE, patch size 2) at toy widths; two tiny CLIPs
        with projection and the tiny T5 of tiny-flux (diffusers' own SD3 test sizes)."""
        import torch
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
            StableDiffusion3Pipeline,
        )
        from transformers import CLIPTextModelWithProjection

        from ttsf_core.pipelines import tiny

        clip, tokenizer = tiny._tiny_clip()
        torch.manual_seed(tiny.BUILD_SEED)
        text_encoder = CLIPTextModelWithProjection(clip.config)
        torch.manual_seed(tiny.BUILD_SEED + 1)
        text_encoder_2 = CLIPTextModelWithProjection(clip.config)
        _, tokenizer_2 = tiny._tiny_clip()
        text_encoder_3, tokenizer_3 = tiny._tiny_t5()
        latent_channels = 16
        torch.manual_seed(tiny.BUILD_SEED)
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=latent_channels, out_channels=latent_channels, num_layers=1,
            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
            joint_attention_dim=text_encoder_3.config.d_model,
            pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
            pos_embed_max_size=64)
        torch.manual_seed(tiny.BUILD_SEED)
        blocks = (4, 4, 4, 4)
        vae = AutoencoderKL(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                            up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=1,
                            latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                            use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305, sample_size=32)
        return tiny.evaluated(StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3))


FAMILIES = (StableDiffusion3Family(),)
