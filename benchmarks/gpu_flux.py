"""FLUX.1-dev (or, with --model, FLUX.2 [klein] 4B or FLUX.2 [dev]) on one GPU, in one time-boxed run
(< 8 min on an H200): matmul peaks, the transformer's denoising loop per speed option and batch size,
numerics of each option against float32, and ttsf's own search end to end. Results as JSON and markdown
(--out-dir; $OUT when set; files named gpu_flux[-<model>].json/.md, so runs of two models sit side by side).

--model flux2-klein-4b / flux2-dev: Flux2Transformer2DModel with that checkpoint's published
transformer/config.json (read 2026-12-03), fed what Flux2KleinPipeline / Flux2Pipeline feed it: latents
(B, H/16 * W/16, 128), 512 text tokens of width joint_attention_dim (3 stacked Qwen3 / Mistral hidden
layers: 7680 / 15360), 4-D position ids, guidance only for [dev] (guidance-distilled; [klein] 4B is
step-distilled, 4 steps, no guidance input). Their FLOPs per forward are counted by
torch.utils.flop_counter on the meta device (same convention as the analytic FLUX.1 count: matmuls and
attention, 2 FLOPs per multiply-add), not derived by hand. The end-to-end search uses a FLUX.2 VAE
(AutoencoderKLFlux2, its default = released geometry) and a three-layer stand-in text encoder of the
real width (text_encoder_out_layers (1, 2, 3)). Steps reported default to the model card's (4 for
[klein] 4B, 28/50 for [dev]).

Sections, in this order (each time-boxed; a row that would end past --time-budget-s, keeping room
for the sections after it, is skipped and listed as such):

1. peaks: the card's bf16 matmul rate (8192^3 torch.mm) and fp8 rate (torch._scaled_mm on
   float8_e4m3fn operands, per-tensor scales, bf16 out; compute capability >= 8.9 only).
2. transformer: FluxTransformer2DModel with FLUX.1-dev's published config and random bf16 weights built
   directly on the GPU (no download, no fp32 copy), fed what FluxPipeline feeds it at 1024x1024 (packed
   latents (B, 4096, 64), 512 T5 tokens of width 4096, pooled CLIP 768, guidance 3.5), timing the
   denoising loop (transformer + flow-matching Euler update) for each mode x batch 1/2/4/8:
     eager         bf16, SDPA
     compiled      ttsf's --compile (regional: compile_repeated_blocks(fullgraph=True))       --compile
     fp8+compiled  ttsf's --quantize fp8 (torchao, per-row fp8 weights and activations), then --compile
     fp8           ttsf's --quantize fp8 alone                                                 --fp8
   Options are applied by ttsf's own `apply_speed_options` (ttsf_core/pipelines/speed.py). Each row
   times a warm-up step (kernel choice, compilation) and then a few steps; every step of a 1024px image
   has the same shapes and cost, so the per-step time is extrapolated to 28 and 50 steps. Reported:
   s/step, s/image, achieved TFLOP/s, % of the measured bf16 (and fp8) peak, peak GPU memory.
3. numerics: one forward at batch 1, each option against a float32 forward of the same weights; the
   bf16 eager model's own error is the noise floor (how ttsf justifies keeping compile and the attention
   backend out of the images' identity, and fp8 in it).
5. search methods (--strategies, after --e2e): random, zero-order, paths and FK steering, one prompt and
   one round each at their defaults, through runner.run on the same pipeline and stand-in verifier: NFEs
   and verifier calls from the round record, wall time, GPU idle, best stand-in score. Random weights:
   it measures the machinery at full size (how long a path's partial calls and its grading take), not
   which method finds better images.
4. end to end (--e2e): `ttsf_core.usecases.runner.run` (thread executor) with a CandidateGenerator around a
   FluxPipeline of the full-size transformer (the fastest mode measured at the search's batch size, or
   --e2e-mode) and the full-size VAE, small stand-in text encoders, and a stand-in verifier that
   answers in 1 s per call with image-statistics grades: 2 prompts x 3 rounds at 1024px, 28 steps,
   batch 4. Images/s and GPU idle (share of wall time the generator was not inside a pipeline call).
   Then the same path with --use_low_gpu_vram (model CPU offload): s/image and peak memory.

FLOPs per forward (counted analytically from the config, 2 FLOPs per multiply-add; norms,
activations, RoPE, softmax and residual adds are not counted, as usual for MFU):
    D = heads x head_dim = 3072, F = 4D (MLP), N = N_img + N_txt = 4096 + 512 tokens, B = batch
    double-stream block (x19): QKV 2BN*D*3D + out-proj 2BN*D*D + MLP 2BN*2*D*F = 24*B*N*D^2
                               attention QK^T and PV 4*B*N^2*D, AdaLN-zero 2 x 2B*D*6D
    single-stream block (x38): QKV 2BN*D*3D + MLP-in 2BN*D*F + proj_out 2BN*(D+F)*D = 24*B*N*D^2
                               attention 4*B*N^2*D, AdaLN 2B*D*3D
    plus x_embedder 2B*N_img*64*D, context_embedder 2B*N_txt*4096*D, timestep/guidance/pooled MLPs,
    norm_out 2B*D*2D and proj_out 2B*N_img*D*64.
    -> 74.38 TFLOP per image per step at 1024px (--dry-run checks it against torch's FLOP counter).

    python benchmarks/gpu_flux.py --dry-run                              # plan and FLOPs, no GPU
    python benchmarks/gpu_flux.py --cpu-smoke --compile --fp8 --e2e      # every code path, tiny, CPU
    timeout 540 python benchmarks/gpu_flux.py --compile --fp8 --e2e --out-dir $OUT    # one H100/H200
    # search methods on FLUX.1-dev (random weights), one round each, after the end-to-end run:
    timeout 590 python benchmarks/gpu_flux.py --e2e --strategies --low-vram-images 0 --time-budget-s 560 --out-dir $OUT
    # FLUX.2 [klein] 4B beside it (gpu_flux-flux2-klein-4b.json/.md in the same folder):
    timeout 400 python benchmarks/gpu_flux.py --model flux2-klein-4b --compile --e2e --time-budget-s 330 --out-dir $OUT
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

T0 = time.perf_counter()  # the budget counts from here: before torch is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the weights are random

import _common  # noqa: E402 - puts the repository root on sys.path, quiet libraries

FLUX_DEV = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# --cpu-smoke: the same code path on a model small enough for a CPU (rope axes sum to head_dim).
SMOKE = {**FLUX_DEV, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
         "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": (4, 6, 6)}
# black-forest-labs/FLUX.2-klein-4B transformer/config.json (3 x Qwen3-4B's 2560 = 7680 text width).
FLUX2_KLEIN_4B = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "guidance_embeds": False,
}
# black-forest-labs/FLUX.2-dev transformer/config.json (diffusers' Flux2Transformer2DModel defaults;
# 3 x Mistral Small 3's 5120 = 15360 text width), guidance-distilled.
FLUX2_DEV = {**FLUX2_KLEIN_4B, "num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48,
             "joint_attention_dim": 15360, "guidance_embeds": True}
FLUX2_SMOKE = {**FLUX2_KLEIN_4B, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
               "num_attention_heads": 2, "joint_attention_dim": 48, "axes_dims_rope": (4, 4, 4, 4)}


@dataclass(frozen=True)
class ModelSpec:
    """What differs between the models this script times: the transformer class and config, the inputs'
    layout, the guidance input, the step counts its card recommends."""

    label: str
    hub_id: str
    transformer_class: str
    config: dict
    smoke: dict
    guidance: float | None  # the transformer's guidance input (None: the model has none)
    steps: str  # default --steps: the model card's step counts
    flux2: bool = False


MODELS = {
    "flux1-dev": ModelSpec("FLUX.1-dev", "black-forest-labs/FLUX.1-dev", "FluxTransformer2DModel", FLUX_DEV, SMOKE,
                           3.5, "28,50"),
    "flux2-klein-4b": ModelSpec("FLUX.2 [klein] 4B", "black-forest-labs/FLUX.2-klein-4B", "Flux2Transformer2DModel",
                                FLUX2_KLEIN_4B, FLUX2_SMOKE, None, "4", flux2=True),
    "flux2-dev": ModelSpec("FLUX.2 [dev]", "black-forest-labs/FLUX.2-dev", "Flux2Transformer2DModel", FLUX2_DEV,
                           {**FLUX2_SMOKE, "guidance_embeds": True}, 4.0, "28,50", flux2=True),
}
TIMESTEP_CHANNELS = 256  # diffusers' Timesteps(num_channels=256) in CombinedTimestep*Embeddings
MLP_RATIO = 4
VAE_SCALE, PACK = 8, 2  # FLUX's VAE downsamples 8x; latents are packed in 2x2 patches
GUIDANCE_SCALE = 3.5
NO_CUDA_EXIT, FAILED_EXIT = 3, 1
MODES = ("eager", "compiled", "fp8+compiled", "fp8")  # in the order run (fp8 eager last: least asked for)
# mode -> (weights, compiled). Each weights kind is one model, options applied in place, reused by later rows.
MODE_PARTS = {"eager": ("bf16", False), "compiled": ("bf16", True), "fp8": ("fp8", False),
              "fp8+compiled": ("fp8", True)}
FP8_MIN_CAPABILITY = (8, 9)
# Priors for the time box until the run has measured its own: compile of the two repeated block types
# (first batch size, then once more when the batch dimension turns dynamic), torchao quantization.
COMPILE_PRIOR_S = {"compiled": 45.0, "fp8+compiled": 60.0}
FP8_SETUP_PRIOR_S = 30.0
PRIOR_MFU = 0.45  # step time before any row: the analytic FLOPs at this share of the bf16 peak
E2E_FIXED_S, LOW_VRAM_FIXED_S = 25.0, 30.0  # building, warm-up, tail; low-VRAM: offload transfers too
DECODE_S_PER_IMAGE = 0.15  # VAE decode + PIL + grading's share per image, 1024px
TARGET_MFU, TARGET_IDLE = 0.55, 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="FLUX.1-dev or FLUX.2 on one GPU (random bf16 weights, no download): bf16/fp8 matmul peaks, the "
        "transformer denoising loop per speed option and batch size, numerics vs float32, and ttsf's search "
        "end to end with a stand-in verifier. JSON + markdown in --out-dir; the markdown also on stdout.")
    parser.add_argument("--model", choices=tuple(MODELS), default="flux1-dev",
                        help="the transformer timed (published config, random weights): " + ", ".join(
                            f"{name} ({spec.hub_id})" for name, spec in MODELS.items()))
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="comma list of batch sizes")
    parser.add_argument("--steps", default=None,
                        help="comma list of step counts to report (extrapolated; default: the model card's, "
                        "28,50 for FLUX.1-dev and FLUX.2 [dev], 4 for FLUX.2 [klein] 4B)")
    parser.add_argument("--height", type=int, default=1024, help="image height in pixels (multiple of 16)")
    parser.add_argument("--width", type=int, default=1024, help="image width in pixels (multiple of 16)")
    parser.add_argument("--text-len", type=int, default=512, help="T5 tokens (max_sequence_length)")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="untimed steps per row (kernel choice; compilation for compiled rows)")
    parser.add_argument("--timed-steps", type=int, default=3, help="timed steps per row")
    parser.add_argument("--compile", action="store_true", help="also time ttsf's --compile (regional)")
    parser.add_argument("--fp8", action="store_true",
                        help="also time ttsf's --quantize fp8 (torchao), with --compile also fp8+compiled")
    parser.add_argument("--install-torchao", action="store_true",
                        help="when torchao is missing, try `pip install torchao` first (default: skip fp8 rows)")
    parser.add_argument("--attention-backends", default=None,
                        help="diffusers attention backends checked against eager at batch 1 (default on CUDA: "
                        "_native_cudnn,_native_flash,_native_efficient; on CPU: _native_math; 'none': no check)")
    parser.add_argument("--sdpa", choices=("auto", "flash", "efficient", "cudnn", "math"), default="auto",
                        help="SDPA backend for every row (auto: PyTorch picks; flash attention for bf16 on H100)")
    parser.add_argument("--matmul-size", type=int, default=8192, help="n of the n x n x n reference matmuls")
    parser.add_argument("--e2e", action="store_true", help="also run ttsf's search end to end (and --use_low_gpu_vram)")
    parser.add_argument("--e2e-mode", choices=("best", *MODES), default="best",
                        help="the transformer mode of the end-to-end run (best: the fastest measured at --e2e-batch)")
    parser.add_argument("--e2e-prompts", type=int, default=2, help="prompts of the end-to-end search")
    parser.add_argument("--e2e-rounds", type=int, default=3,
                        help="rounds of the end-to-end search (random search: 2, 4, 8 noises; fewer if the budget "
                        "says so)")
    parser.add_argument("--e2e-steps", type=int, default=None,
                        help="denoising steps of the end-to-end search (default: the first of --steps)")
    parser.add_argument("--e2e-batch", type=int, default=4, help="batch_size_for_img_gen of the end-to-end search")
    parser.add_argument("--strategies", action="store_true",
                        help="after the end-to-end run: random, zero-order, paths and FK steering, one prompt each, "
                        "one round at their default arguments, through runner.run on the same pipeline and stand-in "
                        "verifier (NFEs, verifier calls, wall time, GPU idle, best stand-in score)")
    parser.add_argument("--verifier-latency-s", type=float, default=1.0, help="the stand-in verifier's time per call")
    parser.add_argument("--low-vram-images", type=int, default=2,
                        help="images of the --use_low_gpu_vram run (one prompt, one round, one pipeline call); "
                        "0: skip it")
    parser.add_argument("--time-budget-s", type=float, default=440.0,
                        help="seconds from the start by which every section must be done (rows that would end "
                        "later, keeping room for the sections after them, are skipped)")
    parser.add_argument("--out-dir", default=None,
                        help="folder of the results (default: $OUT when set, else benchmarks/results)")
    parser.add_argument("--out-json", default=None,
                        help="JSON results (relative: inside --out-dir; default gpu_flux.json, gpu_flux-<model>.json "
                        "for another --model)")
    parser.add_argument("--out-md", default=None, help="markdown results (relative: inside --out-dir; default as "
                        "--out-json, .md)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and analytic FLOPs; no GPU needed")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="every section's code path on tiny configs on the CPU (a test of the script, not a "
                        "benchmark)")
    args = parser.parse_args(argv)
    spec = MODELS[args.model]
    args.batch_sizes = _int_list(parser, "--batch-sizes", args.batch_sizes)
    args.steps = _int_list(parser, "--steps", args.steps or spec.steps)
    args.e2e_steps = args.e2e_steps if args.e2e_steps is not None else args.steps[0]
    stem = "gpu_flux" if args.model == "flux1-dev" else f"gpu_flux-{args.model}"
    args.out_json, args.out_md = args.out_json or f"{stem}.json", args.out_md or f"{stem}.md"
    for name in ("height", "width"):
        if getattr(args, name) % (VAE_SCALE * PACK):
            parser.error(f"--{name}: received {getattr(args, name)}, allowed: a multiple of {VAE_SCALE * PACK}")
    if args.timed_steps < 1 or args.warmup_steps < 1:
        parser.error("--timed-steps and --warmup-steps: allowed: integers >= 1")
    for name in ("e2e_prompts", "e2e_rounds", "e2e_steps", "e2e_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: received {getattr(args, name)}, allowed: an integer >= 1")
    if args.cpu_smoke:  # tiny and quick: a handful of steps, a 0.05 s verifier
        args.e2e_steps, args.verifier_latency_s = min(args.e2e_steps, 2), min(args.verifier_latency_s, 0.05)
    return args


def _int_list(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"{flag}: received {text!r}, allowed: a comma list of positive integers")
    return values


# ----- analytic FLOPs -----

def forward_flops(config: dict, batch: int, image_tokens: int, text_tokens: int) -> dict[str, float]:
    """FLOPs of one transformer forward, by part (see the module docstring for the formula)."""
    B, n_img, n_txt = batch, image_tokens, text_tokens
    N = n_img + n_txt
    D = config["num_attention_heads"] * config["attention_head_dim"]
    F = MLP_RATIO * D
    c_in = config["in_channels"]
    c_out = config["patch_size"] ** 2 * c_in  # out_channels defaults to in_channels
    mlps = 2 if config["guidance_embeds"] else 1  # timestep MLP, plus guidance MLP for FLUX.1-dev
    double_linear = 2 * B * N * D * (3 * D + D + 2 * F) + 2 * (2 * B * D * 6 * D)
    single_linear = 2 * B * N * D * (3 * D + F) + 2 * B * N * (D + F) * D + 2 * B * D * 3 * D
    attention = 4 * B * N * N * D  # per block, double and single alike (joint attention over N tokens)
    return {
        "embed": 2 * B * (n_img * c_in * D + n_txt * config["joint_attention_dim"] * D)
        + mlps * 2 * B * (TIMESTEP_CHANNELS * D + D * D)
        + 2 * B * (config["pooled_projection_dim"] * D + D * D),
        "double_linear": config["num_layers"] * double_linear,
        "single_linear": config["num_single_layers"] * single_linear,
        "attention": (config["num_layers"] + config["num_single_layers"]) * attention,
        "final": 2 * B * D * 2 * D + 2 * B * n_img * D * c_out,
    }


def total_flops(config: dict, batch: int, image_tokens: int, text_tokens: int) -> float:
    return sum(forward_flops(config, batch, image_tokens, text_tokens).values())


_COUNTED: dict[tuple, tuple[int, int]] = {}


def counted_flops(setup: "Setup") -> tuple[int, int]:
    """(FLOPs, parameters) of one batch-1 forward as torch.utils.flop_counter counts them, on the
    meta device: no memory, no GPU, the same diffusers code. Checks forward_flops/parameter_count for
    FLUX.1; is the count for FLUX.2 (no hand formula)."""
    key = (setup.model, json.dumps(setup.config, sort_keys=True), setup.height, setup.width, setup.text_len)
    if key not in _COUNTED:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        meta = Setup(setup.config, "meta", setup.height, setup.width, setup.text_len, setup.matmul_size, setup.model)
        model = build_transformer(setup.config, "meta", torch.bfloat16, setup.model)
        inputs = make_inputs(meta, 1, torch.bfloat16)
        timestep = torch.ones(1, device="meta", dtype=torch.bfloat16)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(timestep=timestep, return_dict=False, **inputs)
        _COUNTED[key] = counter.get_total_flops(), sum(parameter.numel() for parameter in model.parameters())
    return _COUNTED[key]


def parameter_count(config: dict) -> int:
    """Weights + biases of the config, to size the model before building it (FLUX.1-dev: ~11.9e9)."""
    D = config["num_attention_heads"] * config["attention_head_dim"]
    F = MLP_RATIO * D
    linear = lambda i, o: i * o + o  # noqa: E731
    double = 2 * linear(D, 6 * D) + 6 * linear(D, D) + 2 * linear(D, D) + 2 * (linear(D, F) + linear(F, D))
    single = linear(D, 3 * D) + 3 * linear(D, D) + linear(D, F) + linear(D + F, D)
    norms = 4 * config["attention_head_dim"]  # RMSNorm on q, k (and added q, k) per double block
    embed = (linear(config["in_channels"], D) + linear(config["joint_attention_dim"], D)
             + (2 if config["guidance_embeds"] else 1) * (linear(TIMESTEP_CHANNELS, D) + linear(D, D))
             + linear(config["pooled_projection_dim"], D) + linear(D, D))
    final = linear(D, 2 * D) + linear(D, config["patch_size"] ** 2 * config["in_channels"])
    return (config["num_layers"] * (double + norms) + config["num_single_layers"] * (single + norms // 2)
            + embed + final)


# ----- the set-up -----

@dataclass(frozen=True)
class Setup:
    config: dict
    device: str
    height: int
    width: int
    text_len: int
    matmul_size: int
    model: str = "flux1-dev"

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.model]

    @property
    def image_tokens(self) -> int:
        return (self.height // (VAE_SCALE * PACK)) * (self.width // (VAE_SCALE * PACK))

    def flops(self, batch: int) -> float:
        if self.spec.flux2:  # counted once at batch 1; every part of a forward is linear in the batch
            return batch * counted_flops(self)[0]
        return total_flops(self.config, batch, self.image_tokens, self.text_len)

    def flops_by_part(self) -> dict[str, float]:
        if self.spec.flux2:
            return {"counted (torch.utils.flop_counter)": float(counted_flops(self)[0])}
        return forward_flops(self.config, 1, self.image_tokens, self.text_len)

    def parameters(self) -> int:
        return counted_flops(self)[1] if self.spec.flux2 else parameter_count(self.config)


@dataclass
class Row:
    mode: str
    batch: int
    step_s: float | None = None
    warmup_s: float | None = None
    peak_gib: float | None = None  # this model's weights + the row's activations
    peak_all_gib: float | None = None  # torch.cuda.max_memory_allocated: other models kept resident too
    note: str = ""


@dataclass
class Held:
    """A model kept for later rows and the end-to-end run: its resident bytes, whether compiled."""
    model: object
    bytes: int
    compiled: bool = False


@dataclass
class State:
    args: argparse.Namespace
    setup: Setup
    rows: list[Row] = field(default_factory=list)
    models: dict[str, Held] = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)
    numerics: dict = field(default_factory=dict)
    e2e: dict = field(default_factory=dict)
    low_vram: dict = field(default_factory=dict)
    strategies: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # skipped and failed things, one line each
    environment: dict = field(default_factory=dict)
    fp8_ready: bool = False
    globals_before_fp8: dict = field(default_factory=dict)
    e2e_done: bool = False
    low_vram_done: bool = False
    failed: bool = False

    def say(self, line: str) -> None:
        self.lines.append(line)
        progress(line)


def progress(line: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {line}", file=sys.stderr, flush=True)


def make_setup(args: argparse.Namespace) -> Setup:
    spec = MODELS[args.model]
    if args.cpu_smoke:
        return Setup(spec.smoke, "cpu", 128, 128, 16, 256, args.model)
    return Setup(spec.config, "cuda", args.height, args.width, args.text_len, args.matmul_size, args.model)


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(mode, batch) in the order run."""
    wanted = {"eager": True, "compiled": args.compile, "fp8+compiled": args.fp8 and args.compile, "fp8": args.fp8}
    return [(mode, batch) for mode in MODES if wanted[mode] for batch in args.batch_sizes]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def allocated(device: str) -> int:
    import torch

    return torch.cuda.memory_allocated() if device == "cuda" else 0


