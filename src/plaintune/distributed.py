"""torchrun / DDP plumbing: who am I, which device, gather predictions, rank-0 I/O.

A plain `python train.py` is a world of size 1 and none of this costs anything.
Under `torchrun` the environment names rank and world size; the backend is
nccl for CUDA devices and gloo otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device: '{spec}' requested but CUDA is not available here; use device: auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.index >= torch.cuda.device_count():
            raise UserError(f"device: '{spec}' but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device: 'mps' requested but MPS is not available here; use device: auto or cpu")
    return device


def setup(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=world_size)
    device = resolve_device(device_spec, info.local_rank)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return info, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def merge_predictions(outputs: np.ndarray) -> np.ndarray:
    """Combine per-rank predictions (NaN where a rank did not predict a row) into the full set.

    Each row is predicted by exactly one rank (the eval sampler has no padding
    repeats), so a sum over ranks of the non-NaN values reassembles it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return outputs
    values = torch.from_numpy(np.nan_to_num(outputs, nan=0.0).astype(np.float64))
    dist.all_reduce(values)
    return values.numpy().astype(np.float32)


def broadcast_object(obj):
    """Rank 0's value of `obj` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers (save this one)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
