"""FLUX.1 (FluxPipeline): 16 latent channels packed 2x2 into (H/16 * W/16, 64) tokens, used as given."""

from __future__ import annotations

from ttsf_core.model_defaults import TINY_FLUX
from ttsf_core.pipelines.families.base import Family, linspace_sigmas, vae_scale


class FluxFamily(Family):
    name = "flux"
    classes = ("FluxPipeline",)
    explicit = True
    encode_outputs = ("prompt_embeds", "pooled_prompt_embeds", None)
    pass_generators = False  # nothing after the noise draws from it (and FLUX calls stay as they were)
    hub_ids = ("black-forest-labs/FLUX.1-dev",)
    tiny = TINY_FLUX

    def path_sigmas(self, pipe, steps):
        return linspace_sigmas(steps)  # what FluxPipeline.__call__ builds when given no sigmas

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
        return 2 * vae_scale(read)  # the pipeline's own check: vae_scale_factor * 2

    def encode(self, pipe, prompt, args, device):
        encoding = self._encoded(pipe, prompt, args, device, self.encode_outputs)
        # True CFG (true_cfg_scale > 1 with a negative prompt) encodes the negative prompt the same way.
        negative = args.get("negative_prompt")
        if (negative or args.get("negative_prompt_2")) and (args.get("true_cfg_scale") or 1) > 1:
            negative_args = {**args, "prompt_2": args.get("negative_prompt_2") or negative}
            encoding |= self._encoded(pipe, negative or args.get("negative_prompt_2"), negative_args, device,
                                      ("negative_prompt_embeds", "negative_pooled_prompt_embeds", None))
        return encoding

    def build_tiny(self):
        from ttsf_core.pipelines.tiny import build_tiny_flux

        return build_tiny_flux()


FAMILIES = (FluxFamily(),)
