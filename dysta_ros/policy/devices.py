"""One check that a torch device and dtype exist on this machine, before a model is built."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from dysta_ros.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def available_devices() -> list[str]:
    """Return the device strings this torch build can use here (cpu first)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str, dtype: str = "float32") -> torch.device:
    """Return torch.device(device) if it and dtype exist here; else raise one ConfigError naming what does."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    here = ", ".join(available_devices())
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device; available here: {here}") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch" if torch.version.cuda is None else "no visible CUDA GPU"
            raise ConfigError(f"device {device!r} requested but CUDA is not available ({build}); "
                              f"available here: {here}")
        index = 0 if parsed.index is None else parsed.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s); "
                              f"available here: {here}")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"dtype 'bfloat16' is not supported on {device!r} "
                              f"({torch.cuda.get_device_name(index)}); use float16 or float32")
        return parsed
    if parsed.type == "mps" and "mps" in available_devices():
        if dtype == "bfloat16":
            raise ConfigError("dtype 'bfloat16' is not supported on 'mps'; use float16 or float32")
        return parsed
    raise ConfigError(f"device {device!r} is not available here; available: {here}")


def machine(device: str) -> dict:
    """What a speed measurement ran on, for its result's meta: build machines differ by 2-3x.

    The CPU's model and cores, torch's CPU capability (AVX2, AVX512, ...), whether `device` has
    bf16 matrix units (what `compute_dtype: auto` follows), the GPU's name, and the load average.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        cpuinfo = []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    parsed = torch.device(device)
    return {"cpu": cpu, "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_units": native_bfloat16(parsed), "load_average": [round(v, 2) for v in os.getloadavg()],
            "gpu": torch.cuda.get_device_name(parsed) if parsed.type == "cuda" else None}


def native_bfloat16(device: torch.device) -> bool:
    """True where bfloat16 matrix products run on matrix units, not emulated through float32.

    CUDA with bf16 support; a CPU whose oneDNN has bf16 kernels (AVX512-BF16 or AMX). On an
    AVX2 CPU a bf16 GEMM is several times slower than fp32 (measured 8x on this build machine).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def compute_dtype_for(name: str, device: torch.device) -> torch.dtype | None:
    """The speed option compute_dtype as a torch dtype on device (None = the loaded dtype).

    "auto": bfloat16 where it is native (native_bfloat16), else the loaded dtype.
    """
    if name == "auto":
        return torch.bfloat16 if native_bfloat16(device) else None
    return DTYPES[name] if name else None


def release_cached_memory(device: str) -> None:
    """Hand the memory torch's CUDA allocator keeps cached back to the device (after a model is freed)."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
