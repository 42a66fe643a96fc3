"""LTX-Video: video latents (C, (F-1)/t+1, H/s, W/s) packed into tokens by the pipeline's own
prepare_latents, used as given; decoding draws noise from the call's generators (timestep-conditioned VAE)."""

from __future__ import annotations

from ttsf_core.pipelines.families.base import Family, lcm


class LTXVideoFamily(Family):
    name = "ltx-video"
    classes = ("LTXPipeline",)
    video = True
    explicit = True
    float32_latents = True
    encode_outputs = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                      "negative_prompt_attention_mask")
    hub_ids = ("a-r-r-o-w/LTX-Video-0.9.1-diffusers",)

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
        return lcm(32, int(ratio) * int(transformer.get("patch_size") or 1))

    def frames_per_second(self, args):
        return int(args.get("frame_rate") or 25)


FAMILIES = (LTXVideoFamily(),)
