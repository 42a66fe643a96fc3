"""FLUX.1-dev's transformer on one GPU: seconds per image of the denoising loop, achieved TFLOP/s.

Builds FluxTransformer2DModel with FLUX.1-dev's published configuration and random bf16 weights
directly on the GPU (no download, no fp32 copy anywhere), then times the denoising loop at
1024x1024 - packed latents (B, 4096, 64), 512 T5 tokens of width 4096, pooled CLIP 768, guidance
embedding - for each batch size, eager (SDPA) and optionally torch.compile'd.

Time-boxed (the whole script is meant to finish in < 8 min on one H100/H200): every denoising step
of a 1024px image has the same shapes and so the same cost, so each configuration times a few steps
after a warm-up and the per-step time is extrapolated to 30 and 50 steps. Text encoding (once per
prompt) and VAE decoding (once per image) are NOT included: this is the transformer loop only.

FLOPs per forward (counted analytically from the config, 2 FLOPs per multiply-add; norms,
activations, RoPE, softmax and residual adds are not counted, as usual for MFU):
    D = heads x head_dim = 3072, F = 4D (MLP), N = N_img + N_txt = 4096 + 512 tokens, B = batch
    double-stream block (x19): QKV 2BN*D*3D + out-proj 2BN*D*D + MLP 2BN*2*D*F = 24*B*N*D^2
                               attention QK^T and PV 4*B*N^2*D, AdaLN-zero 2 x 2B*D*6D
    single-stream block (x38): QKV 2BN*D*3D + MLP-in 2BN*D*F + proj_out 2BN*(D+F)*D = 24*B*N*D^2
                               attention 4*B*N^2*D, AdaLN 2B*D*3D
    plus x_embedder 2B*N_img*64*D, context_embedder 2B*N_txt*4096*D, timestep/guidance/pooled MLPs,
    norm_out 2B*D*2D and proj_out 2B*N_img*D*64.
    -> about 74 TFLOP per image per step at 1024px (run --dry-run for the exact figure).
Achieved TFLOP/s is set against the card's own measured bf16 matmul rate (an 8192^3 torch.mm).

    python benchmarks/gpu_flux.py --dry-run               # plan and FLOP count, no GPU needed
    python benchmarks/gpu_flux.py                         # eager, batch 1/2/4/8, 30 and 50 steps
    python benchmarks/gpu_flux.py --compile               # plus torch.compile (regional by default)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the weights are random

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
TIMESTEP_CHANNELS = 256  # diffusers' Timesteps(num_channels=256) in CombinedTimestep*Embeddings
MLP_RATIO = 4
VAE_SCALE, PACK = 8, 2  # FLUX's VAE downsamples 8x; latents are packed in 2x2 patches
GUIDANCE_SCALE = 3.5
NO_CUDA_EXIT = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seconds per image of FLUX.1-dev's transformer denoising loop (random bf16 weights, no "
        "download) and achieved TFLOP/s vs the card's measured bf16 matmul rate. Markdown table on stdout.")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="comma list of batch sizes")
    parser.add_argument("--steps", default="30,50", help="comma list of step counts to report (extrapolated)")
    parser.add_argument("--height", type=int, default=1024, help="image height in pixels (multiple of 16)")
    parser.add_argument("--width", type=int, default=1024, help="image width in pixels (multiple of 16)")
    parser.add_argument("--text-len", type=int, default=512, help="T5 tokens (max_sequence_length)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per configuration")
    parser.add_argument("--timed-steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd configurations")
    parser.add_argument("--compile-scope", choices=("regional", "full"), default="regional",
                        help="regional: compile the repeated blocks only (diffusers' compile_repeated_blocks; "
                        "compiles in a fraction of the time, similar speed); full: the whole transformer")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's default)")
    parser.add_argument("--sdpa", choices=("auto", "flash", "efficient", "cudnn", "math"), default="auto",
                        help="SDPA backend (auto: PyTorch picks; flash attention for bf16 on H100)")
    parser.add_argument("--matmul-size", type=int, default=8192, help="n of the n x n x n bf16 reference matmul")
    parser.add_argument("--time-budget-s", type=float, default=420.0,
                        help="skip configurations that would end past this many seconds from the start")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and analytic FLOPs; no GPU needed")
    parser.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)  # tiny model on CPU
    args = parser.parse_args(argv)
    args.batch_sizes = _int_list(parser, "--batch-sizes", args.batch_sizes)
    args.steps = _int_list(parser, "--steps", args.steps)
    for name in ("height", "width"):
        if getattr(args, name) % (VAE_SCALE * PACK):
            parser.error(f"--{name}: received {getattr(args, name)}, allowed: a multiple of {VAE_SCALE * PACK}")
    if args.timed_steps < 1 or args.warmup_steps < 0:
        parser.error("--timed-steps must be >= 1 and --warmup-steps >= 0")
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


def counted_flops(setup: "Setup") -> tuple[int, int]:
    """(FLOPs, parameters) of one batch-1 forward as torch.utils.flop_counter counts them, on the
    meta device: no memory, no GPU, the same diffusers code. Checks forward_flops/parameter_count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = Setup(setup.config, "meta", setup.height, setup.width, setup.text_len, setup.matmul_size)
    model = build_transformer(setup.config, "meta", torch.bfloat16)
    inputs = make_inputs(meta, 1, torch.bfloat16)
    timestep = torch.ones(1, device="meta", dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(timestep=timestep, return_dict=False, **inputs)
    return counter.get_total_flops(), sum(parameter.numel() for parameter in model.parameters())


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


# ----- the run -----

@dataclass(frozen=True)
class Setup:
    config: dict
    device: str
    height: int
    width: int
    text_len: int
    matmul_size: int

    @property
    def image_tokens(self) -> int:
        return (self.height // (VAE_SCALE * PACK)) * (self.width // (VAE_SCALE * PACK))


@dataclass
class Row:
    mode: str
    batch: int
    step_s: float | None = None
    warmup_s: float | None = None
    peak_gib: float | None = None
    note: str = ""


def make_setup(args: argparse.Namespace) -> Setup:
    if args.cpu_smoke:
        return Setup(SMOKE, "cpu", 128, 128, 16, 256)
    return Setup(FLUX_DEV, "cuda", args.height, args.width, args.text_len, args.matmul_size)


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(mode, batch) in the order run: every eager configuration first, then the compiled ones."""
    modes = ["eager"] + ([f"compiled ({args.compile_scope})"] if args.compile else [])
    return [(mode, batch) for mode in modes for batch in args.batch_sizes]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def build_transformer(config: dict, device: str, dtype):
    """Random weights created directly on `device` in `dtype`: FLUX.1-dev is 24 GB in bf16 and would
    be 48 GB as an fp32 CPU copy, so no module is ever materialised anywhere else."""
    import torch
    from diffusers import FluxTransformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(setup: Setup, batch: int, dtype) -> dict:
    """What FluxPipeline passes the transformer at each step (see pipeline_flux.py), random."""
    import torch

    device, config = setup.device, setup.config
    h, w = setup.height // (VAE_SCALE * PACK), setup.width // (VAE_SCALE * PACK)
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


def denoise(model, inputs: dict, steps: int, device: str) -> float:
    """Run `steps` flow-matching Euler steps (as FlowMatchEulerDiscreteScheduler); seconds taken.

    The sigmas run from 1 down as in a real 50-step schedule; the cost of a step does not depend on
    them, only on the shapes."""
    import torch

    latents = inputs["hidden_states"]
    batch = latents.shape[0]
    fixed = {key: value for key, value in inputs.items() if key != "hidden_states"}
    sigmas = torch.linspace(1.0, 0.0, 51).tolist()
    sync(device)
    start = time.perf_counter()
    for index in range(steps):
        sigma, sigma_next = sigmas[index % 50], sigmas[index % 50 + 1]
        timestep = torch.full((batch,), sigma, device=device, dtype=latents.dtype)  # the pipeline's t / 1000
        noise_pred = model(hidden_states=latents, timestep=timestep, return_dict=False, **fixed)[0]
        latents = latents + (sigma_next - sigma) * noise_pred
    sync(device)
    return time.perf_counter() - start


def matmul_tflops(n: int, device: str, dtype, seconds: float = 2.0) -> float:
    """The card's own bf16 matmul rate: n x n x n torch.mm, repeated for about `seconds`."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    sync(device)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    sync(device)
    once = max(time.perf_counter() - start, 1e-6)
    iterations = max(3, min(200, int(seconds / once)))
    start = time.perf_counter()
    for _ in range(iterations):
        torch.mm(a, b, out=out)
    sync(device)
    return 2 * n**3 * iterations / (time.perf_counter() - start) / 1e12


def sdpa_context(choice: str):
    import contextlib

    if choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[choice]
    return sdpa_kernel(backend)


def compiled_copy(model, args: argparse.Namespace):
    """torch.compile applied in place (regional) or as a wrapper (full); eager rows are done first."""
    import torch

    options = {"mode": args.compile_mode} if args.compile_mode else {}
    if args.compile_scope == "regional":
        model.compile_repeated_blocks(fullgraph=True, **options)
        return model
    # The top-level forward has Python-side checks (logging, LoRA scale) that may break the graph.
    return torch.compile(model, fullgraph=False, **options)


def measure(model, setup: Setup, args: argparse.Namespace, mode: str, batch: int, dtype) -> Row:
    import torch

    row = Row(mode, batch)
    try:
        if setup.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        inputs = make_inputs(setup, batch, dtype)
        with torch.inference_mode(), sdpa_context(args.sdpa):
            # The first call pays kernel selection (and, compiled, the compilation) for this shape.
            row.warmup_s = denoise(model, inputs, max(1, args.warmup_steps), setup.device)
            row.step_s = denoise(model, inputs, args.timed_steps, setup.device) / args.timed_steps
        if setup.device == "cuda":
            row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        row.note = "out of memory"
    except Exception as error:  # noqa: BLE001 - e.g. a compile failure: report it, go on with the next row
        if mode == "eager":
            raise
        message = (str(error).splitlines() or [""])[0][:120].replace("|", "/")
        row.note = f"failed: {type(error).__name__}: {message}"
    return row


def should_skip(rows: list[Row], mode: str, batch: int, started: float, budget_s: float, steps_per_row: int) -> bool:
    """Skip when this row's estimated cost would end past the budget: the last row's per-image step
    time scaled to this batch, plus (compiled) the last compile time or 150 s for the first."""
    same_mode = [row for row in rows if row.mode == mode and row.step_s is not None]
    any_done = [row for row in rows if row.step_s is not None]
    reference = (same_mode or any_done or [None])[-1]
    estimate = 0.0 if reference is None else reference.step_s / reference.batch * batch * steps_per_row
    if mode != "eager":
        estimate += max((row.warmup_s or 0.0) for row in same_mode) if same_mode else 150.0
    return time.perf_counter() - started + estimate > budget_s


def run(args: argparse.Namespace, setup: Setup, started: float) -> tuple[list[Row], float, str]:
    import torch

    dtype = torch.bfloat16
    device_name = torch.cuda.get_device_name() if setup.device == "cuda" else "CPU (smoke test)"
    peak = matmul_tflops(setup.matmul_size, setup.device, dtype)
    model = build_transformer(setup.config, setup.device, dtype)
    rows: list[Row] = []
    compiled = False
    steps_per_row = max(1, args.warmup_steps) + args.timed_steps
    for mode, batch in plan(args):
        if should_skip(rows, mode, batch, started, args.time_budget_s, steps_per_row):
            rows.append(Row(mode, batch, note=f"skipped: --time-budget-s {args.time_budget_s:g}"))
            continue
        if mode != "eager" and not compiled:
            model, compiled = compiled_copy(model, args), True
        rows.append(measure(model, setup, args, mode, batch, dtype))
        print(f"  done: {mode} batch {batch} at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows, peak, device_name


# ----- output -----

def print_flops(args: argparse.Namespace, setup: Setup) -> None:
    parts = forward_flops(setup.config, 1, setup.image_tokens, setup.text_len)
    total = sum(parts.values())
    counted, parameters = counted_flops(setup)
    print(f"transformer: {parameters / 1e9:.2f} B parameters ({parameters * 2 / 2**30:.1f} GiB in bf16; "
          f"formula: {parameter_count(setup.config) / 1e9:.2f} B); {setup.height}x{setup.width} -> "
          f"{setup.image_tokens} image tokens + {setup.text_len} text tokens")
    print(f"FLOP check: torch.utils.flop_counter counts {counted / 1e12:.6g} TFLOP for one batch-1 forward of the "
          f"model on the meta device; the analytic formula gives {total / 1e12:.6g} TFLOP")
    print("analytic FLOPs of one forward, per image (2 FLOPs per multiply-add):")
    print("| part | TFLOP | share |\n|---|---|---|")
    for name, value in parts.items():
        print(f"| {name} | {value / 1e12:.4g} | {100 * value / total:.1f}% |")
    print(f"| **total per step** | **{total / 1e12:.4g}** | 100% |")
    for steps in args.steps:
        print(f"per image, {steps} steps: {total * steps / 1e12:.4g} TFLOP")


def print_plan(args: argparse.Namespace, setup: Setup) -> None:
    print(f"plan: {len(plan(args))} configurations, each {max(1, args.warmup_steps)} warm-up + {args.timed_steps} "
          f"timed steps, per-step time extrapolated to {', '.join(map(str, args.steps))} steps; "
          f"SDPA backend {args.sdpa}; reference matmul {setup.matmul_size}^3 bf16; budget {args.time_budget_s:g} s")
    for mode, batch in plan(args):
        flops = total_flops(setup.config, batch, setup.image_tokens, setup.text_len)
        print(f"  {mode:>20} batch {batch}: {flops / 1e12:.4g} TFLOP per step")


def print_table(args: argparse.Namespace, setup: Setup, rows: list[Row], peak: float) -> None:
    step_cols = [f"s/image @{steps} steps" for steps in args.steps]
    header = ["mode", "batch", "s/step (whole batch)", *step_cols, "achieved TFLOP/s", "% of matmul rate",
              "warm-up s (incl. compile)", "peak GiB (incl. weights)", "note"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        if row.step_s is None:
            cells = [row.mode, row.batch, *["-"] * (len(header) - 3), row.note]
        else:
            tflops = total_flops(setup.config, row.batch, setup.image_tokens, setup.text_len) / row.step_s / 1e12
            cells = [row.mode, row.batch, f"{row.step_s:.3f}",
                     *[f"{row.step_s * steps / row.batch:.2f}" for steps in args.steps],
                     f"{tflops:.3g}", f"{100 * tflops / peak:.0f}%", f"{row.warmup_s:.1f}",
                     f"{row.peak_gib:.1f}" if row.peak_gib is not None else "-", row.note]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    setup = make_setup(args)
    if args.dry_run:
        print_plan(args, setup)
        print_flops(args, setup)
        return 0
    import torch

    if setup.device == "cuda" and not torch.cuda.is_available():
        print("gpu_flux.py: no CUDA device is available (torch.cuda.is_available() is False); this benchmark "
              "needs one GPU. Use --dry-run to see the plan and the analytic FLOP count.", file=sys.stderr)
        return NO_CUDA_EXIT
    if setup.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        weights = parameter_count(setup.config) * 2
        if free < weights * 1.15:  # weights plus room for a batch-1 step
            print(f"gpu_flux.py: the GPU has {free / 2**30:.1f} GiB free; the bf16 weights alone take "
                  f"{weights / 2**30:.1f} GiB. Use a card with more free memory.", file=sys.stderr)
            return NO_CUDA_EXIT
    import diffusers

    rows, peak, device_name = run(args, setup, started)
    print(f"## FLUX.1-dev transformer denoising loop on {device_name}\n")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, bf16, random weights; "
          f"measured bf16 matmul rate ({setup.matmul_size}^3 torch.mm): **{peak:.4g} TFLOP/s**\n")
    print_flops(args, setup)
    print()
    print_table(args, setup, rows, peak)
    print(f"\ns/image = per-step time of the batch x steps / batch, from {args.timed_steps} timed steps after "
          f"{max(1, args.warmup_steps)} warm-up steps, extrapolated (every step has the same shapes). Transformer "
          f"loop only: no text encoding, no VAE decode. Wall time for the whole script: "
          f"{time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
