"""Device and precision choice, shared by every backend."""

from __future__ import annotations

import torch

from liveanim.errors import BackendUnavailable, Fix

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA, then Apple's MPS, then CPU; an explicit name must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(
            "CUDA was requested but PyTorch sees no NVIDIA GPU (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Install a CUDA build of "
            "PyTorch that matches your driver (https://pytorch.org/get-started/locally/).", fix=Fix.CPU_DEVICE
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailable("MPS (Apple GPU) was requested but is not available.", fix=Fix.CPU_DEVICE)
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype; reduced precision only where the device runs it fast."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(DTYPES)}")
    if precision != "fp32" and device.type == "cpu":
        raise BackendUnavailable(f"{precision} needs a GPU.", fix=Fix.FP32)
    return DTYPES[precision]
