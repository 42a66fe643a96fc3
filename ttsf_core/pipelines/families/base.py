"""What every pipeline family shares, and the family of pipelines ttsf does not know (`GENERIC`).

A family says, for the diffusers pipeline classes it covers, how ttsf draws a candidate's initial noise
(the very noise the pipeline's own prepare_latents draws for `generator=torch.Generator("cpu")
.manual_seed(seed)`, shaped from the loaded model and passed as `latents=`), how a prompt is encoded
once (its negative prompt and guidance inputs included), what height and width must be a multiple of
(read from the component configs, no weights), and what it can do: neighbour noises (zero-order search),
drafts, and whether its declared scheduler is a flow-matching one (what path search and FK steering will
drive). Each family is one module of this package; `ttsf_core.pipelines.families` finds them.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

# encode_prompt arguments that come from the call's arguments (the rest are ttsf's: prompt, device, ...).
ENCODE_ARGS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3", "max_sequence_length", "clip_skip",
               "clean_caption", "text_encoder_out_layers")
# Call arguments an encoding replaces: passing them beside the embeddings is an error in diffusers.
CONSUMED_BY_ENCODING = ("prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3")

ConfigReader = Callable[[str], dict]  # subfolder -> that component's config.json ({} when absent)


class Family:
    """A pipeline family ttsf does not know: prompt text and a generator per candidate in every call."""

    name = "generic"
    classes: tuple[str, ...] = ()
    video = False
    explicit = False  # ttsf draws the latents and passes them (else the pipeline draws its own)
    # encode_prompt's return values, each named by the __call__ keyword it is passed as (None: dropped)
    encode_outputs: tuple[str | None, ...] = ()
    float32_latents = False  # the pipeline makes its latents in float32 whatever the model's dtype
    pass_generators = True
    # The checkpoints this family is for; their model cards' recommended call arguments are configs/*.json.
    hub_ids: tuple[str, ...] = ()
    # `--model` name of its offline tiny version (random weights, built by build_tiny), if it has one.
    tiny: str | None = None
    tiny_version = 1  # bumped whenever build_tiny changes what it builds (a cached build is then redone)

    # -- what it can do ------------------------------------------------------------------------------
    @property
    def flow_matching(self) -> bool:
        """Whether every pipeline class of the family declares a flow-matching scheduler (FlowMatch*):
        what path search and FK steering drive through sigmas and callback_on_step_end. Read from the
        classes' __init__ annotations, not assumed; a loaded pipeline's own scheduler is
        `uses_flow_matching(pipe)`."""
        if not self.classes:
            return False
        return all(_is_flow_matching(declared_scheduler(name)) for name in self.classes)

    def path_sigmas(self, pipe, steps: int) -> list[float] | None:
        """The sigma list the pipeline builds itself when called without `sigmas` (before its scheduler
        shifts them), for families whose pipelines take `sigmas=` and whose noise ttsf draws: what lets
        path search and FK steering start a call part way (None: this family cannot)."""
        return None

    def call_latents(self, pipe, loop_latents: "torch.Tensor", geometry: dict[str, int]) -> "torch.Tensor":
        """Latents as the denoising loop holds them (what callback_on_step_end sees), in the layout the
        call's `latents=` takes: the same for most families."""
        return loop_latents

    @property
    def drives_paths(self) -> bool:
        """Path search and FK steering: a flow-matching image family that says its pipeline's sigmas."""
        return self.flow_matching and not self.video and self.path_sigmas(None, 2) is not None

    @property
    def neighbour_noises(self) -> bool:
        """Zero-order search walks a noise on the sphere: only when ttsf draws the noise itself."""
        return self.explicit

    def fixed_steps(self, pipe) -> int | None:
        """The step count a checkpoint imposes whatever num_inference_steps says (None: it follows it)."""
        return None

    def check(self, args: dict[str, Any]) -> None:
        """Refuse, before anything loads, call arguments whose images ttsf could not reproduce."""

    def check_steps(self, pipe, steps: int, field: str) -> None:
        """Refuse a step count the loaded checkpoint would silently replace by its own."""
        from ttsf_core.config import ConfigError

        fixed = self.fixed_steps(pipe)
        if fixed is not None and steps != fixed:
            raise ConfigError(f"{field}: received {steps}, allowed: {fixed} ({type(pipe).__name__} takes its "
                              f"{fixed}-step sigma schedule from the checkpoint's sample_sigmas and ignores "
                              "num_inference_steps, so drafts cannot take fewer steps either)")

    # -- noise ---------------------------------------------------------------------------------------
    def geometry(self, pipe, args: dict[str, Any]) -> dict[str, int]:
        """The pixel size (and frames) of the latents the pipeline will use with these call arguments."""
        return {}

    def draw(self, pipe, generator: "torch.Generator", geometry: dict[str, int]) -> "torch.Tensor":
        raise NotImplementedError(f"{type(pipe).__name__} draws its own noise")

    def multiple(self, read: ConfigReader, args: dict[str, Any]) -> int:
        """What height and width must be a multiple of (from the component configs, no weights)."""
        return vae_scale(read)

    # -- prompt --------------------------------------------------------------------------------------
    def do_cfg(self, pipe, args: dict[str, Any]) -> bool:
        guidance = args.get("guidance_scale")
        unet = getattr(pipe, "unet", None)
        distilled = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
        return guidance is not None and guidance > 1 and not distilled

    def encode(self, pipe, prompt: str, args: dict[str, Any], device) -> dict[str, Any]:
        """The call's prompt keywords for `prompt`: its embeddings (once per prompt), or the text itself."""
        if not self.encode_outputs:
            return {"prompt": prompt}
        return self._encoded(pipe, prompt, args, device, self.encode_outputs)

    def _encoded(self, pipe, prompt, args, device, outputs, **fixed) -> dict[str, Any]:
        """pipe.encode_prompt with what the call would give it, its outputs named by `outputs`."""
        import torch

        kwargs = {}
        for name in inspect.signature(pipe.encode_prompt).parameters:
            if name in fixed:
                kwargs[name] = fixed[name]
            elif name == "prompt":
                kwargs[name] = prompt
            elif name in ("prompt_2", "prompt_3"):
                kwargs[name] = args.get(name) or prompt
            elif name == "device":
                kwargs[name] = device
            elif name in ("num_images_per_prompt", "num_videos_per_prompt"):
                kwargs[name] = 1
            elif name == "do_classifier_free_guidance":
                kwargs[name] = self.do_cfg(pipe, args)
            elif name in ENCODE_ARGS and name in args:
                kwargs[name] = args[name]
        with torch.no_grad():
            encoded = pipe.encode_prompt(**kwargs)
        return {name: value for name, value in zip(outputs, encoded) if name is not None and value is not None}

    def consumed(self) -> tuple[str, ...]:
        """Call arguments the encoding took in (never passed beside it)."""
        return CONSUMED_BY_ENCODING if self.encode_outputs else ()

    def latents_dtype(self, encoding: dict[str, Any]):
        """The dtype the pipeline's own latents have: float32, or its prompt embeddings' dtype."""
        import torch

        return torch.float32 if self.float32_latents else encoding["prompt_embeds"].dtype

    def frames_per_second(self, args: dict[str, Any]) -> int:
        return 16

    # -- offline tiny version ------------------------------------------------------------------------
    def build_tiny(self):
        raise NotImplementedError(f"the {self.name} family has no tiny version")


