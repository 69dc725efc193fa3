"""Batch samplers: length-bucketed shuffled batches for training, sorted batches for inference.

The training order is a pure function of (seed, epoch), so a resumed run can
rebuild it and skip exactly the batches it already consumed; no sampler state
beyond (epoch, batches done) needs saving.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


class BucketBatchSampler:
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

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, bucket: bool = True, pool: int = 64,
                 rank: int = 0, world_size: int = 1):
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
            pools = [order[i:i + pool_size] for i in range(0, len(order), pool_size)]
            # Stable sort keeps the random order among equal lengths.
            order = np.concatenate([p[np.argsort(self.lengths[p], kind="stable")] for p in pools])
        batches = [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        # Pad cyclically: with fewer batches than ranks (a tiny train set) a plain
        # `batches[:missing]` is too short and a rank would get no batch at all, then
        # wait forever in the others' gradient all-reduce.
        missing = -len(batches) % self.world_size
        batches += [batches[i % len(batches)] for i in range(missing)]
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        return self.epoch_batches(epoch)[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        yield from batches[self.start:]

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
        batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        self.batches = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
