"""FLUX.2 [dev] (Flux2Pipeline, Mistral Small 3 text encoder, guidance-distilled) and FLUX.2 [klein]
(Flux2KleinPipeline, Qwen3 text encoder; the step-distilled 4B/9B, or the undistilled Base with true CFG).

Latents: the VAE's latent channels patchified 2x2 into the transformer's `in_channels` (4 x 32 = 128 for
the released VAE) at H/16 x W/16. The pipelines take `latents=` in that 4-D layout (B, in_channels,
H/16, W/16) and pack it into tokens themselves, so ttsf draws with the pipeline's own prepare_latents
(which packs) and hands back the 4-D view of the same numbers. Given latents are used as they are.

Prompt: FLUX.2 [dev] encodes with a system message through its processor's chat template, [klein] with
Qwen3's chat template; both stack hidden states of `text_encoder_out_layers`. [dev] has no negative
prompt (guidance is an input of the transformer); [klein] Base, when guidance_scale > 1 and the
checkpoint is not `is_distilled`, runs true CFG against the empty prompt, which ttsf encodes once too.
`caption_upsample_temperature` ([dev]'s prompt upsampling) samples new prompt text from the text encoder
with torch's global RNG, so the image could not be regenerated from its record: refused.
"""

from __future__ import annotations

from ttsf_core.config import ConfigError
from ttsf_core.config_errors import shown
from ttsf_core.model_defaults import TINY_FLUX2, TINY_FLUX2_KLEIN
from ttsf_core.pipelines.families.base import Family, linspace_sigmas, vae_scale


class Flux2Family(Family):
    name = "flux2"
    classes = ("Flux2Pipeline",)
    explicit = True
    pass_generators = False  # nothing after the noise draws from it in text-to-image calls
    encode_outputs = ("prompt_embeds", None)  # text_ids are rebuilt from the embeddings inside the call
    hub_ids = ("black-forest-labs/FLUX.2-dev",)
    tiny = TINY_FLUX2

    def check(self, args):
        temperature = args.get("caption_upsample_temperature")
        if temperature:
            raise ConfigError(f"pipeline_call_args.caption_upsample_temperature: received {shown(temperature)}, "
                              "allowed: unset or 0 (prompt upsampling samples new prompt text with torch's global "
                              "random state, so its images could not be regenerated from their records; upsample "
                              "the prompts beforehand instead)")

    def path_sigmas(self, pipe, steps):
        return linspace_sigmas(steps)  # what both pipelines build given no sigmas

    def geometry(self, pipe, args):
        default = pipe.default_sample_size * pipe.vae_scale_factor
        return {"height": args.get("height") or default, "width": args.get("width") or default}

    def draw(self, pipe, generator, geometry):
        import torch

        channels = pipe.transformer.config.in_channels // 4  # prepare_latents multiplies by 4 again
        packed, ids = pipe.prepare_latents(1, channels, geometry["height"], geometry["width"], torch.float32,
                                           torch.device("cpu"), generator)
        height, width = int(ids[0, :, 1].max()) + 1, int(ids[0, :, 2].max()) + 1
        # _pack_latents is (B, C, H, W) -> (B, H*W, C): undo it (a view of the same numbers).
        return packed.transpose(1, 2).reshape(1, packed.shape[2], height, width)

    def call_latents(self, pipe, loop_latents, geometry):
        # The loop holds them packed (B, H*W, C); `latents=` takes them (B, C, H, W), as draw gives them.
        height = int(geometry["height"]) // (pipe.vae_scale_factor * 2)
        width = int(geometry["width"]) // (pipe.vae_scale_factor * 2)
        return loop_latents.transpose(1, 2).reshape(loop_latents.shape[0], loop_latents.shape[2], height, width)

    def multiple(self, read, args):
        return 2 * vae_scale(read)  # the pipeline rounds other sizes down to vae_scale_factor * 2

    def encode(self, pipe, prompt, args, device):
        return self._encoded(pipe, prompt, args, device, self.encode_outputs)

    def build_tiny(self):
        """FLUX.2's geometry (32 latent channels patchified into 128, an 8x VAE) at toy widths; a Mistral3
        text encoder deep enough for the default text_encoder_out_layers (10, 20, 30), and a local
        byte-level tokenizer whose chat template puts the system message first, as the real processor's."""
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        from ttsf_core.pipelines import tiny

        tokenizer = tiny.chat_tokenizer()
        ids = tiny.special_ids(tokenizer)
        torch.manual_seed(tiny.BUILD_SEED)
        layers = max(_default_layers(Flux2Pipeline)) + 1
        text_config = {"model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": tiny.TEXT_WIDTH,
                       "intermediate_size": 37, "max_position_embeddings": 1024, "num_attention_heads": 2,
                       "num_key_value_heads": 2, "head_dim": 8, "num_hidden_layers": layers, "rms_norm_eps": 1e-5,
                       "rope_theta": 1e9, "sliding_window": None, "bos_token_id": ids["bos"],
                       "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
        vision_config = {"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
                         "intermediate_size": 37, "image_size": 30, "patch_size": 6, "num_channels": 3}
        text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
            text_config=text_config, vision_config=vision_config, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
            pad_token_id=ids["pad"], image_seq_length=4, vision_feature_layer=-1, image_token_index=ids["image"]))
        transformer, vae = _tiny_denoiser_and_vae(joint_attention_dim=3 * tiny.TEXT_WIDTH, guidance_embeds=True)
        return tiny.evaluated(Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                            text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer))


