"""Generation throughput on a scaled tiny FLUX (CPU): batching, and encoding the prompt once.

Measured side by side in one process, interleaved, median of several repeats:

  (a) images/s of ttsf's CandidateGenerator at batch 4 and 8 vs batch 1 (tt-scale-flux's default
      `batch_size_for_img_gen`); every variant encodes its prompt once.
  (b) prompt encoded once (CandidateGenerator, batch 1) vs encoded on every call: a baseline that
      calls the pipeline with `prompt=` text per candidate, as tt-scale-flux's sample() does.

Every variant gets the same latents (ttsf_core.noise.draw_latents), so the images must agree: the
table reports the largest 8-bit pixel difference against ttsf at batch 1.

    python benchmarks/bench_generation.py            # defaults: a few tens of seconds on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ttsf_core.resolve import resolve
import _common  # noqa: E402  (puts the repo root on sys.path)

PROMPT = "a photo of an astronaut riding a horse on the moon"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Images/s of batched vs one-at-a-time generation, and encode-once vs encode-per-call, "
        "on a tiny FLUX built offline (CPU, fp32). Prints ratios measured side by side."
    )
    _common.add_tiny_model_args(parser)
    parser.add_argument("--images", type=int, default=16, help="images per measurement (a round-4 pool is 16)")
    parser.add_argument("--batch-sizes", default="4,8", help="batched sizes to compare with batch 1")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant; the median is kept")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip()]
    return args


def make_config(args: argparse.Namespace, model_dir: Path, batch_size: int):
    from ttsf_core.config import build_config

    return build_config(_common.tiny_model_fields(args, model_dir) | {"batch_size_for_img_gen": batch_size})


def ours(pipe, config, seeds: list[int]):
    """ttsf: a fresh generator (so its one prompt encoding is inside the timing), batched calls."""
    from ttsf_core.engine.generate import CandidateGenerator, seed_candidates

    candidates = seed_candidates(seeds, config.pipeline_call_args.num_inference_steps)
    return CandidateGenerator(pipe, resolve(config)).generate(PROMPT, candidates)


def encode_per_call(pipe, config, seeds: list[int]):
    """tt-scale-flux's way: one pipeline call per candidate with the prompt TEXT, so the text
    encoders run again for every image. Same latents as ttsf, so the images must match."""
    from ttsf_core.noise import draw_latents

    args = config.pipeline_call_args
    latents = draw_latents(pipe, seeds, args.height, args.width)
    images = []
    for index in range(len(seeds)):
        images.append(_common.one_call_per_image(pipe, PROMPT, latents[index : index + 1], args))
    return images


@dataclass
class Timings:
    """Per variant, per repeat: wall and calling-thread CPU seconds."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str, kind: str = "wall") -> float:
        return _common.median(getattr(self, kind)[name])

    def ratio(self, slow: str, fast: str, kind: str = "wall") -> float:
        """Median over repeats of slow/fast, each pair timed in the same repeat (close in time)."""
        values = getattr(self, kind)
        return _common.median([a / b for a, b in zip(values[slow], values[fast])])


def measure(variants: dict, seeds: list[int], repeats: int) -> tuple[Timings, dict]:
    """Variants run interleaved, in a rotating order, so that a noisy neighbour on the machine slows
    all of them alike rather than whichever happened to run then."""
    names = list(variants)
    for name in names:  # warm-up: first calls pay one-off allocator and kernel-selection costs
        variants[name](seeds)
    timings = Timings({name: [] for name in names}, {name: [] for name in names})
    images: dict[str, list] = {}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            wall, cpu, images[name] = _common.timed_cpu(variants[name], seeds)
            timings.wall[name].append(wall)
            timings.cpu[name].append(cpu)
    return timings, images


