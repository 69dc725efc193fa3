"""Batching: which pairs go into a batch, how a batch is cut into micro-batches, and the loaders.

Training batches are length-bucketed and shuffled, evaluation batches sorted by
length. The training order is a pure function of (seed, epoch), so a resumed
run can rebuild it and skip exactly the batches it already consumed; no sampler
state beyond (epoch, batches done) needs saving.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from plaintune.config.schema import AUTO_MICRO_BATCH_TOKENS_CPU
from plaintune.data.tokenized import PadCollator, PairDataset


class TrainBatchSampler:
    """Shuffled batches whose members have similar lengths.

    Each epoch: shuffle all indices; cut them into pools of `pool` batches; sort
    each pool by length and cut it into batches; shuffle the batch order. Pools
    are random, so a batch mixes sources and labels like a random batch does,
    while padding approaches that of fully sorted batches as `pool` grows.
    With `bucket=False` batches are plain random slices of the permutation.

    Under DDP each rank takes every `world_size`-th batch; the batch list is
    padded with repeats from its start so every rank runs the same number of
    steps (their gradients are averaged, so a repeat weighs like one more batch).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        bucket: bool = True,
        pool: int = 64,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = bucket
        self.pool = pool
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # batches of this epoch already consumed (resume)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip its first `start` batches (of this rank)."""
        self.epoch = epoch
        self.start = start

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of an epoch for all ranks, in the order they are consumed."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        if self.bucket:
            pool_size = self.batch_size * self.pool
            pools = [order[i : i + pool_size] for i in range(0, len(order), pool_size)]
            # Stable sort keeps the random order among equal lengths.
            order = np.concatenate([p[np.argsort(self.lengths[p], kind="stable")] for p in pools])
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        # Pad cyclically: with fewer batches than ranks (a tiny train set) a plain
        # `batches[:missing]` is too short and a rank would get no batch at all, then
        # wait forever in the others' gradient all-reduce.
        missing = -len(batches) % self.world_size
        batches += [batches[i % len(batches)] for i in range(missing)]
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        return self.epoch_batches(epoch)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        yield from batches[self.start :]

    def __len__(self) -> int:
        """Batches per epoch for this rank (a full epoch, not counting `start`)."""
        total = -(-len(self.lengths) // self.batch_size)
        return -(-total // self.world_size)


class SortedBatchSampler:
    """Batches of indices sorted by length, longest first (least padding, and an
    out-of-memory error shows in the first batch, not the last). Under DDP each
    rank takes every `world_size`-th batch, with no repeats."""

    def __init__(self, lengths: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1):
        order = np.argsort(-np.asarray(lengths), kind="stable")
        batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        self.batches = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# On CPU a forward+backward pass has a fixed cost about equal to this many more padded tokens
# (MiniLM, 2 threads: ~40 ms per pass against ~0.6 ms per token; bench/RESULTS.md), so cutting a
# batch pays only where it removes more padding than that.
PASS_OVERHEAD_TOKENS_CPU = 64


def split_by_length(lengths: Sequence[int], max_tokens: int, pass_overhead: int = 0) -> list[list[int]]:
    """Positions of one batch cut into micro-batches for separate forward passes.

    Positions are sorted longest first and cut into contiguous runs; a run costs
    (its size x its longest length) padded tokens plus `pass_overhead`. The cut
    minimises the total cost (exact dynamic programme, O(n^2) for a batch of n)
    subject to each run holding at most `max_tokens` padded tokens; an item longer
    than that forms a run alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = [int(lengths[i]) for i in order]
    n = len(sizes)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest cut of the first j items
    start = [0] * (n + 1)  # start[j]: where the last run of that cut begins
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # run = sorted items i..j-1, its longest is sizes[i]
            tokens = (j - i) * sizes[i]
            if tokens > max_tokens and i < j - 1:
                break  # growing the run only adds tokens
            cost = best[i] + tokens + pass_overhead
            if cost < best[j]:
                best[j], start[j] = cost, i
    runs, j = [], n
    while j > 0:
        runs.append(order[start[j] : j])
        j = start[j]
    return runs[::-1]


class MicroBatchCollator:
    """Collates a training batch as a list of padded micro-batches (see `split_by_length`).

    The batch, and so the optimizer step, is unchanged: the trainer weights each
    micro-batch's mean loss by its share of the batch. What changes is padding
    (each micro-batch pads to its own longest pair, so a random batch costs
    nearly what a length-sorted one does) and peak memory (activations of at most
    `max_tokens` tokens at a time).
    """

    def __init__(self, collate: Callable[[list[dict]], dict], max_tokens: Optional[int], pass_overhead: int = 0):
        self.collate = collate
        self.max_tokens = max_tokens
        self.pass_overhead = pass_overhead

    def __call__(self, items: list[dict]) -> list[dict]:
        if self.max_tokens is None:  # one pass per batch
            return [self.collate(items)]
        # A pair costs its joint length (cross-encoder) or both sides' lengths (bi-encoder).
        lengths = [len(item["input_ids"]) + len(item.get("input_ids_b", ())) for item in items]
        return [
            self.collate([items[i] for i in run])
            for run in split_by_length(lengths, self.max_tokens, self.pass_overhead)
        ]


def padding_fraction(lengths: np.ndarray, batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions over all positions, for a given batching."""
    real = padded = 0
    for batch in batches:
        sizes = lengths[list(batch)]
        real += int(sizes.sum())
        padded += int(sizes.max()) * len(batch)
    return 1.0 - real / padded if padded else 0.0


def micro_batch_budget(requested, device: torch.device) -> tuple[Optional[int], int]:
    """(tokens per micro-batch or None for whole batches, the per-pass overhead in tokens).

    Cutting batches to save padding pays on CPU; a GPU pass has a large fixed cost relative to
    its tokens' work, so there a pass is priced at a full budget: batches are cut only to fit it.
    """
    budget = requested
    if budget == "auto":
        budget = AUTO_MICRO_BATCH_TOKENS_CPU if device.type == "cpu" else None
    overhead = PASS_OVERHEAD_TOKENS_CPU if device.type == "cpu" else (budget or 0)
    return budget, overhead


# ---------------------------------------------------------------- loaders


def label_dtype(num_labels: int) -> torch.dtype:
    return torch.float32 if num_labels == 1 else torch.long


def _private_generator(seed: int) -> torch.Generator:
    """Each DataLoader iterator draws a base seed from its generator; with the global one,
    starting an epoch would shift the dropout RNG and a mid-epoch resume would diverge."""
    return torch.Generator().manual_seed(seed)


def train_loader(
    dataset: PairDataset,
    sampler: TrainBatchSampler,
    num_labels: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    micro_batch_tokens: Optional[int] = None,
    pass_overhead: int = 0,
) -> DataLoader:
    """Batches from `sampler`, each as a list of micro-batches (one, when `micro_batch_tokens` is None)."""
    collate = MicroBatchCollator(
        PadCollator(dataset.pad_id, label_dtype(num_labels)), micro_batch_tokens, pass_overhead
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=_private_generator(sampler.seed),
    )


def eval_loader(
    dataset: PairDataset,
    batch_size: int,
    num_labels: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches sorted by length (least padding); the `index` field restores input order."""
    sampler = SortedBatchSampler(dataset.lengths, batch_size, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=PadCollator(dataset.pad_id, label_dtype(num_labels)),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=_private_generator(0),
    )