class Flux2KleinFamily(Flux2Family):
    name = "flux2-klein"
    classes = ("Flux2KleinPipeline",)
    hub_ids = ("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-9B",
               "black-forest-labs/FLUX.2-klein-base-4B", "black-forest-labs/FLUX.2-klein-base-9B")
    tiny = TINY_FLUX2_KLEIN

    def check(self, args):
        pass  # no prompt upsampling in [klein]

    def do_cfg(self, pipe, args):
        # Flux2KleinPipeline.do_classifier_free_guidance: guidance_scale > 1 and not a distilled checkpoint.
        return (args.get("guidance_scale") or 0) > 1 and not pipe.config.is_distilled

    def encode(self, pipe, prompt, args, device):
        encoding = self._encoded(pipe, prompt, args, device, self.encode_outputs)
        if self.do_cfg(pipe, args):  # the pipeline's negative is always the empty prompt
            encoding |= self._encoded(pipe, "", args, device, ("negative_prompt_embeds", None))
        return encoding

    def build_tiny(self):
        """As FLUX.2-klein-4B: step-distilled (`is_distilled`, no CFG), a Qwen3 text encoder deep enough
        for the default text_encoder_out_layers (9, 18, 27). Load it with `is_distilled=False` for a
        [klein] Base stand-in (true CFG against the empty prompt)."""
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
        from transformers import Qwen3Config, Qwen3ForCausalLM

        from ttsf_core.pipelines import tiny

        tokenizer = tiny.chat_tokenizer()
        ids = tiny.special_ids(tokenizer)
        torch.manual_seed(tiny.BUILD_SEED)
        layers = max(_default_layers(Flux2KleinPipeline)) + 1
        text_encoder = Qwen3ForCausalLM(Qwen3Config(
            hidden_size=tiny.TEXT_WIDTH, intermediate_size=16, num_hidden_layers=layers, num_attention_heads=2,
            num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024,
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], tie_word_embeddings=True))
        transformer, vae = _tiny_denoiser_and_vae(joint_attention_dim=3 * tiny.TEXT_WIDTH, guidance_embeds=False)
        return tiny.evaluated(Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                                 text_encoder=text_encoder, tokenizer=tokenizer,
                                                 transformer=transformer, is_distilled=True))


def _default_layers(pipeline_class) -> tuple[int, ...]:
    """The hidden-state layers the pipeline stacks by default (its __call__'s text_encoder_out_layers)."""
    import inspect

    return tuple(inspect.signature(pipeline_class.__call__).parameters["text_encoder_out_layers"].default)


def _tiny_denoiser_and_vae(joint_attention_dim: int, guidance_embeds: bool):
    """A one-block FLUX.2 transformer over 128 patchified channels and an 8x FLUX.2 VAE of 32 latent
    channels (the released geometry), widths from diffusers' own FLUX.2 tests."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    from ttsf_core.pipelines import tiny

    latent_channels = 32
    torch.manual_seed(tiny.BUILD_SEED)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=latent_channels * 4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=joint_attention_dim, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=guidance_embeds)
    torch.manual_seed(tiny.BUILD_SEED)
    blocks = (4, 4, 4, 4)
    vae = AutoencoderKLFlux2(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                             up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=1,
                             latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                             use_post_quant_conv=False, sample_size=32)
    return transformer, vae


FAMILIES = (Flux2Family(), Flux2KleinFamily())
