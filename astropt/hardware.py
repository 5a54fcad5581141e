"""What the hardware can do: peak dense bf16 FLOP/s of common training GPUs, for MFU.

MFU (model FLOPs utilisation) = model FLOPs per token x tokens/s / peak FLOP/s of the
devices used, with the model FLOPs of :meth:`astropt.model.GPT.flops_per_token`. Peaks are
the vendors' dense (not sparse) bf16 tensor-core figures; a GPU not listed has no MFU unless
``train.peak_tflops`` gives its peak.
"""

from __future__ import annotations

import torch

# Substring of torch.cuda.get_device_name() (upper case) -> dense bf16 FLOP/s. Longest match first.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100 PCIE": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,   # SXM / HBM3
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A6000": 155e12,
    "A40": 150e12,
    "V100": 125e12,  # fp16 (no bf16)
}


def peak_flops(device: torch.device | str, override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one ``device`` (``None`` when unknown, e.g. a CPU).

    Args:
        device: The training device.
        override_tflops: A peak given by the user, in TFLOP/s (wins over the table).
    """
    if override_tflops:
        return float(override_tflops) * 1e12
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def peak_memory_gb(device: torch.device | str) -> float:
    """Peak memory of this process so far: allocated on a CUDA device, resident set on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)