def build_transformer(config: dict, device: str, dtype, model_name: str = "flux1-dev"):
    """Random weights created directly on `device` in `dtype`: FLUX.1-dev is 24 GB in bf16 and would
    be 48 GB as an fp32 CPU copy, so no module is ever materialised anywhere else."""
    import diffusers
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = getattr(diffusers, MODELS[model_name].transformer_class)(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(setup: Setup, batch: int, dtype) -> dict:
    """What FluxPipeline (Flux2Pipeline, Flux2KleinPipeline) passes the transformer at each step, random."""
    import torch

    device, config = setup.device, setup.config
    h, w = setup.height // (VAE_SCALE * PACK), setup.width // (VAE_SCALE * PACK)
    if setup.spec.flux2:
        return _flux2_inputs(setup, batch, dtype, h, w)
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] += torch.arange(h)[:, None]
    img_ids[..., 2] += torch.arange(w)[None, :]
    generator = None if device == "meta" else torch.Generator(device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=generator, device=device, dtype=dtype)  # noqa: E731
    return {
        "hidden_states": randn(batch, setup.image_tokens, config["in_channels"]),
        "encoder_hidden_states": randn(batch, setup.text_len, config["joint_attention_dim"]),
        "pooled_projections": randn(batch, config["pooled_projection_dim"]),
        "guidance": torch.full((batch,), GUIDANCE_SCALE, device=device, dtype=torch.float32),
        "img_ids": img_ids.reshape(h * w, 3).to(device=device, dtype=dtype),
        "txt_ids": torch.zeros(setup.text_len, 3, device=device, dtype=dtype),
    }