def declared_scheduler(class_name: str) -> Any:
    """The scheduler annotation of a diffusers pipeline class's __init__ (a class, or an enum of them)."""
    import diffusers

    parameter = inspect.signature(getattr(diffusers, class_name).__init__).parameters.get("scheduler")
    return None if parameter is None else parameter.annotation


def _is_flow_matching(scheduler: Any) -> bool:
    return isinstance(scheduler, type) and any(klass.__name__.startswith("FlowMatch") for klass in scheduler.__mro__)


def uses_flow_matching(pipe) -> bool:
    """Whether a loaded pipeline's scheduler is a flow-matching one (Wan 2.1's checkpoint, for one, ships
    UniPC with flow sigmas although WanPipeline declares FlowMatchEulerDiscreteScheduler)."""
    return _is_flow_matching(type(getattr(pipe, "scheduler", None)))


def vae_scale(read: ConfigReader) -> int:
    return 2 ** (len(read("vae").get("block_out_channels", [0])) - 1)


def gaussian(channels: int, geometry: dict[str, int], scale: int, generator) -> "torch.Tensor":
    """What an SD-style prepare_latents draws before its init_noise_sigma scaling."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, channels, int(geometry["height"]) // scale, int(geometry["width"]) // scale)
    return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)


def linspace_sigmas(steps: int) -> list[float]:
    """np.linspace(1.0, 1 / steps, steps): the sigmas FLUX-style pipelines build when given none."""
    import numpy as np

    return np.linspace(1.0, 1 / steps, steps).tolist()


def lcm(*values: int) -> int:
    return math.lcm(*values)


def ones_mask(embeds: "torch.Tensor") -> "torch.Tensor":
    """An attention mask marking every token valid (what encode_prompt's None stands for)."""
    import torch

    return torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)


GENERIC = Family()
