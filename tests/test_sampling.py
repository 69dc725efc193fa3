"""Length-bucketed batches: complete, deterministic, resumable, DDP-sharded, less padding."""
from __future__ import annotations

import numpy as np
import pytest

from plaintune.data import padding_fraction
from plaintune.sampling import BucketBatchSampler, SortedBatchSampler


@pytest.fixture
def lengths():
    rng = np.random.default_rng(0)
    return rng.integers(8, 120, size=1003)


@pytest.mark.parametrize("bucket", [True, False])
def test_every_index_once_per_epoch(lengths, bucket):
    sampler = BucketBatchSampler(lengths, 32, seed=1, bucket=bucket, pool=8)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = [i for batch in sampler for i in batch]
        assert sorted(seen) == list(range(len(lengths)))
        assert len(list(sampler)) == len(sampler)


def test_deterministic_from_seed_and_varies_by_epoch(lengths):
    a = BucketBatchSampler(lengths, 32, seed=1).epoch_batches(0)
    assert a == BucketBatchSampler(lengths, 32, seed=1).epoch_batches(0)
    assert a != BucketBatchSampler(lengths, 32, seed=2).epoch_batches(0)
    assert a != BucketBatchSampler(lengths, 32, seed=1).epoch_batches(1)


def test_resume_position_skips_exactly_the_consumed_batches(lengths):
    sampler = BucketBatchSampler(lengths, 32, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=7)
    assert list(sampler) == full[7:]


def test_ddp_shards_disjoint_and_complete(lengths):
    shards = []
    for rank in range(3):
        sampler = BucketBatchSampler(lengths, 16, seed=5, rank=rank, world_size=3)
        sampler.set_epoch(1)
        shards.append(list(sampler))
    assert len({len(s) for s in shards}) == 1  # equal step counts on every rank
    flat = [i for shard in shards for batch in shard for i in batch]
    assert set(flat) == set(range(len(lengths)))
    # only the padding batches repeat (fewer than world_size of them)
    assert len(flat) - len(lengths) < 3 * 16


def test_bucketing_cuts_padding_and_keeps_batches_mixed(lengths):
    random_batches = BucketBatchSampler(lengths, 32, seed=0, bucket=False).epoch_batches(0)
    bucketed = BucketBatchSampler(lengths, 32, seed=0, bucket=True, pool=16).epoch_batches(0)
    assert padding_fraction(lengths, bucketed) < padding_fraction(lengths, random_batches) / 3
    # batch order is shuffled: batch max lengths are not monotone
    maxima = [lengths[b].max() for b in bucketed]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_sorted_eval_batches_cover_all_without_repeats(lengths):
    batches = [list(SortedBatchSampler(lengths, 50, rank=r, world_size=2)) for r in range(2)]
    flat = [i for shard in batches for batch in shard for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    first = batches[0][0]
    assert lengths[first].min() >= lengths.max() - 5  # longest first