def _flux2_inputs(setup: Setup, batch: int, dtype, h: int, w: int) -> dict:
    """As pipeline_flux2(_klein).py: packed latents (B, h*w, in_channels), stacked text hidden states
    (B, L, joint_attention_dim), 4-D (T, H, W, L) position ids per sample, guidance for [dev] only."""
    import torch

    device, config = setup.device, setup.config
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(setup.text_len))
    generator = None if device == "meta" else torch.Generator(device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=generator, device=device, dtype=dtype)  # noqa: E731
    inputs = {
        "hidden_states": randn(batch, h * w, config["in_channels"]),
        "encoder_hidden_states": randn(batch, setup.text_len, config["joint_attention_dim"]),
        "img_ids": img_ids.unsqueeze(0).expand(batch, -1, -1).to(device),
        "txt_ids": txt_ids.unsqueeze(0).expand(batch, -1, -1).to(device),
    }
    if setup.spec.guidance is not None:
        inputs["guidance"] = torch.full((batch,), setup.spec.guidance, device=device, dtype=torch.float32)
    return inputs


def denoise(model, inputs: dict, steps: int, device: str) -> float:
    """Run `steps` flow-matching Euler steps (as FlowMatchEulerDiscreteScheduler); seconds taken.

    Called as FluxPipeline.__call__ calls it (under torch.no_grad, joint_attention_kwargs {}), so that
    the compiled graphs are reused end to end, not compiled again.
    The sigmas run from 1 down as in a real 50-step schedule; the cost of a step does not depend on
    them, only on the shapes."""
    import torch

    latents = inputs["hidden_states"]
    batch = latents.shape[0]
    fixed = {key: value for key, value in inputs.items() if key != "hidden_states"}
    sigmas = torch.linspace(1.0, 0.0, 51).tolist()
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for index in range(steps):
            sigma, sigma_next = sigmas[index % 50], sigmas[index % 50 + 1]
            timestep = torch.full((batch,), sigma, device=device, dtype=latents.dtype)  # the pipeline's t / 1000
            noise_pred = model(hidden_states=latents, timestep=timestep, joint_attention_kwargs={}, return_dict=False,
                               **fixed)[0]
            latents = latents + (sigma_next - sigma) * noise_pred
    sync(device)
    return time.perf_counter() - start


# ----- 1. peaks -----

def _rate(call, flops: float, device: str, seconds: float) -> float:
    """TFLOP/s of `call` (flops each), repeated for about `seconds` after three warm-ups."""
    for _ in range(3):
        call()
    sync(device)
    start = time.perf_counter()
    call()
    sync(device)
    once = max(time.perf_counter() - start, 1e-6)
    iterations = max(3, min(200, int(seconds / once)))
    start = time.perf_counter()
    for _ in range(iterations):
        call()
    sync(device)
    return flops * iterations / (time.perf_counter() - start) / 1e12


def matmul_tflops(n: int, device: str, dtype, seconds: float = 2.0) -> float:
    """The card's own bf16 matmul rate: n x n x n torch.mm on random data."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return _rate(lambda: torch.mm(a, b, out=out), 2 * n**3, device, seconds)


def fp8_matmul_tflops(n: int, device: str, fast_accum: bool, seconds: float = 2.0) -> float:
    """torch._scaled_mm on float8_e4m3fn operands (A row-major, B column-major, as cuBLASLt wants),
    per-tensor float32 scales, bf16 out."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16).to(torch.float8_e4m3fn).t()
    scale = torch.ones((), device=device, dtype=torch.float32)
    call = lambda: torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16,  # noqa: E731
                                    use_fast_accum=fast_accum)
    return _rate(call, 2 * n**3, device, seconds)


