"""Device and precision choice, shared by every backend: what a missing GPU means here, and what
running out of GPU memory means."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from liveanim.errors import BackendUnavailable, EngineError, Fix
from liveanim.model.fused_conv import triton_available

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # Linux; elsewhere nvidia-smi is on PATH
TRITON_MIN_CAPABILITY = (7, 0)  # Triton's oldest GPU generation (Volta); Inductor refuses older ones
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")  # x86 instructions that multiply bf16 in hardware


@dataclass(frozen=True)
class Gpu:
    """An NVIDIA GPU as engines name it in their cache keys.

    name:               e.g. 'NVIDIA GeForce RTX 4090'.
    compute_capability: e.g. '8.9'.
    """

    name: str
    compute_capability: str


def cuda_gpu(device: torch.device) -> Gpu:
    major, minor = torch.cuda.get_device_capability(device)
    return Gpu(torch.cuda.get_device_name(device), f"{major}.{minor}")


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver, i.e. whether installing GPU packages can help."""
    return NVIDIA_DRIVER_FILE.is_file() or shutil.which("nvidia-smi") is not None


def no_cuda_reason() -> str:
    """Why PyTorch sees no NVIDIA GPU, with the one step that helps (none where no GPU exists)."""
    if not nvidia_driver_present():
        return "this machine has no NVIDIA GPU (no NVIDIA driver found)"
    if torch.version.cuda is None:
        return (f"this PyTorch ({torch.__version__}) is a CPU build: install a CUDA build that matches your "
                "driver (https://pytorch.org/get-started/locally/)")
    return (f"PyTorch (CUDA {torch.version.cuda}) sees no GPU although an NVIDIA driver is installed: "
            "`nvidia-smi` shows whether the driver works and which CUDA version it supports")


def gpu_compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot make kernels for this CUDA device here, or None where it can: its
    compiler (Inductor) writes every GPU kernel in Triton, so it needs the Triton package and a GPU
    that Triton supports."""
    if not triton_available():
        return ("torch.compile needs Triton to make kernels for NVIDIA GPUs, and Triton is not installed "
                "(PyTorch brings it on Linux only)")
    gpu = cuda_gpu(device)
    if tuple(map(int, gpu.compute_capability.split("."))) < TRITON_MIN_CAPABILITY:
        return (f"torch.compile makes its GPU kernels with Triton, which does not support the {gpu.name} "
                f"(compute capability {gpu.compute_capability}; Triton needs "
                f"{'.'.join(map(str, TRITON_MIN_CAPABILITY))} or newer)")
    return None


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
        raise BackendUnavailable(f"CUDA was requested but {no_cuda_reason()}.", fix=Fix.CPU_DEVICE)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailable("MPS (Apple GPU) was requested but is not available.", fix=Fix.CPU_DEVICE)
    return device


def cpu_runs_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, AMX): there the torch engine's
    bf16 frames took half the time of fp32's (docs/performance.md); elsewhere bf16 is emulated."""
    capability = getattr(torch._C._cpu, "_get_cpu_capability", dict)()  # private; absent: none known
    return any(capability.get(feature, False) for feature in BF16_CPU_FEATURES)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' precision: fp16 on CUDA (3-4x faster, PSNR ~67 dB against fp32: docs/performance.md),
    fp32 elsewhere, also on CPUs that run bf16 twice as fast: its error there (PSNR 41-47 dB on seeded
    weights) is not known on the released ones; any other precision as asked."""
    if precision != "auto":
        return precision
    return "fp16" if device.type == "cuda" else "fp32"


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype; reduced precision only where the device runs it fast."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(DTYPES)}")
    if device.type == "cpu" and precision == "fp16":
        raise BackendUnavailable("fp16 needs a GPU.", fix=Fix.FP32)
    if device.type == "cpu" and precision == "bf16" and not cpu_runs_bf16():
        raise BackendUnavailable("bf16 on the CPU needs bf16 instructions (AVX512-BF16 or AMX), which this CPU lacks.",
                                 fix=Fix.FP32)
    return DTYPES[precision]


MEMORY_ADVICE = "Close other programs that use the GPU."  # followed by Fix.FP16: half precision, half the memory


def gpu_memory_status(device: torch.device) -> str:
    """'3.2 of 79.1 GiB free' for a CUDA device."""
    free, total = torch.cuda.mem_get_info(device)
    return f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free"


def out_of_memory(device: torch.device, doing: str) -> EngineError:
    """The error for a GPU that ran out of memory, with how much it has and what helps."""
    return EngineError(f"the GPU ran out of memory {doing} ({gpu_memory_status(device)}). {MEMORY_ADVICE}",
                       fix=Fix.FP16)
