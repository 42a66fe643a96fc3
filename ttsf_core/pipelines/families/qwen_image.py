"""Qwen-Image (QwenImagePipeline: Qwen2.5-VL text encoder, Wan-style VAE) and Qwen-Image 2.1
(QwenImage21Pipeline: Qwen3-VL text encoder through its processor, a 16x VAE).

Latents: Qwen-Image draws (1, C, H/8, W/8) noise (one frame) and packs 2x2 patches into
(H/16 * W/16, 4C) tokens; 2.1 draws (1, C, H/16, W/16) and lays it out as (H/16 * W/16, C) tokens. Both
use given latents as they are, so ttsf passes what their prepare_latents returns.

Prompt: encoded once with its attention mask. True CFG runs when true_cfg_scale > 1 *and* a negative
prompt is given (even " ", as the model card recommends); ttsf then encodes the negative prompt once too.
An all-valid mask is passed as ones (the pipelines treat it as no mask, and do not warn).
Qwen-Image 2.1 reads its sigma schedule from the checkpoint when model_index.json sets `sample_sigmas`:
num_inference_steps is then ignored, so a step count other than the schedule's (drafts included) is refused.
"""

from __future__ import annotations

from ttsf_core.model_defaults import TINY_QWEN_IMAGE
from ttsf_core.pipelines.families.base import Family, linspace_sigmas, ones_mask


class QwenImageFamily(Family):
    name = "qwen-image"
    classes = ("QwenImagePipeline",)
    explicit = True
    pass_generators = False  # nothing after the noise draws from it in text-to-image calls
    encode_outputs = ("prompt_embeds", "prompt_embeds_mask")
    negative_outputs = ("negative_prompt_embeds", "negative_prompt_embeds_mask")
    hub_ids = ("Qwen/Qwen-Image", "Qwen/Qwen-Image-2512")
    tiny = TINY_QWEN_IMAGE

    def path_sigmas(self, pipe, steps):
        return linspace_sigmas(steps)  # what QwenImagePipeline.__call__ builds when given no sigmas

    def geometry(self, pipe, args):
        default = pipe.default_sample_size * pipe.vae_scale_factor
        return {"height": args.get("height") or default, "width": args.get("width") or default}

    def draw(self, pipe, generator, geometry):
        import torch

        channels = pipe.transformer.config.in_channels // 4  # 2x2 patches packed into channels
        return pipe.prepare_latents(1, channels, geometry["height"], geometry["width"], torch.float32,
                                    torch.device("cpu"), generator)

    def multiple(self, read, args):
        # vae_scale_factor = 2 ** len(temperal_downsample), times the 2x2 packing.
        return 2 * 2 ** len(read("vae").get("temperal_downsample") or [0, 0, 0])

    def do_cfg(self, pipe, args):
        return (args.get("true_cfg_scale") or 0) > 1 and args.get("negative_prompt") is not None

    def encode(self, pipe, prompt, args, device):
        encoding = self._masked(self._encoded(pipe, prompt, args, device, self.encode_outputs), self.encode_outputs)
        if self.do_cfg(pipe, args):
            negative = self._encoded(pipe, args["negative_prompt"], args, device, self.negative_outputs)
            encoding |= self._masked(negative, self.negative_outputs)
        return encoding

    @staticmethod
    def _masked(encoding: dict, names: tuple[str, str]) -> dict:
        embeds, mask = names
        if encoding.get(mask) is None:
            encoding[mask] = ones_mask(encoding[embeds])
        return encoding

    def build_tiny(self):
        """Qwen-Image's geometry (16 latent channels, an 8x VAE, 2x2 packing into 64) at toy widths, a
        two-layer Qwen2.5-VL text encoder (diffusers' own test sizes) and the local chat tokenizer."""
        import torch
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            QwenImagePipeline,
            QwenImageTransformer2DModel,
        )
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        from ttsf_core.pipelines import tiny

        tokenizer = tiny.chat_tokenizer()
        ids = tiny.special_ids(tokenizer)
        torch.manual_seed(tiny.BUILD_SEED)
        text_config = {"hidden_size": tiny.TEXT_WIDTH, "intermediate_size": 16, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                       "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                       "rope_theta": 1e6, "bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
                       "pad_token_id": ids["pad"]}
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                           "out_hidden_size": tiny.TEXT_WIDTH},
            hidden_size=tiny.TEXT_WIDTH, vocab_size=len(tokenizer), bos_token_id=ids["bos"], eos_token_id=ids["eos"],
            pad_token_id=ids["pad"], vision_start_token_id=ids["vision_start"],
            vision_end_token_id=ids["vision_end"], vision_token_id=ids["image"], image_token_id=ids["image"],
            video_token_id=ids["video"]))
        latent_channels = 16
        torch.manual_seed(tiny.BUILD_SEED)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=latent_channels * 4, out_channels=latent_channels, num_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=tiny.TEXT_WIDTH, guidance_embeds=False,
            axes_dims_rope=(8, 4, 4))
        torch.manual_seed(tiny.BUILD_SEED)
        # Three temporal-downsample stages: the 8x spatial scale of the real VAE (base width 4, not 96).
        vae = AutoencoderKLQwenImage(base_dim=4, z_dim=latent_channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])
        return tiny.evaluated(QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                                text_encoder=text_encoder, tokenizer=tokenizer,
                                                transformer=transformer))


class QwenImage21Family(QwenImageFamily):
    name = "qwen-image-2.1"
    classes = ("QwenImage21Pipeline",)
    encode_outputs = ("prompt_embeds", "prompt_embeds_mask", None)  # the image-pad mask is all False for text
    negative_outputs = ("negative_prompt_embeds", "negative_prompt_embeds_mask", None)
    hub_ids = ("Qwen/Qwen-Image-2.1",)
    tiny = None  # its Qwen3-VL processor needs torchvision to load (a video processor), absent here

    def path_sigmas(self, pipe, steps):
        return None  # its checkpoint's sample_sigmas decide the schedule: no default list to start part way

    def fixed_steps(self, pipe):
        sigmas = getattr(pipe.config, "sample_sigmas", None)
        return len(sigmas) if sigmas else None

    def geometry(self, pipe, args):
        # QwenImage21Pipeline.__call__: height or output_resolution, rounded down to vae_scale_factor * 2.
        default = args.get("output_resolution") or 1024
        step = pipe.vae_scale_factor * 2
        return {"height": (args.get("height") or default) // step * step,
                "width": (args.get("width") or default) // step * step}

    def draw(self, pipe, generator, geometry):
        import torch

        latents, _ = pipe.prepare_latents(None, 1, pipe.transformer.config.in_channels, geometry["height"],
                                          geometry["width"], torch.float32, torch.device("cpu"), generator)
        return latents

    def multiple(self, read, args):
        return 2 * int(read("vae").get("scale_factor_spatial") or 16)

    @staticmethod
    def _masked(encoding: dict, names: tuple) -> dict:
        return QwenImageFamily._masked(encoding, names[:2])

    def build_tiny(self):
        raise NotImplementedError("Qwen-Image 2.1 has no tiny version: Qwen3VLProcessor needs torchvision")


FAMILIES = (QwenImageFamily(), QwenImage21Family())
