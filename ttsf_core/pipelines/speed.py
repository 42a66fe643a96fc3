"""Speed options of a loaded pipeline: fp8 weights and activations, the attention backend, VAE
tiling, regional compilation. Each is checked before any model loads (`check_speed_options`), and
applied in that order after loading (`apply_speed_options`): quantize before compiling (the compiled
graph then holds the fp8 kernels), the backend before compiling (it is part of the traced code).

What each does to pixels decides whether it is in the images' identity (RunConfig.generation_identity):
compile and the attention backend compute the same function (checked to within bf16 noise on the
GPU by benchmarks/gpu_flux.py), fp8 and VAE tiling do not.
"""

from __future__ import annotations

import importlib.util

from ttsf_core.config import ConfigError, RunConfig

# Backends of diffusers' attention dispatcher that need a CUDA device, and the package some need.
CUDA_BACKENDS = {"flash", "flash_varlen", "_flash_3", "_flash_varlen_3", "_native_cudnn", "_native_efficient",
                 "_native_flash", "sage", "sage_varlen", "_sage_qk_int8_pv_fp8_cuda",
                 "_sage_qk_int8_pv_fp8_cuda_sm90", "_sage_qk_int8_pv_fp16_cuda", "_sage_qk_int8_pv_fp16_triton"}
BACKEND_PACKAGES = {"flash": "flash_attn", "flash_varlen": "flash_attn", "_flash_3": "flash_attn_interface",
                    "_flash_varlen_3": "flash_attn_interface", "sage": "sageattention", "sage_varlen": "sageattention"}
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper and newer have fp8 tensor cores


def check_speed_options(config: RunConfig, device: str) -> None:
    """A ConfigError, one line, for an option this machine cannot honour (before any model loads)."""
    if config.attention_backend is not None:
        _check_backend(config.attention_backend, device)
    if config.quantize == "fp8":
        _check_fp8(device)


def _check_backend(name: str, device: str) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [backend.value for backend in AttentionBackendName]
    if name not in known:
        raise ConfigError(f"--attention_backend (attention_backend): received {name!r}, allowed: one of "
                          f"{', '.join(known)}")
    if name in CUDA_BACKENDS and not device.startswith("cuda"):
        raise ConfigError(f"--attention_backend (attention_backend): received {name!r} (it needs a CUDA device; "
                          f"this run is on {device}), allowed: native, or a CUDA device")
    package = BACKEND_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"--attention_backend (attention_backend): received {name!r} (it needs the {package} "
                          "package, which is not installed), allowed: native, _native_cudnn, or install it")


def _check_fp8(device: str) -> None:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise ConfigError(f"--quantize (quantize): received 'fp8' (this run is on {device}), allowed: none, or fp8 "
                          "on a CUDA card with fp8 (compute capability 8.9 or newer)")
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < FP8_MIN_CAPABILITY:
        raise ConfigError(f"--quantize (quantize): received 'fp8' (this card's compute capability is "
                          f"{capability[0]}.{capability[1]}), allowed: none, or a card with fp8 (8.9 or newer)")
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError("--quantize (quantize): received 'fp8' (it needs the torchao package, which is not "
                          "installed), allowed: none, or `pip install torchao`")


def denoiser(pipe):
    return getattr(pipe, "transformer", None) or pipe.unet


def apply_speed_options(pipe, config: RunConfig) -> None:
    model = denoiser(pipe)
    if config.quantize == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        # set_inductor_config=False: torchao would otherwise switch the whole process to TF32 float32
        # matmuls, which changes what a float32 verifier in the same process grades.
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    if config.attention_backend is not None:
        model.set_attention_backend(config.attention_backend)
    if config.vae_tiling:
        pipe.vae.enable_tiling()
    if config.compile:
        if getattr(model, "_repeated_blocks", None):
            model.compile_repeated_blocks(fullgraph=True)  # regional: seconds, reused across batch sizes
        else:
            model.compile(fullgraph=False)
