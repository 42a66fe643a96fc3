"""Z-Image (ZImagePipeline: a single-stream DiT with a Qwen3 text encoder; Z-Image-Turbo is 8-step distilled).

Latents: unpacked (1, C, H/8, W/8) drawn in float32 whatever the model's dtype, used as given (the
pipeline checks their shape). Prompt: Qwen3's chat template, the second-to-last hidden state of each
prompt's valid tokens: a *list* of variable-length embeddings, which a batch repeats as a list.
Classifier-free guidance runs when guidance_scale > 0 (not > 1: Z-Image's own rule), against
negative_prompt or the empty prompt; ttsf encodes that once too. Height and width default to 1024
(the pipeline's own fixed default) and must be multiples of vae_scale_factor * 2.
"""

from __future__ import annotations

from ttsf_core.model_defaults import TINY_Z_IMAGE
from ttsf_core.pipelines.families.base import Family, vae_scale

_DEFAULT_SIZE = 1024  # ZImagePipeline.__call__: `height = height or 1024` (not read from any config)


class ZImageFamily(Family):
    name = "z-image"
    classes = ("ZImagePipeline",)
    explicit = True
    float32_latents = True
    pass_generators = False  # nothing after the noise draws from it
    encode_outputs = ("prompt_embeds", "negative_prompt_embeds")
    hub_ids = ("Tongyi-MAI/Z-Image-Turbo",)
    tiny = TINY_Z_IMAGE

    def path_sigmas(self, pipe, steps):
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        return get_default_z_image_sigmas(steps)  # what ZImagePipeline.__call__ builds when given no sigmas

    def geometry(self, pipe, args):
        return {"height": args.get("height") or _DEFAULT_SIZE, "width": args.get("width") or _DEFAULT_SIZE}

    def draw(self, pipe, generator, geometry):
        import torch

        return pipe.prepare_latents(1, pipe.transformer.config.in_channels, geometry["height"], geometry["width"],
                                    torch.float32, torch.device("cpu"), generator)

    def multiple(self, read, args):
        return 2 * vae_scale(read)  # the pipeline raises for anything else

    def do_cfg(self, pipe, args):
        return (args.get("guidance_scale") or 0) > 0  # ZImagePipeline.do_classifier_free_guidance

    def encode(self, pipe, prompt, args, device):
        encoding = self._encoded(pipe, prompt, args, device, self.encode_outputs)
        return {name: value for name, value in encoding.items() if len(value)}  # no CFG: an empty negative list

    def build_tiny(self):
        """Z-Image's geometry (16 latent channels, an 8x VAE, patch 2) at toy widths; a two-layer Qwen3
        text encoder and the local chat tokenizer (diffusers' own Z-Image test sizes). The pad tokens
        the transformer creates with torch.empty are set to ones, as diffusers' test does, so a build is
        the same every time."""
        import torch
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
        from transformers import Qwen3Config, Qwen3Model

        from ttsf_core.pipelines import tiny

        tokenizer = tiny.chat_tokenizer()
        ids = tiny.special_ids(tokenizer)
        torch.manual_seed(tiny.BUILD_SEED)
        text_encoder = Qwen3Model(Qwen3Config(
            hidden_size=tiny.TEXT_WIDTH, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024,
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]))
        latent_channels = 16
        torch.manual_seed(tiny.BUILD_SEED)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=latent_channels, dim=32, n_layers=1,
            n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=tiny.TEXT_WIDTH,
            rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
        with torch.no_grad():
            transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
            transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
        torch.manual_seed(tiny.BUILD_SEED)
        blocks = (4, 4, 4, 4)
        vae = AutoencoderKL(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                            up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=1,
                            latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                            use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159, sample_size=32)
        return tiny.evaluated(ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                             text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer))


FAMILIES = (ZImageFamily(),)
