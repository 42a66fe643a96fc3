"""Grading throughput of the local verifiers: images/s one image per call vs a call per batch.

For each local verifier (clip, pickscore, laion_aesthetic, image_reward, qwen, imagestats) the same
images are graded two ways, side by side in one process, interleaved, median of several repeats:

  batch 1   one `score(prompt, [image])` call per image (tt-scale-flux's way: the prompt is encoded
            again for every image)
  batched   one `score(prompt, chunk)` call per chunk of the verifier's batch size (what the search
            engine sends: `verifier_batch_size`), the prompt encoded once per call

and the table also gives the largest |score difference| between the two ways (float batching).

CPU mode (default): the tiny models of tests/tiny_rewards.py (built offline under a fixed seed, saved,
loaded back through each verifier's real path) and test_qwen's tiny Qwen2.5-VL with its answers forced
to a valid grading JSON; fp32, one torch thread.

    python benchmarks/bench_verifiers.py                 # about 1-2 minutes on 2 cores

GPU mode (prepared for a machine with a CUDA GPU; not run yet): the published architectures, built
from their configs' shapes (written below, PUBLISHED) with random weights, saved and loaded the same
way, fp16, 1024x1024 images (FLUX's size). qwen is left out: its real tokenizer cannot be built
offline, and with random weights it would not answer in JSON anyway.

    python benchmarks/bench_verifiers.py --gpu           # a few minutes, ~10 GB of disk for the models
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repo root and tests/ on sys.path)

PROMPT = "a red fox sleeping under a maple tree in autumn"
LOCAL = ("clip", "pickscore", "laion_aesthetic", "image_reward", "qwen", "imagestats")

# The published architectures (their config.json / the reference code), for --gpu.
PUBLISHED = {
    # openai/clip-vit-large-patch14 (clip's default; laion_aesthetic's CLIP)
    "clip-vit-large-patch14": {
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"),
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="quick_gelu"),
        "projection_dim": 768,
    },
    # yuvalkirstain/PickScore_v1 (CLIP ViT-H/14, laion/CLIP-ViT-H-14-laion2B-s32B-b79K's shapes)
    "pickscore-vit-h-14": {
        "text": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     max_position_embeddings=77, vocab_size=49408, hidden_act="gelu"),
        "vision": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="gelu"),
        "projection_dim": 1024,
    },
    # THUDM/ImageReward: BLIP ViT-L/16 at 224 (blip.py create_vit('large')) + med_config.json's BERT-base
    "image-reward": {
        "vision": dict(width=1024, depth=24, patch=16, image_size=224, mlp=4096),
        "text": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     max_position_embeddings=512, vocab_size=30524),
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Images/s of the local verifiers: one image per call vs one call "
                                                 "per batch, side by side (CPU tiny models, or --gpu).")
    parser.add_argument("--gpu", action="store_true", help="published architectures, random weights, CUDA, fp16")
    parser.add_argument("--verifiers", default=",".join(LOCAL), help="comma-separated subset of " + ", ".join(LOCAL))
    parser.add_argument("--images", type=int, default=None, help="images per measurement [64 CPU, 32 GPU]")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels [128 CPU, 1024 GPU]")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per way; the median is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    args = parser.parse_args(argv)
    args.verifiers = [name.strip() for name in args.verifiers.split(",") if name.strip()]
    unknown = sorted(set(args.verifiers) - set(LOCAL))
    if unknown:
        parser.error(f"--verifiers: received {', '.join(unknown)}, allowed: {', '.join(LOCAL)}")
    if args.gpu and "qwen" in args.verifiers:
        args.verifiers.remove("qwen")
    args.images = args.images or (32 if args.gpu else 64)
    args.resolution = args.resolution or (1024 if args.gpu else 128)
    return args


def make_images(count: int, side: int):
    """Distinct RGB images: smooth colour fields plus noise, like decoded samples."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    images = []
    for index in range(count):
        phase = index / max(1, count)
        field = np.stack([np.sin(6 * x + 10 * phase), np.cos(5 * y - 7 * phase), np.sin(4 * (x + y) + phase)], -1)
        pixels = 127.5 * (1 + field) + rng.normal(0, 20, field.shape)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


# ----- building the verifiers -----

def cpu_verifiers(names: list[str], workdir: Path) -> dict:
    import tiny_rewards
    from ttsf_core.config import VerifierArgs
    from ttsf_core.verifiers.registry import build_verifier

    folders = {"clip": tiny_rewards.tiny_clip, "pickscore": tiny_rewards.tiny_clip,
               "laion_aesthetic": tiny_rewards.tiny_aesthetic, "image_reward": tiny_rewards.tiny_image_reward}
    made = {}
    for name in names:
        if name == "qwen":
            made[name] = tiny_qwen_verifier(workdir)
        elif name == "imagestats":
            made[name] = build_verifier(VerifierArgs(name="imagestats"))
        else:
            made[name] = build_verifier(VerifierArgs(name=name, model_name=str(folders[name]()), device="cpu"))
    return made


