"""Tiny random versions of every pipeline family tt-scale-flux ships a config for, built offline.

Component sizes follow diffusers' own fast tests (tests/pipelines/<name>/test_*.py
get_dummy_components), with local tokenizers (ttsf_core.pipelines.tiny) instead of the hub's
tiny-random ones, and the real models' scheduler types, so that what differs between families in
the real checkpoints (init_noise_sigma, resolution binning, packed video latents, decode-time noise)
differs here too. Where a value departs from diffusers' tests, the comment says why.

Each is built under a fixed seed, saved with save_pretrained and loaded back through
ttsf_core.pipelines.load_pipeline like any hub model; builds are cached under TTSF_CACHE_DIR.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SEED = 0


def _cache_root() -> Path:
    from ttsf_core.pipelines.tiny import default_tiny_dir

    return default_tiny_dir().parent


def ensure_tiny(name: str) -> Path:
    """The saved folder of tiny pipeline `name` (one of BUILDERS), built on first use."""
    path = _cache_root() / f"tiny-{name}"
    if (path / "model_index.json").is_file():
        return path
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    pipe = BUILDERS[name]()
    pipe.save_pretrained(partial)
    try:
        partial.rename(path)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return path


def _eval(pipe):
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def build_sd15():
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from ttsf_core.pipelines.tiny import _tiny_clip

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    text_encoder, tokenizer = _tiny_clip()
    # SD 1.5's own scheduler (diffusers' test uses DDIM).
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return _eval(StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                         tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False))


def build_sdxl():
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from ttsf_core.pipelines.tiny import _tiny_clip

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    # Euler: init_noise_sigma ~14.6, so given latents must be unscaled noise.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
    )
    text_encoder, tokenizer = _tiny_clip()
    torch.manual_seed(SEED)
    text_encoder_2 = CLIPTextModelWithProjection(text_encoder.config)
    _, tokenizer_2 = _tiny_clip()
    return _eval(StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                           tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                           scheduler=scheduler, image_encoder=None, feature_extractor=None))


def build_pixart_sigma():
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    from ttsf_core.pipelines.tiny import _tiny_t5

    torch.manual_seed(SEED)
    transformer = PixArtTransformer2DModel(
        # 32, not diffusers' 8: resolution binning (on by default) has bins for sample sizes 32..256 only.
        sample_size=32,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    torch.manual_seed(SEED)
    # An 8x VAE (diffusers' test: AutoencoderKL(), 1x) so the 256-pixel bins stay cheap: 32x32 latents.
    blocks = (4, 4, 4, 4)
    vae = AutoencoderKL(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                        norm_num_groups=1)
    text_encoder, tokenizer = _tiny_t5()
    # PixArt-Sigma's own scheduler (diffusers' test uses DDIM).
    scheduler = DPMSolverMultistepScheduler()
    return _eval(PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                     transformer=transformer, scheduler=scheduler))


def build_ltx_video():
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    from ttsf_core.pipelines.tiny import _tiny_t5

    torch.manual_seed(SEED)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        # The decoder spelled out too (its defaults are LTX's real 128..512 channels).
        decoder_block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
        # As LTX-Video 0.9.1: decoding adds generator-drawn noise, so every call needs its generators.
        timestep_conditioning=True,
    )
    text_encoder, tokenizer = _tiny_t5()
    return _eval(LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer))


def build_wan():
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from ttsf_core.pipelines.tiny import _tiny_t5

    torch.manual_seed(SEED)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    _, tokenizer = _tiny_t5()
    torch.manual_seed(SEED)
    # Wan's text encoder is a UMT5 (diffusers' test: T5 from tiny-random-t5); the tiny T5's sizes.
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=1103, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=5,
                                               relative_attention_num_buckets=8, decoder_start_token_id=0))
    torch.manual_seed(SEED)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    # Wan2.1's own scheduler (diffusers' test uses FlowMatchEuler with shift 7).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return _eval(WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                             scheduler=scheduler))


def _image_only_processor_class():
    """Qwen3VLProcessor without its video processor (which needs torchvision, absent here): what
    QwenImage21Pipeline uses for text-to-image (the chat template, the tokenizer, the image-pad id).
    Reached as this module's attribute ImageOnlyQwen3VLProcessor, so a saved pipeline reloads with it."""
    from transformers import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
        attributes = ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            for kind in ("image", "video"):
                token = f"<|{kind}_pad|>"
                setattr(self, f"{kind}_token", token)
                setattr(self, f"{kind}_token_id", tokenizer.convert_tokens_to_ids(token))
            self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
            self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
            self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)

    ImageOnlyQwen3VLProcessor.__module__ = __name__
    return ImageOnlyQwen3VLProcessor


_PROCESSOR_CLASS: list = []


def __getattr__(name: str):
    if name == "ImageOnlyQwen3VLProcessor":
        if not _PROCESSOR_CLASS:
            _PROCESSOR_CLASS.append(_image_only_processor_class())
        return _PROCESSOR_CLASS[0]
    raise AttributeError(name)


def _image_only_qwen3vl_processor(tokenizer):
    from transformers import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=32 * 32, max_pixels=64 * 64)
    return __getattr__("ImageOnlyQwen3VLProcessor")(image_processor=image_processor, tokenizer=tokenizer,
                                                    chat_template=tokenizer.chat_template)


def build_qwen_image_21():
    """Qwen-Image 2.1 at diffusers' own test sizes (a 16x VAE of 8 latent channels, a two-layer Qwen3-VL),
    with the local chat tokenizer; in memory only (its processor class is defined here)."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage21,
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from ttsf_core.pipelines import tiny

    tokenizer = tiny.chat_tokenizer()
    ids = tiny.special_ids(tokenizer)
    width, latent_channels = tiny.TEXT_WIDTH, 8
    torch.manual_seed(SEED)
    text_encoder = Qwen3VLForConditionalGeneration(Qwen3VLConfig(
        text_config={"hidden_size": width, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "head_dim": 8, "vocab_size": len(tokenizer),
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": width,
                       "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"]))
    torch.manual_seed(SEED)
    transformer = QwenImage21Transformer2DModel(patch_size=1, in_channels=latent_channels, out_channels=latent_channels,
                                                num_layers=1, attention_head_dim=16, num_attention_heads=2,
                                                context_in_dim=width, mlp_ratio=2, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(SEED)
    vae = AutoencoderKLQwenImage21(base_dim=4, decoder_base_dim=4, z_dim=latent_channels, dim_mult=[1, 1, 1, 1, 1],
                                   num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True, True],
                                   latents_mean=[0.0] * latent_channels, latents_std=[1.0] * latent_channels)
    return _eval(QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                     processor=_image_only_qwen3vl_processor(tokenizer), transformer=transformer))


BUILDERS = {
    "sd15": build_sd15,
    "sdxl": build_sdxl,
    "pixart-sigma": build_pixart_sigma,
    "ltx-video": build_ltx_video,
    "wan": build_wan,
    "qwen-image-2.1": build_qwen_image_21,
}