def encode_seconds(pipe, max_sequence_length: int, repeats: int) -> float:
    """The text encoders alone. The device is passed, as the pipeline call passes it: without it,
    encode_prompt asks pipe._execution_device, which walks every module (~8 ms here)."""
    import torch

    def encode():
        pipe.encode_prompt(PROMPT, PROMPT, device=torch.device("cpu"), max_sequence_length=max_sequence_length)

    with torch.no_grad():
        encode()
        return _common.median([_common.timed(encode)[0] for _ in range(repeats)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    _common.quiet_libraries()
    from ttsf_core.noise import round_seeds

    with tempfile.TemporaryDirectory(prefix="ttsf-bench-gen-") as folder:
        model_dir = _common.build_tiny_model(Path(folder), args.width_multiplier, args.num_layers)
        pipe = _common.load_tiny_pipeline(model_dir)
        seeds = round_seeds(args.seed, PROMPT, 4, args.images)
        configs = {size: make_config(args, model_dir, size) for size in [1, *args.batch_sizes]}
        variants = {f"ttsf batch {size}": (lambda s, c=configs[size]: ours(pipe, c, s)) for size in configs}
        variants["encode per call, batch 1"] = lambda s: encode_per_call(pipe, configs[1], s)
        timings, images = measure(variants, seeds, args.repeats)
        encode_s = encode_seconds(pipe, args.max_sequence_length, args.repeats)
        device_s = _common.median([_common.timed(lambda: pipe._execution_device)[0] for _ in range(args.repeats)])

    print(_common.machine_line(args.threads))
    print(f"model: tiny FLUX width x{args.width_multiplier}, {args.num_layers}+{args.num_layers} blocks, "
          f"{args.resolution}x{args.resolution}, {args.steps} steps, max_sequence_length "
          f"{args.max_sequence_length}, fp32; {args.images} images a measurement, median of {args.repeats}")
    print_table(args, timings, images)
    print_ratios(args, timings, encode_s)
    print(f"context: reading pipe._execution_device takes {1000 * device_s:.1f} ms here (diffusers walks every "
          "module); ttsf's CandidateGenerator reads it once when built, the pipeline call once per batch.")
    return 0


BASELINE = "encode per call, batch 1"


def print_table(args, timings: Timings, images: dict) -> None:
    reference = images["ttsf batch 1"]
    rows = []
    for name in timings.wall:
        per_call = name == BASELINE
        wall = timings.median(name)
        rows.append([
            name + (" (tt-scale-flux)" if per_call else ""),
            args.images if per_call else 1,
            f"{1000 * wall / args.images:.1f}",
            f"{1000 * timings.median(name, 'cpu') / args.images:.1f}",
            f"{args.images / wall:.2f}",
            f"{timings.ratio(BASELINE, name):.2f}x ({timings.ratio(BASELINE, name, 'cpu'):.2f}x)",
            _common.max_pixel_diff(images[name], reference),
        ])
    header = ["variant", "prompt encodings", "wall ms / image", "CPU ms / image", "images / s",
              "speed vs tt-scale-flux way: wall (CPU)", "max abs pixel diff vs ttsf batch 1 (0-255)"]
    print(_common.markdown_table(header, rows))


def print_ratios(args, timings: Timings, encode_s: float) -> None:
    both = lambda slow, fast: (f"{timings.ratio(slow, fast):.2f}x images/s by wall time, "  # noqa: E731
                               f"{timings.ratio(slow, fast, 'cpu'):.2f}x by CPU time")
    print()
    for size in args.batch_sizes:
        print(f"(a) batching: batch {size} vs batch 1 (both encode once): {both('ttsf batch 1', f'ttsf batch {size}')}")
    print(f"(b) encode once vs once per candidate (both batch 1): {both(BASELINE, 'ttsf batch 1')}")
    default = 4 if 4 in args.batch_sizes else args.batch_sizes[0]
    print(f"    ttsf default (batch {default}, encode once) vs tt-scale-flux way: {both(BASELINE, f'ttsf batch {default}')}")
    wall, cpu = sum(sum(v) for v in timings.wall.values()), sum(sum(v) for v in timings.cpu.values())
    print(f"machine contention: the timed runs got {100 * cpu / wall:.0f}% of a core (100% on a quiet machine); "
          "CPU-time ratios are not affected by other processes, wall-time ratios are.")
    share = encode_s / (timings.median(BASELINE) / args.images)
    print(f"context: one prompt encoding takes {1000 * encode_s:.1f} ms = {100 * share:.0f}% of a tt-scale-flux-way "
          "image here. For FLUX.1-dev it is far less: T5-XXL on 512 tokens is ~5 TFLOP against ~74 TFLOP per "
          "1024px denoising step (benchmarks/gpu_flux.py --dry-run), i.e. <0.5% of a 30-50 step image.")


if __name__ == "__main__":
    sys.exit(main())