def peaks_section(state: State) -> None:
    import torch

    setup = state.setup
    n = setup.matmul_size
    state.peaks["matmul_n"] = n
    state.peaks["bf16_tflops"] = matmul_tflops(n, setup.device, torch.bfloat16)
    progress(f"bf16 matmul {n}^3: {state.peaks['bf16_tflops']:.4g} TFLOP/s")
    capability = torch.cuda.get_device_capability() if setup.device == "cuda" else None
    if capability is not None and capability < FP8_MIN_CAPABILITY:
        state.say(f"fp8 matmul peak skipped: compute capability {capability[0]}.{capability[1]} has no fp8 tensor "
                  f"cores (8.9 or newer)")
        return
    try:
        state.peaks["fp8_tflops"] = fp8_matmul_tflops(n, setup.device, fast_accum=True)
        state.peaks["fp8_tflops_no_fast_accum"] = fp8_matmul_tflops(n, setup.device, fast_accum=False, seconds=1.0)
        progress(f"fp8 matmul {n}^3: {state.peaks['fp8_tflops']:.4g} TFLOP/s (fast accumulation), "
                 f"{state.peaks['fp8_tflops_no_fast_accum']:.4g} without")
    except Exception as error:  # noqa: BLE001 - an old torch or cuBLAS: say so, go on
        state.say(f"fp8 matmul peak failed: {type(error).__name__}: {first_line(error)}")


# ----- 2. transformer rows -----

def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:160].replace("|", "/")


def apply_options(state: State, model, **fields) -> None:
    """ttsf's own speed options (compile=True, quantize="fp8") on `model`, by apply_speed_options."""
    from types import SimpleNamespace

    try:
        from ttsf_core.config import RunConfig
        from ttsf_core.pipelines.speed import apply_speed_options
    except ImportError as error:  # ttsf's dependencies (pydantic) missing here: the same calls, directly
        state.say(f"ttsf_core does not import ({error}): speed options applied by the same calls directly")
        if fields.get("quantize") == "fp8":
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

            quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        if fields.get("compile"):
            model.compile_repeated_blocks(fullgraph=True)
        return
    config = RunConfig.model_validate({"verifier_args": {"name": "imagestats"}, "device": state.setup.device, **fields})
    apply_speed_options(SimpleNamespace(transformer=model), config)


def fp8_ready(state: State) -> bool:
    """Whether fp8 rows can run here; if not, one line says why."""
    import torch

    setup, args = state.setup, state.args
    if setup.device == "cuda" and torch.cuda.get_device_capability() < FP8_MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability()
        state.say(f"fp8 rows skipped: compute capability {major}.{minor}; fp8 needs 8.9 or newer")
        return False
    if importlib.util.find_spec("torchao") is None and args.install_torchao:
        progress("torchao is not installed: pip install torchao (--install-torchao)")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--retries", "0", "--timeout", "10",
                               "torchao"], capture_output=True, text=True)
        importlib.invalidate_caches()
        if done.returncode:
            state.say(f"pip install torchao failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:160]}")
    if importlib.util.find_spec("torchao") is None:
        state.say("fp8 rows skipped: torchao is not installed (pip install torchao, or carry its wheel as "
                  "BENCHMARKS.md section 3 says; --install-torchao tries pip)")
        return False
    try:
        import torchao
    except Exception as error:  # noqa: BLE001 - e.g. built for another torch
        state.say(f"fp8 rows skipped: torchao does not import ({type(error).__name__}: {first_line(error)})")
        return False
    state.environment["torchao"] = torchao.__version__
    if setup.device == "cpu":  # smoke only: torchao refuses fp8 without an fp8 card; run its path anyway
        try:
            import torchao.quantization.quant_api as quant_api

            import ttsf_core.pipelines.speed as speed

            quant_api._check_hardware_support = lambda granularity: None
            speed._check_fp8 = lambda device: None
        except (ImportError, AttributeError) as error:
            state.say(f"fp8 rows skipped on the CPU: the fp8 hardware checks could not be bypassed ({error})")
            return False
        state.say("cpu-smoke: torchao's and ttsf's fp8 hardware checks bypassed to run the fp8 path on the CPU")
    return True


def step_per_image(state: State, mode: str, batch: int | None = None) -> float:
    """Best known seconds per image per step for `mode` (at `batch` if measured there): its own rows,
    else the eager rows, else the analytic FLOPs at PRIOR_MFU of the bf16 peak."""
    done = [row for row in state.rows if row.step_s is not None]
    for candidates in ([r for r in done if r.mode == mode and r.batch == batch],
                       [r for r in done if r.mode == mode],
                       [r for r in done if r.mode == "eager"]):
        if candidates:
            return min(row.step_s / row.batch for row in candidates)
    peak = state.peaks.get("bf16_tflops") or 100.0
    return state.setup.flops(1) / (PRIOR_MFU * peak * 1e12)


def e2e_estimate(state: State, rounds: int) -> float:
    args = state.args
    images = args.e2e_prompts * sum(2 * 2 ** (r - 1) for r in range(1, rounds + 1))
    mode = args.e2e_mode if args.e2e_mode != "best" else min(
        {row.mode for row in state.rows if row.step_s is not None} or {"eager"},
        key=lambda m: step_per_image(state, m, args.e2e_batch))
    per_step = step_per_image(state, mode, args.e2e_batch)
    fixed = E2E_FIXED_S if state.setup.device == "cuda" else E2E_FIXED_S / 10  # tiny on the CPU
    return images * (args.e2e_steps * per_step + DECODE_S_PER_IMAGE) * 1.1 + fixed


def low_vram_estimate(state: State) -> float:
    args = state.args
    images = args.low_vram_images
    fixed = LOW_VRAM_FIXED_S if state.setup.device == "cuda" else LOW_VRAM_FIXED_S / 10
    return images * (args.e2e_steps * step_per_image(state, "eager", images) + DECODE_S_PER_IMAGE) + fixed


def reserve_s(state: State) -> float:
    """Seconds the sections after the transformer rows need (estimated from what was measured so far).
    The end-to-end search is reserved one round short of --e2e-rounds: the rows come first, and the
    search drops its last round when they leave too little time (it says so)."""
    if not state.args.e2e:
        return 0.0
    low = low_vram_estimate(state) if state.args.low_vram_images and not state.low_vram_done else 0.0
    rounds = max(1, state.args.e2e_rounds - 1)
    return (0.0 if state.e2e_done else e2e_estimate(state, rounds)) + low


def row_estimate(state: State, mode: str, batch: int) -> float:
    """This row's seconds: its steps at the best known per-image step time, plus compilation when the
    mode has compiled nothing yet (prior) or only its first batch size (once more, as long as that took)."""
    args = state.args
    estimate = step_per_image(state, mode, batch) * batch * (args.warmup_steps + args.timed_steps)
    if mode in COMPILE_PRIOR_S:
        same = [row for row in state.rows if row.mode == mode and row.step_s is not None]
        if not same:
            estimate += COMPILE_PRIOR_S[mode]
        elif len(same) == 1:
            estimate += same[0].warmup_s or 0.0
    return estimate


def fits(state: State, seconds: float) -> bool:
    return time.perf_counter() - T0 + seconds <= state.args.time_budget_s - reserve_s(state)


def measure(state: State, model, mode: str, batch: int, model_bytes: int) -> Row:
    """One row: warm-up steps, then timed steps; peak memory = this model's weights + the row's
    activations (other models kept resident for later rows are not counted)."""
    import torch

    setup, args = state.setup, state.args
    row = Row(mode, batch)
    inputs = None
    try:
        free_memory(setup.device)
        others = allocated(setup.device) - model_bytes
        if setup.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        inputs = make_inputs(setup, batch, torch.bfloat16)
        with sdpa_context(args.sdpa), eager_stance(state, mode):
            row.warmup_s = denoise(model, inputs, args.warmup_steps, setup.device)
            row.step_s = denoise(model, inputs, args.timed_steps, setup.device) / args.timed_steps
        if setup.device == "cuda":
            row.peak_all_gib = torch.cuda.max_memory_allocated() / 2**30
            row.peak_gib = row.peak_all_gib - others / 2**30
    except torch.OutOfMemoryError:
        row.note = "out of memory"
    except Exception as error:  # noqa: BLE001 - e.g. a compile failure: report it, go on with the next row
        row.note = f"failed: {type(error).__name__}: {first_line(error)}"
        progress(traceback.format_exc())
    finally:
        del inputs
    return row


def eager_stance(state: State, mode: str):
    """An uncompiled mode on a model compiled for an earlier mode (fp8 after fp8+compiled): the same
    model with its compiled blocks ignored. (set_stance takes effect when constructed: build it in the with.)"""
    import torch

    held = state.models.get(MODE_PARTS[mode][0])
    if held is not None and held.compiled and not MODE_PARTS[mode][1]:
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()


def sdpa_context(choice: str):
    if choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[choice]
    return sdpa_kernel(backend)


def build_held(state: State, kind: str) -> Held:
    """The model of a weights kind (bf16, or fp8 = bf16 quantized by ttsf's option), measured in memory."""
    import torch

    setup = state.setup
    free_memory(setup.device)
    before = allocated(setup.device)
    model = build_transformer(setup.config, setup.device, torch.bfloat16, setup.model)
    if kind == "fp8":
        before_fp8 = global_settings()
        apply_options(state, model, quantize="fp8")
        changed = {name: value for name, value in global_settings().items() if before_fp8.get(name) != value}
        if changed:
            state.globals_before_fp8 = before_fp8
            state.say("ttsf's --quantize fp8 (torchao's quantize_) changed process-wide "
                      f"settings: {', '.join(f'{k}={v}' for k, v in changed.items())}; later compiles pay "
                      "coordinate-descent tuning, and graphs compiled before are compiled again")
    free_memory(setup.device)
    held = Held(model, allocated(setup.device) - before)
    state.models[kind] = held
    progress(f"built the {kind} transformer ({held.bytes / 2**30:.1f} GiB)")
    return held


