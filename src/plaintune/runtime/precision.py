"""`precision: auto`: the fastest autocast precision this device runs natively, and why.

    CUDA, compute capability 8.0+ (A100, L4, RTX 30xx/40xx, H100)  -> bf16
    CUDA, 7.x (V100, T4, RTX 20xx: fp16 tensor cores, no bf16)      -> fp16 with a gradient scaler
    CUDA, older                                                      -> fp32
    CPU with native bf16 matmul (AMX or AVX-512 BF16, read from
    /proc/cpuinfo: detected, never assumed)                          -> bf16
    anything else (other CPUs, Apple MPS, ...)                       -> fp32

bf16 keeps fp32's exponent range, so it needs no loss scaling; bench/RESULTS.md
measures it at no cost in dev Pearson on STS Benchmark for both model kinds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

# training.precision / inference.precision -> the autocast dtype (None: fp32, no autocast)
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# /proc/cpuinfo flags of x86 CPUs that run bf16 matmuls in hardware (Cooper Lake, Sapphire Rapids, Zen 4+).
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The native-bf16 flags this CPU reports; empty where there are none or no /proc/cpuinfo (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in flags]


def choose(
    device: torch.device, cuda_capability: Optional[tuple[int, int]] = None, cpu_flags: Optional[list[str]] = None
) -> tuple[str, str]:
    """(precision, why) for `device`. The hardware facts are looked up unless given (tests pass them)."""
    if device.type == "cuda":
        major, minor = cuda_capability or torch.cuda.get_device_capability(device)
        name = f"CUDA compute capability {major}.{minor}"
        if major >= 8:
            return "bf16", f"{name} has native bf16"
        if major == 7:
            return "fp16", f"{name} has fp16 tensor cores but no native bf16; a gradient scaler guards fp16"
        return "fp32", f"{name} has no fast half-precision matmul"
    if device.type == "cpu":
        flags = cpu_bf16_flags() if cpu_flags is None else cpu_flags
        if flags:
            return "bf16", f"this CPU has native bf16 matmul ({', '.join(flags)})"
        return "fp32", "this CPU has no native bf16 matmul (no amx_bf16 or avx512_bf16)"
    return "fp32", f"no half precision is chosen automatically on {device.type}"


def resolve(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision, why): `requested` itself unless it is auto."""
    if requested != "auto":
        return requested, "as configured"
    chosen, why = choose(device)
    return chosen, f"auto: {why}"


def for_training(requested: str, device: torch.device, saved: Optional[str]) -> tuple[str, str]:
    """(precision, why) for a training run. On resume, auto keeps the checkpoint's precision (`saved`,
    what its run resolved to): the run continues as it started."""
    if requested == "auto" and saved in AUTOCAST:
        return saved, "auto: kept from the checkpoint; set training.precision to change it"
    return resolve(requested, device)
