"""Helpers shared by the CPU benchmarks (imported as a sibling module, not as a package).

The benchmark scripts put the repository root on sys.path themselves, so that `ttsf_core` and
`tests/fake_gemini.py` import from a plain checkout.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Nothing here may reach the network: the tiny model is built locally and loaded from a folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def quiet_libraries() -> None:
    """Silence progress bars and load-time chatter, so stdout holds only the tables."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def build_tiny_model(folder: Path, width_multiplier: int, num_layers: int) -> Path:
    """Build the scaled tiny FLUX once into `folder` (save_pretrained), like a downloaded model."""
    from ttsf_core.pipelines.tiny import ensure_tiny_flux

    return ensure_tiny_flux(folder / f"tiny-flux-w{width_multiplier}-l{num_layers}", width_multiplier, num_layers)


def load_tiny_pipeline(model_dir: Path, config_overrides: dict | None = None):
    """Load the saved folder through ttsf's own loader (from_pretrained, fp32, CPU)."""
    from ttsf_core.config import build_config, merge
    from ttsf_core.pipelines import load_pipeline

    base = {"pretrained_model_name_or_path": str(model_dir), "torch_dtype": "fp32", "device": "cpu"}
    return load_pipeline(build_config(merge(base, config_overrides or {})))


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def timed_cpu(function, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, this thread's CPU seconds, result). With one torch thread the model runs on the
    calling thread, so the CPU seconds are its cost even while other processes steal the machine."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, time.thread_time() - start_cpu, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine_line(threads: int) -> str:
    import torch

    return (f"machine: {os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__} "
            f"with {threads} intra-op thread(s), python {platform.python_version()}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def max_pixel_diff(first, second) -> int:
    """Largest difference of one 8-bit channel value between two lists of PIL images."""
    import numpy as np

    worst = 0
    for a, b in zip(first, second, strict=True):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        worst = max(worst, int(diff.max()))
    return worst


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