# What torchao's recommended_inductor_config_setter sets (ttsf passes set_inductor_config=False; checked anyway).
INDUCTOR_SETTINGS = ("coordinate_descent_tuning", "coordinate_descent_check_all_directions",
                     "force_fuse_int_mm_with_mul", "fx_graph_cache", "triton.unique_kernel_names")


def global_settings() -> dict:
    import torch
    import torch._inductor.config as inductor

    settings = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    for name in INDUCTOR_SETTINGS:
        owner, _, attribute = name.rpartition(".")
        with contextlib.suppress(AttributeError):
            settings[name] = getattr(getattr(inductor, owner) if owner else inductor, attribute)
    return settings


def restore_settings(settings: dict) -> None:
    import torch
    import torch._inductor.config as inductor

    torch.set_float32_matmul_precision(settings["float32_matmul_precision"])
    for name in INDUCTOR_SETTINGS:
        owner, _, attribute = name.rpartition(".")
        if name in settings:
            setattr(getattr(inductor, owner) if owner else inductor, attribute, settings[name])


def transformer_section(state: State) -> None:
    args = state.args
    for mode, batch in plan(args):
        kind, compiled = MODE_PARTS[mode]
        if mode != "eager" and "variants" not in state.numerics:
            numerics_reference(state)  # on the eager bf16 model, before anything compiles it
        if kind == "fp8" and not state.fp8_ready:
            state.rows.append(Row(mode, batch, note="skipped: fp8 unavailable here (see the lines below)"))
            continue
        setup_cost = FP8_SETUP_PRIOR_S if kind == "fp8" and kind not in state.models else 0.0
        if not fits(state, row_estimate(state, mode, batch) + setup_cost):
            state.rows.append(Row(mode, batch, note=f"skipped: --time-budget-s {args.time_budget_s:g}"))
            state.say(f"{mode} batch {batch} skipped: it would end past the time budget")
            continue
        try:
            held = state.models.get(kind) or build_held(state, kind)
            if compiled and not held.compiled:
                apply_options(state, held.model, compile=True)
                held.compiled = True
        except Exception as error:  # noqa: BLE001 - e.g. torchao failing: the other modes go on
            state.rows.append(Row(mode, batch, note=f"failed: {type(error).__name__}: {first_line(error)}"))
            state.say(f"{mode} could not be set up: {type(error).__name__}: {first_line(error)}")
            progress(traceback.format_exc())
            continue
        row = measure(state, held.model, mode, batch, held.bytes)
        state.rows.append(row)
        save(state)  # a run killed at its limit keeps every row measured
        progress(f"{mode} batch {batch}: " + (f"{row.step_s:.3f} s/step, warm-up {row.warmup_s:.1f} s"
                                              if row.step_s is not None else row.note))
        if row.step_s is not None and batch == min(args.batch_sizes) and mode != "eager":
            numerics_variant(state, mode, held.model)
    if "variants" not in state.numerics:
        numerics_reference(state)


# ----- 3. numerics -----

def one_forward(model, inputs: dict):
    import torch

    batch = inputs["hidden_states"].shape[0]
    timestep = torch.full((batch,), 0.5, device=inputs["hidden_states"].device, dtype=inputs["hidden_states"].dtype)
    with torch.no_grad():
        return model(timestep=timestep, joint_attention_kwargs={}, return_dict=False, **inputs)[0]


def batch_slice(inputs: dict, size: int) -> dict:
    per_image = ("hidden_states", "encoder_hidden_states", "pooled_projections", "guidance")
    return {key: value[:size].contiguous() if key in per_image or (key.endswith("_ids") and value.dim() == 3)
            else value for key, value in inputs.items()}


def errors(output, reference) -> dict:
    diff = (output.float() - reference).flatten()
    if not bool(diff.isfinite().all()):
        return {"max_abs_err": None, "rms_err": None, "non_finite": True}
    return {"max_abs_err": float(diff.abs().max()), "rms_err": float(diff.pow(2).mean().sqrt())}


def numerics_reference(state: State) -> None:
    """On the eager bf16 model: the float32 reference, eager's own error (the bf16 noise floor), the
    batch-of-2 forward's, and each attention backend's."""
    import torch

    setup = state.setup
    state.numerics.setdefault("variants", [])  # tried once
    held = state.models.get("bf16")
    if held is None or held.compiled:
        return
    model, numerics = held.model, state.numerics
    try:
        inputs2 = make_inputs(setup, 2, torch.bfloat16)
        inputs = batch_slice(inputs2, 1)
        eager = one_forward(model, inputs)
        pair = one_forward(model, inputs2)[:1]
        try:
            model.float()  # bf16 -> fp32 -> bf16 is exact: the same weights afterwards
            reference = one_forward(model, {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()})
        finally:
            model.to(torch.bfloat16)
        reference = reference.float()
        numerics.update({"inputs": inputs, "reference": reference, "eager": eager,
                         "ref_max_abs": float(reference.abs().max()),
                         "ref_rms": float(reference.pow(2).mean().sqrt())})
        eager_row = next((r for r in state.rows if r.mode == "eager" and r.batch == 1 and r.step_s is not None), None)
        add_variant(state, "eager (bf16, the noise floor)", eager, eager_row.step_s if eager_row else None)
        add_variant(state, "eager, the same image in a batch of 2", pair)
        for backend in attention_backends(state.args, setup.device):
            check_backend(state, model, backend)
    except Exception as error:  # noqa: BLE001 - numerics are a side result: say so, keep timing
        state.say(f"numerics failed: {type(error).__name__}: {first_line(error)}")
        progress(traceback.format_exc())
    free_memory(setup.device)


def add_variant(state: State, name: str, output, step_s: float | None = None) -> None:
    numerics = state.numerics
    entry = {"variant": name, **errors(output, numerics["reference"]),
             "max_abs_diff_vs_eager": float((output.float() - numerics["eager"].float()).abs().max()),
             "s_per_step_batch1": step_s}
    variants = numerics["variants"]
    floor = variants[0] if variants else None
    if entry["rms_err"] is None:
        entry["verdict"] = "non-finite output"
    elif floor is None:
        entry["verdict"] = "the floor"
    elif floor["rms_err"] is None:
        entry["verdict"] = "n/a: the floor is non-finite"
    else:
        within = entry["rms_err"] <= 1.25 * floor["rms_err"] and entry["max_abs_err"] <= 2 * floor["max_abs_err"]
        entry["verdict"] = "within bf16 noise" if within else "outside bf16 noise"
    variants.append(entry)
    progress(f"numerics {name}: max abs err {fmt(entry['max_abs_err'])}, rms err {fmt(entry['rms_err'])}, "
             f"{entry['verdict']}")


def attention_backends(args: argparse.Namespace, device: str) -> list[str]:
    text = args.attention_backends
    if text is None:
        text = "_native_cudnn,_native_flash,_native_efficient" if device == "cuda" else "_native_math"
    return [] if text.strip() == "none" else [name.strip() for name in text.split(",") if name.strip()]


def check_backend(state: State, model, backend: str) -> None:
    """ttsf's --attention_backend on the eager model: refused up front by ttsf's own check where this
    machine cannot honour it; else one forward against the reference and batch-1 steps timed."""
    import torch

    setup = state.setup
    try:
        from ttsf_core.config import RunConfig
        from ttsf_core.pipelines.speed import check_speed_options

        check_speed_options(RunConfig.model_validate({"verifier_args": {"name": "imagestats"},
                                                      "attention_backend": backend}), setup.device)
    except ImportError:
        pass  # without ttsf, diffusers says itself what it cannot run
    except Exception as error:  # noqa: BLE001 - ttsf's one-line refusal
        state.say(f"attention backend {backend} skipped: {first_line(error)}")
        return
    try:
        model.set_attention_backend(backend)
        output = one_forward(model, state.numerics["inputs"])
        inputs = make_inputs(setup, 1, torch.bfloat16)
        denoise(model, inputs, 1, setup.device)
        step_s = denoise(model, inputs, state.args.timed_steps, setup.device) / state.args.timed_steps
        add_variant(state, f"attention backend {backend}", output, step_s)
    except Exception as error:  # noqa: BLE001
        state.say(f"attention backend {backend} failed: {type(error).__name__}: {first_line(error)}")
    finally:
        model.reset_attention_backend()


def numerics_variant(state: State, mode: str, model) -> None:
    if "reference" not in state.numerics:
        return
    try:
        with eager_stance(state, mode):
            output = one_forward(model, state.numerics["inputs"])
        row = next((r for r in state.rows if r.mode == mode and r.batch == 1 and r.step_s is not None), None)
        add_variant(state, mode, output, row.step_s if row else None)
    except Exception as error:  # noqa: BLE001
        state.say(f"numerics of {mode} failed: {type(error).__name__}: {first_line(error)}")


# ----- 4. end to end -----

def choose_e2e_mode(state: State) -> str:
    args = state.args
    if args.e2e_mode != "best":
        return args.e2e_mode
    measured = {row.mode for row in state.rows if row.step_s is not None}
    return min(measured or {"eager"}, key=lambda mode: step_per_image(state, mode, args.e2e_batch))


def take_transformer(state: State, mode: str) -> tuple[object, bool]:
    """(transformer for `mode`, whether it is fresh: its options still to apply). A model kept from the
    rows is reused as it is (its compiled graphs too); every other model is freed first."""
    kind, compiled = MODE_PARTS[mode]
    if kind == "bf16" and state.globals_before_fp8:  # a bf16 ttsf run never has torchao's settings
        restore_settings(state.globals_before_fp8)
    held = state.models.get(kind)
    keep = held is not None and held.compiled == compiled
    state.models = {kind: held} if keep else {}
    del held
    free_memory(state.setup.device)
    if keep:
        return state.models[kind].model, False
    import torch

    return build_transformer(state.setup.config, state.setup.device, torch.bfloat16, state.setup.model), True


