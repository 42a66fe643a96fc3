"""Which device a model runs on: one rule for the pipeline and every local verifier. "auto" (or unset)
is a CUDA GPU when one is visible, else an Apple GPU (MPS), else the CPU; any other device must exist
here. torch is imported only when a device has to be looked at."""

from __future__ import annotations


def pick_device(device: str | None) -> str:
    """The device "auto" (or None) means on this machine; any other device as it is."""
    if device not in (None, "auto"):
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_problem(device: str) -> str | None:
    """Why `device` (cpu, mps, cuda or cuda:N) cannot be used here, or None."""
    if device == "cpu":
        return None
    import torch

    if device == "mps":
        available = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        return None if available else "no Apple GPU is visible here"
    if not torch.cuda.is_available():
        return "no CUDA device is visible here"
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    return None if index < count else f"only {count} CUDA device(s) are visible"


def visible_devices() -> str:
    """", cuda:0, cuda:1" for the CUDA devices visible here ("" when none)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "".join(f", cuda:{index}" for index in range(count))