def tiny_qwen_verifier(workdir: Path):
    """test_qwen's tiny Qwen2.5-VL (its fixture's own builder), answers forced to a valid JSON by its
    ForceAnswer logits processor, so every image costs a whole answer's decoding."""
    import test_qwen
    from transformers import AutoTokenizer

    from ttsf_core.config import VerifierArgs
    from ttsf_core.verifiers.qwen import QwenVerifier

    class Folders:
        def mktemp(self, name):
            path = workdir / name
            path.mkdir(parents=True, exist_ok=True)
            return path

    build = getattr(test_qwen.tiny_qwen, "__wrapped__", test_qwen.tiny_qwen)
    folder = build(Folders())
    # Every benchmark image is resized to 112x112 (16 image tokens): one forced answer for that count.
    count = 16
    force = test_qwen.ForceAnswer(AutoTokenizer.from_pretrained(folder), {count: test_qwen.answer_for(count)})
    verifier = QwenVerifier(VerifierArgs(name="qwen", model_name=folder, device="cpu", max_new_tokens=force.longest + 4,
                                         options={"processor": "image_only"}), logits_processor=[force])
    verifier.bench_image_size = test_qwen.SIZES[count]
    return verifier


def gpu_verifiers(names: list[str], workdir: Path) -> dict:
    import torch

    import tiny_rewards
    from ttsf_core.config import VerifierArgs
    from ttsf_core.verifiers.registry import build_verifier

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")
    clip_l, clip_h, blip = (PUBLISHED[k] for k in ("clip-vit-large-patch14", "pickscore-vit-h-14", "image-reward"))
    builders = {
        "clip": lambda path: tiny_rewards.build_clip(path, sizes=clip_l),
        "pickscore": lambda path: tiny_rewards.build_clip(path, sizes=clip_h),
        "laion_aesthetic": lambda path: (tiny_rewards.build_clip(path, sizes=clip_l),
                                         tiny_rewards.write_aesthetic_head(path / "aesthetic-model.pth", 768)),
        "image_reward": lambda path: tiny_rewards.build_image_reward(path, vision=blip["vision"], text=blip["text"]),
    }
    made = {}
    for name in names:
        if name == "imagestats":
            made[name] = build_verifier(VerifierArgs(name="imagestats"))
            continue
        folder = workdir / name
        folder.mkdir()
        started = time.perf_counter()
        builders[name](folder)
        print(f"built {name} (random weights, published shapes) in {time.perf_counter() - started:.0f} s", flush=True)
        made[name] = build_verifier(VerifierArgs(name=name, model_name=str(folder), device="cuda",
                                                 options={"torch_dtype": "fp16"}))
    return made


# ----- measuring -----

def one_per_call(verifier, images):
    return [grades for image in images for grades in verifier.score(PROMPT, [image])]


def batched(verifier, images):
    from ttsf_core.verifiers.base import verifier_batch_size

    size = verifier_batch_size(verifier)
    return [grades for start in range(0, len(images), size) for grades in verifier.score(PROMPT, images[start:start + size])]


def scores(grades_list) -> list[float]:
    return [value for grades in grades_list for value in grades.scores().values()]


def measure(verifier, images, repeats: int, gpu: bool) -> dict:
    import torch

    from ttsf_core.verifiers.base import verifier_batch_size

    sync = torch.cuda.synchronize if gpu else (lambda: None)
    batched(verifier, images[:2])  # load the model and warm up
    one_per_call(verifier, images[:1])
    wall = {"single": [], "batched": []}
    cpu = {"single": [], "batched": []}
    results = {}
    for _ in range(repeats):
        for way, call in (("single", one_per_call), ("batched", batched)):  # interleaved
            sync()
            seconds, cpu_seconds, result = _common.timed_cpu(call, verifier, images)
            sync()
            wall[way].append(seconds)
            cpu[way].append(cpu_seconds)
            results[way] = result
    diff = max(abs(a - b) for a, b in zip(scores(results["single"]), scores(results["batched"])))
    count = len(images)
    return {
        "batch": verifier_batch_size(verifier),
        "single_ips": count / _common.median(wall["single"]),
        "batched_ips": count / _common.median(wall["batched"]),
        "single_cpu_ms": 1000 * _common.median(cpu["single"]) / count,
        "batched_cpu_ms": 1000 * _common.median(cpu["batched"]) / count,
        "diff": diff,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    _common.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="bench-verifiers-") as scratch:
        workdir = Path(scratch)
        import os

        os.environ.setdefault("TTSF_CACHE_DIR", str(workdir / "cache"))
        made = gpu_verifiers(args.verifiers, workdir) if args.gpu else cpu_verifiers(args.verifiers, workdir)
        rows = []
        for name, verifier in made.items():
            side = getattr(verifier, "bench_image_size", None)
            images = (make_images(args.images, args.resolution) if side is None else
                      [image.resize(side) for image in make_images(args.images, args.resolution)])
            found = measure(verifier, images, args.repeats, args.gpu)
            model = getattr(verifier, "model_name", None) or "-"
            rows.append([name, Path(model).name if args.gpu or "/" in model else model,
                         f"{images[0].width}x{images[0].height}", found["batch"],
                         f"{found['single_ips']:.1f}", f"{found['batched_ips']:.1f}",
                         f"{found['batched_ips'] / found['single_ips']:.2f}x",
                         "-" if args.gpu else f"{found['single_cpu_ms'] / found['batched_cpu_ms']:.2f}x",
                         f"{found['diff']:.1e}"])
            print(f"measured {name}", flush=True)
    if args.gpu:
        import torch

        print(f"machine: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, fp16; random weights in the "
              f"published shapes; {args.images} images a measurement, median of {args.repeats}")
    else:
        print(_common.machine_line(args.threads))
        print(f"models: tests/tiny_rewards.py and test_qwen's tiny Qwen2.5-VL, fp32; {args.images} images a "
              f"measurement, median of {args.repeats} interleaved repeats")
    print(_common.markdown_table(
        ["verifier", "model", "image", "batch size", "images/s at batch 1", "images/s batched", "speed-up (wall)",
         "speed-up (CPU time)", "max abs score diff"], rows))


if __name__ == "__main__":
    main()
