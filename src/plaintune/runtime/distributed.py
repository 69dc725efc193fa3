"""torchrun / DDP plumbing: who am I, which device, gather predictions, rank-0 I/O.

A plain `python train.py` is a world of size 1 and none of this costs anything.
Under `torchrun` the environment names rank and world size; the backend is
nccl for CUDA devices and gloo otherwise.

Every collective here must be entered by all ranks at the same point of the
loop, or the ranks that entered it wait for the others until the group's timeout.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from plaintune.errors import UserError


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


def launcher(info: DistInfo) -> str:
    """How to start this run's processes again (a printed resume command): python, or the torchrun line
    with this run's process counts (resuming with fewer processes would change the effective batch)."""
    if not info.enabled:
        return "python"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    if local == info.world_size:
        return f"torchrun --nproc_per_node {local}"
    return f"torchrun --nnodes {info.world_size // max(local, 1)} --nproc_per_node {local} <your rendezvous options>"


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


def setup(device_spec: str, timeout_s: Optional[float] = None) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; pick this process's device.

    `timeout_s` (training.ddp_timeout_s) bounds how long a collective waits for the
    other processes: a rank that died or took another path then surfaces as an
    error instead of a hang. None keeps torch's default.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world_size=world_size
    )
    device = resolve_device(device_spec, info.local_rank)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = {"timeout": timedelta(seconds=timeout_s)} if timeout_s is not None else {}
        dist.init_process_group(backend=backend, **timeout)
    return info, device


def cleanup() -> None:
    if _active():
        dist.destroy_process_group()


def barrier() -> None:
    if _active():
        dist.barrier()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_rows(rows: np.ndarray, values: np.ndarray, total: int) -> np.ndarray:
    """The full (total, ...) array from each rank's `values` for its dataset `rows`, on every rank.

    Rows travel with their indices, so any value a model produced (NaN included)
    arrives as it was; a row that no rank, or two ranks, predicted is a bug and raises.
    """
    parts = all_gather_objects((np.asarray(rows, dtype=np.int64), np.asarray(values)))
    width = parts[0][1].shape[1:]
    merged = np.full((total, *width), np.nan, dtype=np.float32)
    counts = np.zeros(total, dtype=np.int64)
    for part_rows, part_values in parts:
        merged[part_rows] = part_values
        np.add.at(counts, part_rows, 1)
    if not (counts == 1).all():
        bad = int(np.flatnonzero(counts != 1)[0])
        raise RuntimeError(f"gathered predictions: row {bad} was predicted {int(counts[bad])} times, expected once")
    return merged


# Works of this module's latest collective, kept so that this thread frees them (see _hold).
_held_works: list = []


def _hold(*works) -> None:
    """Wait for `works` and keep them until the next collective replaces them.

    A Work keeps its tensors. When gloo's worker thread drops the last reference,
    freeing a tensor that Python has seen takes the GIL; if the main thread is at
    that moment tearing the process group down (it joins that worker, holding the
    GIL), the process never exits (seen with torch 2.13 + gloo, when a collective
    on Python tensors was the last before exit). Held here, the main thread frees
    them: when the next collective replaces them, or at interpreter exit.
    """
    for work in works:
        work.wait()
    _held_works[:] = works


def _collective_device() -> torch.device:
    """Where the backend wants tensors: the current GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' `value` on every rank (e.g. 'does any rank want to stop?')."""
    if not _active():
        return value
    flag = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    _hold(dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True))
    return int(flag.item())


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank.

    torch's all_gather_object would do, but its Works cannot be held (see _hold).
    """
    if not _active():
        return [obj]
    device, world = _collective_device(), dist.get_world_size()
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    size_work = dist.all_gather(sizes, torch.tensor([payload.numel()], device=device), async_op=True)
    size_work.wait()
    longest = max(int(size) for size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    received = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    _hold(size_work, dist.all_gather(received, padded, async_op=True))
    # The ranks of one run, one program: their pickles are as trusted as this process.
    return [pickle.loads(data[: int(size)].cpu().numpy().tobytes()) for data, size in zip(received, sizes)]


def rank0_value(obj):
    """Rank 0's value of `obj` on every rank. Gathered, not broadcast: every rank's (small) value
    travels, through the same holdable collective as all_gather_objects."""
    return all_gather_objects(obj)[0]


def without_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (a torch.compile wrapper stays): evaluate through this one.

    A forward through DDP may broadcast buffers to the other ranks, so evaluating
    through it makes every rank enter collectives once per batch, and a rank with
    fewer (or no) dev batches leaves the others waiting.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers (save this one)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