def e2e_section(state: State) -> None:
    import _gpu_e2e as e2e

    args, setup = state.args, state.setup
    low = low_vram_estimate(state) if args.low_vram_images else 0.0
    rounds = args.e2e_rounds
    while rounds >= 1 and time.perf_counter() - T0 + e2e_estimate(state, rounds) > args.time_budget_s - low:
        rounds -= 1
    if rounds < 1:
        state.e2e = {"note": f"skipped: --time-budget-s {args.time_budget_s:g}"}
        state.say("end-to-end run skipped: not even one round fits the time budget")
        return
    if rounds < args.e2e_rounds:
        state.say(f"end-to-end run: {rounds} round(s) instead of {args.e2e_rounds}, to fit the time budget")
    mode = choose_e2e_mode(state)
    kind, compiled = MODE_PARTS[mode]
    progress(f"end to end: mode {mode}, {args.e2e_prompts} prompts x {rounds} rounds, {args.e2e_steps} steps")
    transformer, fresh = take_transformer(state, mode)
    pipe = build_e2e_pipeline(state, transformer)
    with tempfile.TemporaryDirectory(prefix="gpu-flux-e2e-") as folder, \
            e2e.stand_in_registered(args.verifier_latency_s):
        config = search_config(state, pipe, Path(folder), prompts=args.e2e_prompts, rounds=rounds, pool=2,
                               compile=compiled, quantize="fp8" if kind == "fp8" else "none", low_vram=False)
        if fresh:  # as ttsf's loader: options applied to the loaded pipeline
            from ttsf_core.pipelines.speed import apply_speed_options

            apply_speed_options(pipe, config)
        result = e2e.run_search(pipe, config, setup.device)
    state.e2e = {"mode": mode, "transformer": "reused from the rows" if not fresh else "built for this run", **result}
    progress(f"end to end: {result['images']} images in {result['wall_s']:.1f} s, GPU idle {result['gpu_idle']:.1%}")
    del pipe, transformer
    state.models.clear()
    free_memory(setup.device)


# One round of each at its defaults (paths: N=2, M=2; fk: K=4), so a row is that method's own unit of work.
STRATEGY_RUNS = {"random": {"search_method": "random", "initial_pool_size": 4},
                 "zero-order": {"search_method": "zero-order", "num_neighbors": 3},
                 "paths": {"search_method": "paths"},
                 "fk": {"search_method": "fk"}}


def strategies_section(state: State) -> None:
    """Each search method once, on FLUX (random weights: the machinery at full size, not image quality):
    its NFEs and verifier calls (from its round record), wall time, GPU idle, and its best stand-in score."""
    import _gpu_e2e as e2e
    from ttsf_core.config import build_config
    from ttsf_core.resolve import resolve
    from ttsf_core.storage.records import RunLayout, iter_round_records

    args, setup = state.args, state.setup
    mode = choose_e2e_mode(state)
    kind, compiled = MODE_PARTS[mode]
    transformer, fresh = take_transformer(state, mode)
    pipe = build_e2e_pipeline(state, transformer)
    per_step = step_per_image(state, mode, args.e2e_batch)
    steps = max(args.e2e_steps, 8)  # paths need room for levels (the smoke test's 2 steps have none)
    with tempfile.TemporaryDirectory(prefix="gpu-flux-strategies-") as folder, \
            e2e.stand_in_registered(args.verifier_latency_s):
        for name, search in STRATEGY_RUNS.items():
            base = search_config(state, pipe, Path(folder) / name, prompts=1, rounds=1, pool=2, compile=compiled,
                                 quantize="fp8" if kind == "fp8" else "none", low_vram=False)
            data = base.model_dump(mode="json")
            config = build_config({**data, "search_args": {**search, "search_rounds": 1},
                                   "pipeline_call_args": {**data["pipeline_call_args"], "num_inference_steps": steps}})
            planned = resolve(config).search
            nfe = planned.nfe(1, steps) if hasattr(planned, "nfe") else planned.pool_size(1) * steps
            if not fits(state, nfe * per_step * 1.3 + 30):
                state.strategies[name] = {"note": f"skipped: about {nfe} NFEs do not fit --time-budget-s"}
                state.say(f"strategy {name} skipped: about {nfe} NFEs do not fit the time budget")
                continue
            if fresh and name == "random":
                from ttsf_core.pipelines.speed import apply_speed_options

                apply_speed_options(pipe, config)
            progress(f"strategy {name}: {nfe} NFEs planned")
            result = e2e.run_search(pipe, config, setup.device, warm_up=name == "random")
            ((_, record),) = iter_round_records(RunLayout(resolve(config)).run_dir)
            state.strategies[name] = {**result, "nfe": record.nfe, "best_score": record.best_score,
                                      "grades": record.verifier_calls + (record.path_verifier_calls or 0)}
            save(state)
    del pipe, transformer
    state.models.clear()
    free_memory(setup.device)


def build_e2e_pipeline(state: State, transformer):
    """The end-to-end pipeline around `transformer`: _gpu_e2e's FluxPipeline for FLUX.1-dev, else a
    Flux2Pipeline / Flux2KleinPipeline with a FLUX.2 VAE (full size, or the smoke test's 4-channel
    blocks) and a three-layer stand-in text encoder as wide as the real one (its three stacked layers
    are the transformer's joint_attention_dim), with the offline chat tokenizer of ttsf's tiny FLUX.2."""
    import torch

    import _gpu_e2e as e2e

    setup, device, dtype = state.setup, state.setup.device, torch.bfloat16
    if not setup.spec.flux2:
        return e2e.build_pipeline(transformer, e2e.SMOKE_VAE if state.args.cpu_smoke else e2e.FLUX_DEV_VAE,
                                  device, dtype)
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline

    from ttsf_core.pipelines import tiny

    with e2e.built_on(device, dtype):
        vae = AutoencoderKLFlux2(**FLUX2_SMOKE_VAE) if state.args.cpu_smoke else AutoencoderKLFlux2()
    tokenizer = tiny.chat_tokenizer()
    ids = tiny.special_ids(tokenizer)
    width = transformer.config.joint_attention_dim // len(E2E_TEXT_LAYERS)
    torch.manual_seed(0)
    if setup.spec.guidance is None:  # [klein]: Qwen3
        from transformers import Qwen3Config, Qwen3ForCausalLM

        text_encoder = Qwen3ForCausalLM(Qwen3Config(
            hidden_size=width, intermediate_size=256, num_hidden_layers=len(E2E_TEXT_LAYERS), num_attention_heads=4,
            num_key_value_heads=4, head_dim=64, vocab_size=len(tokenizer), max_position_embeddings=1024,
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]))
        pipeline_class, extra = Flux2KleinPipeline, {"is_distilled": True}
    else:  # [dev]: Mistral 3
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
            text_config={"model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": width,
                         "intermediate_size": 256, "num_hidden_layers": len(E2E_TEXT_LAYERS), "num_attention_heads": 4,
                         "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 1024,
                         "sliding_window": None, "bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
                         "pad_token_id": ids["pad"]},
            vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1,
                           "num_attention_heads": 4, "intermediate_size": 37, "image_size": 30, "patch_size": 6},
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], image_seq_length=4,
            image_token_index=ids["image"]))
        pipeline_class, extra = Flux2Pipeline, {}
    pipe = pipeline_class(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval().requires_grad_(False),
                          text_encoder=text_encoder.eval().requires_grad_(False).to(device, dtype),
                          tokenizer=tokenizer, transformer=transformer, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The stand-in text encoder's layers stacked into the transformer's text input (the pipelines' default
# text_encoder_out_layers need a 28- or 31-layer encoder; three of the real width give the same shapes).
E2E_TEXT_LAYERS = (1, 2, 3)
# --cpu-smoke: the FLUX.2 VAE's geometry (32 latent channels, 8x) with 4 channels a block.
FLUX2_SMOKE_VAE = {"block_out_channels": (4, 4, 4, 4), "layers_per_block": 1, "norm_num_groups": 1,
                   "sample_size": 32}


def search_config(state: State, pipe, folder: Path, **fields):
    """The run config of an end-to-end search, after writing the pipeline's weightless folder it names."""
    import _gpu_e2e as e2e

    args, setup = state.args, state.setup
    name = f"{args.model}-random-weights" if not args.cpu_smoke else f"tiny-{args.model}-random-weights"
    write = write_flux2_skeleton if setup.spec.flux2 else e2e.write_skeleton
    skeleton = write(pipe, folder / name)
    prompts_file = folder / "prompts.txt"
    prompts_file.write_text("\n".join(_common.PROMPTS) + "\n")
    config = e2e.search_config(skeleton, folder / "output", prompts_file, device=setup.device, height=setup.height,
                               width=setup.width, text_len=setup.text_len, steps=args.e2e_steps, batch=args.e2e_batch,
                               **fields)
    if not setup.spec.flux2:
        return config
    from ttsf_core.config import build_config

    call = {**config.pipeline_call_args.given(), "num_inference_steps": args.e2e_steps,
            "text_encoder_out_layers": list(E2E_TEXT_LAYERS)}
    if setup.spec.guidance is None:  # [klein] 4B is step-distilled: the card's guidance 1.0 (no CFG)
        call["guidance_scale"] = 1.0
    else:
        call["guidance_scale"] = setup.spec.guidance
    return build_config({**config.model_dump(mode="json"), "pipeline_call_args": call})


def write_flux2_skeleton(pipe, folder: Path) -> Path:
    """As _gpu_e2e.write_skeleton, for FLUX.2's one text encoder and tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)
    for name in ("transformer", "vae", "scheduler"):
        getattr(pipe, name).save_config(folder / name)
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    return folder


def low_vram_section(state: State) -> None:
    """ttsf's --use_low_gpu_vram: the loader's enable_model_cpu_offload on a plain bf16 pipeline."""
    import torch

    import _gpu_e2e as e2e

    args, setup = state.args, state.setup
    if time.perf_counter() - T0 + low_vram_estimate(state) > args.time_budget_s:
        state.low_vram = {"note": f"skipped: --time-budget-s {args.time_budget_s:g}"}
        state.say("--use_low_gpu_vram run skipped: it would end past the time budget")
        return
    state.models.clear()
    if state.globals_before_fp8:  # a plain bf16 ttsf run never has torchao's settings
        restore_settings(state.globals_before_fp8)
    free_memory(setup.device)
    transformer = build_transformer(setup.config, setup.device, torch.bfloat16, setup.model)
    pipe = build_e2e_pipeline(state, transformer)
    with tempfile.TemporaryDirectory(prefix="gpu-flux-low-vram-") as folder, \
            e2e.stand_in_registered(args.verifier_latency_s):
        config = search_config(state, pipe, Path(folder), prompts=1, rounds=1, pool=args.low_vram_images,
                               compile=False, quantize="none", low_vram=True)
        from ttsf_core.pipelines.speed import apply_speed_options

        if setup.device != "cpu":  # as ttsf's loader (load_pipeline): offload instead of .to(device)
            pipe.enable_model_cpu_offload(device=setup.device)
        else:
            state.say("cpu-smoke: model CPU offload not applied on the CPU (ttsf's loader does not either)")
        apply_speed_options(pipe, config)
        del transformer
        free_memory(setup.device)
        result = e2e.run_search(pipe, config, setup.device, warm_up=False)
    eager = next((row for row in state.rows if row.mode == "eager" and row.batch == args.low_vram_images
                  and row.step_s is not None), None)
    state.low_vram = {"mode": "eager (bf16), model CPU offload", **result,
                      "eager_row_s_per_image": eager.step_s * args.e2e_steps / eager.batch if eager else None}
    progress(f"low VRAM: {result['s_per_image']:.2f} s/image, peak {result['peak_gib'] or 0:.1f} GiB")
    del pipe
    free_memory(setup.device)


# ----- output -----

def tflops_of(state: State, row: Row) -> float:
    return state.setup.flops(row.batch) / row.step_s / 1e12


def row_dict(state: State, row: Row) -> dict:
    out = asdict(row)
    if row.step_s is not None:
        tflops = tflops_of(state, row)
        out["s_per_image"] = {str(steps): row.step_s * steps / row.batch for steps in state.args.steps}
        out["tflops"] = tflops
        out["pct_bf16_peak"] = 100 * tflops / state.peaks["bf16_tflops"] if state.peaks.get("bf16_tflops") else None
        out["pct_fp8_peak"] = (100 * tflops / state.peaks["fp8_tflops"]
                               if "fp8" in row.mode and state.peaks.get("fp8_tflops") else None)
    return out


def best_row(state: State, modes: tuple[str, ...]) -> Row | None:
    done = [row for row in state.rows if row.mode in modes and row.step_s is not None]
    return min(done, key=lambda row: row.step_s / row.batch) if done else None


def targets(state: State) -> list[dict]:
    compiled, fp8 = best_row(state, ("compiled",)), best_row(state, ("fp8+compiled", "fp8"))
    peak = state.peaks.get("bf16_tflops")
    out = []
    if compiled is not None and peak:
        share = tflops_of(state, compiled) / peak
        out.append({"target": f"transformer >= {TARGET_MFU:.0%} of the measured bf16 peak at the best batch size "
                              "(bf16, compiled)",
                    "measured": f"{share:.1%} at batch {compiled.batch}", "verdict": "met" if share >= TARGET_MFU
                    else "missed"})
    else:
        out.append({"target": f"transformer >= {TARGET_MFU:.0%} of bf16 peak (compiled)", "measured": "-",
                    "verdict": "not measured"})
    if fp8 is not None and compiled is not None:
        a, b = fp8.step_s / fp8.batch, compiled.step_s / compiled.batch
        out.append({"target": "fp8 faster than bf16 compiled (best batch each, s/image)",
                    "measured": f"{fp8.mode} batch {fp8.batch}: {a:.4f} s/step/image vs {b:.4f} ({b / a:.2f}x)",
                    "verdict": "met" if a < b else "missed"})
    else:
        out.append({"target": "fp8 faster than bf16 compiled", "measured": "-", "verdict": "not measured"})
    idle = state.e2e.get("gpu_idle")
    out.append({"target": f"end-to-end GPU idle < {TARGET_IDLE:.0%} with the stand-in verifier "
                          f"({state.args.verifier_latency_s:g} s a call)",
                "measured": f"{idle:.1%}" if idle is not None else "-",
                "verdict": "not measured" if idle is None else "met" if idle < TARGET_IDLE else "missed"})
    return out


def fmt(value, spec: str = ".3g", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def markdown(state: State, wall_s: float) -> str:
    args, setup, env, peaks = state.args, state.setup, state.environment, state.peaks
    lines = [f"## gpu_flux.py: {setup.spec.label} on {env.get('device', '?')}", "",
             f"torch {env.get('torch')}, diffusers {env.get('diffusers')}, "
             f"torchao {env.get('torchao') or 'not installed'}, "
             f"python {env.get('python')}; random bf16 weights; {setup.height}x{setup.width}, {setup.text_len} text "
             f"tokens; {setup.flops(1) / 1e12:.4g} TFLOP per image per step; wall time {wall_s:.0f} s "
             f"(budget {args.time_budget_s:g} s)", "",
             "### Matmul peaks", "", "| operands | TFLOP/s |", "|---|---|",
             f"| bf16 {peaks.get('matmul_n')}^3 torch.mm | {fmt(peaks.get('bf16_tflops'), '.4g')} |",
             f"| fp8 e4m3 {peaks.get('matmul_n')}^3 torch._scaled_mm, per-tensor scales, fast accumulation | "
             f"{fmt(peaks.get('fp8_tflops'), '.4g')} |",
             f"| the same without fast accumulation | {fmt(peaks.get('fp8_tflops_no_fast_accum'), '.4g')} |", ""]
    step_cols = [f"s/image @{steps}" for steps in args.steps]
    header = ["mode", "batch", "s/step (batch)", *step_cols, "TFLOP/s", "% bf16 peak", "% fp8 peak",
              "warm-up s (incl. compile)", "peak GiB (model / process)", "note"]
    lines += ["### Transformer denoising loop", "",
              f"{args.warmup_steps} warm-up + {args.timed_steps} timed steps a row, extrapolated; peak GiB: "
              "max_memory_allocated after a reset per row, as the row's model (its weights + the row's activations) "
              "/ the process (with the other model kept for later rows)", "",
              "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in state.rows:
        data = row_dict(state, row)
        if row.step_s is None:
            cells = [row.mode, row.batch, *["-"] * (len(header) - 3), row.note]
        else:
            cells = [row.mode, row.batch, f"{row.step_s:.3f}", *[f"{v:.2f}" for v in data["s_per_image"].values()],
                     f"{data['tflops']:.4g}", fmt(data["pct_bf16_peak"], ".0f", "%"),
                     fmt(data["pct_fp8_peak"], ".0f", "%"), f"{row.warmup_s:.1f}",
                     f"{fmt(row.peak_gib, '.1f')} / {fmt(row.peak_all_gib, '.1f')}", row.note]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    best = {mode: best_row(state, (mode,)) for mode in MODES}
    best_text = ", ".join(f"{mode} batch {row.batch}" for mode, row in best.items() if row is not None)
    lines += ["", f"best batch size by s/image: {best_text or '-'}", ""]
    numerics = state.numerics
    if numerics.get("variants"):
        lines += ["### Numerics: one forward at batch 1 against float32", "",
                  f"reference: the same weights in float32 (max abs {numerics['ref_max_abs']:.3g}, rms "
                  f"{numerics['ref_rms']:.3g}); within bf16 noise = rms error <= 1.25x and max error <= 2x the bf16 "
                  "eager model's own", "",
                  "| variant | max abs err | rms err | max abs diff vs eager | verdict | s/step batch 1 |",
                  "|---|---|---|---|---|---|"]
        for entry in numerics["variants"]:
            lines.append(f"| {entry['variant']} | {fmt(entry['max_abs_err'])} | {fmt(entry['rms_err'])} | "
                         f"{fmt(entry['max_abs_diff_vs_eager'])} | {entry['verdict']} | "
                         f"{fmt(entry['s_per_step_batch1'], '.3f')} |")
        lines.append("")
    if args.e2e:
        lines += ["### End to end: ttsf's search (runner.run, thread executor), stand-in verifier", "",
                  "| run | mode | prompts x rounds | images | steps | batch | wall s | images/s | s/image | "
                  "generating s | GPU idle | NVML busy | peak GiB | verifier calls | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, result in (("search", state.e2e), ("--use_low_gpu_vram", state.low_vram)):
            if "wall_s" not in result:
                lines.append(f"| {name} | - | - | - | - | - | - | - | - | - | - | - | - | - | "
                             f"{result.get('note', 'not run')} |")
                continue
            note = result.get("transformer", "")
            if result.get("eager_row_s_per_image"):
                note = f"eager row at batch {args.low_vram_images}: {result['eager_row_s_per_image']:.2f} s/image"
            lines.append(
                f"| {name} | {result['mode']} | {result['prompts']} x {result['rounds']} | {result['images']} | "
                f"{result['steps']} | {result['batch']} | {result['wall_s']:.1f} | "
                f"{fmt(result['images_per_s'], '.3f')} | {fmt(result['s_per_image'], '.2f')} | "
                f"{result['generating_s']:.1f} | {fmt(result['gpu_idle'], '.1%')} | "
                f"{fmt(result['nvml_utilization'], '.0%')} | {fmt(result['peak_gib'], '.1f')} | "
                f"{result['verifier_calls']} | {note} |")
        lines.append("")
    if state.strategies:
        lines += ["### Search methods, one round each (random weights: the machinery, not image quality)", "",
                  "| method | NFEs | verifier calls | images | wall s | GPU idle | best stand-in score | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, result in state.strategies.items():
            if "wall_s" not in result:
                lines.append(f"| {name} | - | - | - | - | - | - | {result.get('note', '')} |")
                continue
            lines.append(f"| {name} | {result['nfe']} | {result['grades']} | {result['images']} | "
                         f"{result['wall_s']:.1f} | {fmt(result['gpu_idle'], '.1%')} | "
                         f"{fmt(result['best_score'], '.3f')} | |")
        lines.append("")
    lines += ["### Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['verdict']} |" for t in targets(state)]
    if state.lines:
        lines += ["", "### Skipped, failed, notes", ""] + [f"- {line}" for line in state.lines]
    return "\n".join(lines) + "\n"


def finite(value):
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def out_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    folder = Path(args.out_dir or os.environ.get("OUT") or _common.REPO_ROOT / "benchmarks" / "results")
    resolve = lambda name: Path(name) if Path(name).is_absolute() else folder / name  # noqa: E731
    return resolve(args.out_json), resolve(args.out_md)


def save(state: State, final: bool = False) -> tuple[Path, Path]:
    """JSON and markdown, rewritten after every section: a run killed at its limit still leaves what it measured."""
    wall = time.perf_counter() - T0
    json_path, md_path = out_paths(state.args)
    numerics = {key: value for key, value in state.numerics.items()
                if key not in ("inputs", "reference", "eager")}
    payload = {
        "script": "benchmarks/gpu_flux.py", "argv": sys.argv[1:], "finished": final, "wall_s": wall,
        "environment": state.environment,
        "setup": {"height": state.setup.height, "width": state.setup.width, "text_len": state.setup.text_len,
                  "tflop_per_image_step": state.setup.flops(1) / 1e12,
                  "model": state.setup.model, "hub_id": state.setup.spec.hub_id,
                  "flops_by_part": state.setup.flops_by_part(),
                  "warmup_steps": state.args.warmup_steps, "timed_steps": state.args.timed_steps,
                  "time_budget_s": state.args.time_budget_s},
        "peaks": state.peaks,
        "transformer_rows": [row_dict(state, row) for row in state.rows],
        "numerics": numerics, "e2e": state.e2e, "e2e_low_vram": state.low_vram, "strategies": state.strategies,
        "targets": targets(state), "lines": state.lines,
    }
    for path in (json_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(finite(payload), indent=2, default=str) + "\n")
    md_path.write_text(markdown(state, wall))
    return json_path, md_path


# ----- dry run -----

def print_flops(args: argparse.Namespace, setup: Setup) -> None:
    parts = setup.flops_by_part()
    total = sum(parts.values())
    counted, parameters = counted_flops(setup)
    print(f"{setup.spec.label} transformer: {parameters / 1e9:.2f} B parameters ({parameters * 2 / 2**30:.1f} GiB in "
          f"bf16; formula: {setup.parameters() / 1e9:.2f} B); {setup.height}x{setup.width} -> "
          f"{setup.image_tokens} image tokens + {setup.text_len} text tokens")
    print(f"FLOP check: torch.utils.flop_counter counts {counted / 1e12:.6g} TFLOP for one batch-1 forward of the "
          f"model on the meta device; the {'count' if setup.spec.flux2 else 'analytic formula'} used gives "
          f"{total / 1e12:.6g} TFLOP")
    print(f"{'counted' if setup.spec.flux2 else 'analytic'} FLOPs of one forward, per image (2 FLOPs per "
          "multiply-add):")
    print("| part | TFLOP | share |\n|---|---|---|")
    for name, value in parts.items():
        print(f"| {name} | {value / 1e12:.4g} | {100 * value / total:.1f}% |")
    print(f"| **total per step** | **{total / 1e12:.4g}** | 100% |")
    for steps in args.steps:
        print(f"per image, {steps} steps: {total * steps / 1e12:.4g} TFLOP")


def print_plan(args: argparse.Namespace, setup: Setup) -> None:
    print(f"plan (budget {args.time_budget_s:g} s from the start; rows that would end later are skipped):")
    print(f"  1. peaks: bf16 {setup.matmul_size}^3 torch.mm; fp8 e4m3 {setup.matmul_size}^3 torch._scaled_mm "
          "(per-tensor scales, with and without fast accumulation; compute capability >= 8.9)")
    print(f"  2. transformer: {len(plan(args))} rows, each {args.warmup_steps} warm-up + {args.timed_steps} timed "
          f"steps, per-step time extrapolated to {', '.join(map(str, args.steps))} steps; SDPA {args.sdpa}")
    for mode, batch in plan(args):
        print(f"  {mode:>14} batch {batch}: {setup.flops(batch) / 1e12:.4g} TFLOP per step")
    print("  3. numerics: one batch-1 forward of eager, a batch of 2, attention backends "
          f"({', '.join(attention_backends(args, setup.device)) or 'none'}) and each mode against float32")
    if args.e2e:
        images = args.e2e_prompts * sum(2 * 2 ** (r - 1) for r in range(1, args.e2e_rounds + 1))
        print(f"  4. end to end: runner.run, {args.e2e_prompts} prompts x {args.e2e_rounds} rounds = {images} images "
              f"at {setup.height}x{setup.width}, {args.e2e_steps} steps, batch {args.e2e_batch}, mode {args.e2e_mode}, "
              f"stand-in verifier {args.verifier_latency_s:g} s a call; then --use_low_gpu_vram: "
              f"{args.low_vram_images} images in one call")
    json_path, md_path = out_paths(args)
    print(f"  results: {json_path} and {md_path}")


# ----- main -----

def environment(setup: Setup) -> dict:
    import diffusers
    import torch
    import transformers

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "torchao": None, "cpu_smoke": setup.device == "cpu"}
    if setup.device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        env.update({"device": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
                    "cuda": torch.version.cuda, "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30})
    else:
        env["device"] = "CPU (smoke test: tiny configs, not a benchmark)"
    return env


def section(state: State, name: str, function) -> None:
    try:
        function(state)
    except Exception as error:  # noqa: BLE001 - one section failing must not lose the others' results
        state.failed = True
        state.say(f"{name} failed: {type(error).__name__}: {first_line(error)}")
        progress(traceback.format_exc())
    save(state)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = make_setup(args)
    if args.dry_run:
        print_plan(args, setup)
        print_flops(args, setup)
        return 0
    import torch

    if setup.device == "cuda" and not torch.cuda.is_available():
        print("gpu_flux.py: no CUDA device is available (torch.cuda.is_available() is False); this benchmark "
              "needs one GPU. Use --dry-run to see the plan and the analytic FLOP count, --cpu-smoke to test the "
              "script.", file=sys.stderr)
        return NO_CUDA_EXIT
    if setup.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        weights = setup.parameters() * 2
        if free < weights * 1.15:  # weights plus room for a batch-1 step
            print(f"gpu_flux.py: the GPU has {free / 2**30:.1f} GiB free; the bf16 weights alone take "
                  f"{weights / 2**30:.1f} GiB. Use a card with more free memory.", file=sys.stderr)
            return NO_CUDA_EXIT
    _common.quiet_libraries()
    # Several models are compiled in one process here (bf16 and fp8, two block types each, static then
    # dynamic batch): more cache entries than one ttsf run makes; never fall back to eager for that.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    state = State(args, setup, environment=environment(setup))
    progress(f"{state.environment['device']}: torch {state.environment['torch']}, diffusers "
             f"{state.environment['diffusers']}")
    if args.e2e:
        try:
            importlib.import_module("ttsf_core.usecases.runner")
        except ImportError as error:
            state.say(f"ttsf_core does not import ({error}): the end-to-end runs will fail; carry ttsf's missing "
                      "packages as wheels (BENCHMARKS.md section 3)")
    state.fp8_ready = args.fp8 and fp8_ready(state)
    section(state, "peaks", peaks_section)
    section(state, "transformer", transformer_section)
    if args.e2e:
        section(state, "end to end", e2e_section)
        state.e2e_done = True
        if args.low_vram_images:
            section(state, "--use_low_gpu_vram", low_vram_section)
        state.low_vram_done = True
    if args.strategies:
        section(state, "strategies", strategies_section)
    json_path, md_path = save(state, final=True)
    print(markdown(state, time.perf_counter() - T0))
    progress(f"wrote {json_path} and {md_path}")
    return FAILED_EXIT if state.failed else 0


if __name__ == "__main__":
    sys.exit(main())
