"""Length-bucketed batches: complete, deterministic, resumable, DDP-sharded, less padding."""

from __future__ import annotations

import numpy as np
import pytest

from plaintune.data.batching import SortedBatchSampler, TrainBatchSampler, padding_fraction, split_by_length


@pytest.fixture
def lengths():
    rng = np.random.default_rng(0)
    return rng.integers(8, 120, size=1003)


@pytest.mark.parametrize("bucket", [True, False])
def test_every_index_once_per_epoch(lengths, bucket):
    sampler = TrainBatchSampler(lengths, 32, seed=1, bucket=bucket, pool=8)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = [i for batch in sampler for i in batch]
        assert sorted(seen) == list(range(len(lengths)))
        assert len(list(sampler)) == len(sampler)


def test_deterministic_from_seed_and_varies_by_epoch(lengths):
    a = TrainBatchSampler(lengths, 32, seed=1).epoch_batches(0)
    assert a == TrainBatchSampler(lengths, 32, seed=1).epoch_batches(0)
    assert a != TrainBatchSampler(lengths, 32, seed=2).epoch_batches(0)
    assert a != TrainBatchSampler(lengths, 32, seed=1).epoch_batches(1)


def test_resume_position_skips_exactly_the_consumed_batches(lengths):
    sampler = TrainBatchSampler(lengths, 32, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=7)
    assert list(sampler) == full[7:]


def test_ddp_shards_disjoint_and_complete(lengths):
    shards = []
    for rank in range(3):
        sampler = TrainBatchSampler(lengths, 16, seed=5, rank=rank, world_size=3)
        sampler.set_epoch(1)
        shards.append(list(sampler))
    assert len({len(s) for s in shards}) == 1  # equal step counts on every rank
    flat = [i for shard in shards for batch in shard for i in batch]
    assert set(flat) == set(range(len(lengths)))
    # only the padding batches repeat (fewer than world_size of them)
    assert len(flat) - len(lengths) < 3 * 16


def test_bucketing_cuts_padding_and_keeps_batches_mixed(lengths):
    random_batches = TrainBatchSampler(lengths, 32, seed=0, bucket=False).epoch_batches(0)
    bucketed = TrainBatchSampler(lengths, 32, seed=0, bucket=True, pool=16).epoch_batches(0)
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


# ------------------------------------------------------------------ micro-batches


def padded_cost(lengths, runs, overhead):
    return sum(len(r) * max(lengths[i] for i in r) + overhead for r in runs)


def brute_force_best(lengths, max_tokens, overhead):
    """Cheapest cut of the length-sorted batch into contiguous runs, by trying every cut."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = None
    for mask in range(2 ** (len(order) - 1)):
        runs, run = [], [order[0]]
        for k, i in enumerate(order[1:]):
            if mask >> k & 1:
                runs.append(run)
                run = []
            run.append(i)
        runs.append(run)
        if all(len(r) == 1 or len(r) * max(lengths[i] for i in r) <= max_tokens for r in runs):
            cost = padded_cost(lengths, runs, overhead)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("case", range(40))
def test_micro_batch_cut_is_complete_within_budget_and_optimal(case):
    rng = np.random.default_rng(case)
    lengths = rng.integers(3, 60, size=int(rng.integers(1, 11))).tolist()
    max_tokens, overhead = int(rng.integers(40, 300)), int(rng.choice([0, 8, 64, 1000]))
    runs = split_by_length(lengths, max_tokens, overhead)
    assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
    for run in runs:
        assert len(run) == 1 or len(run) * max(lengths[i] for i in run) <= max_tokens
        assert [lengths[i] for i in run] == sorted((lengths[i] for i in run), reverse=True)
    assert padded_cost(lengths, runs, overhead) == brute_force_best(lengths, max_tokens, overhead)


def test_micro_batches_cut_padding_of_random_batches(lengths):
    random_batches = TrainBatchSampler(lengths, 32, seed=0, bucket=False).epoch_batches(0)
    cut = [
        [batch[i] for i in run]
        for batch in random_batches
        for run in split_by_length(lengths[batch].tolist(), 2048, 64)
    ]
    assert padding_fraction(lengths, cut) < padding_fraction(lengths, random_batches) / 2
    # an overhead larger than any saving keeps a batch whole when it fits the budget
    assert split_by_length([5, 50, 7], 10_000, 10_000) == [[1, 2, 0]]


def test_auto_micro_batch_budget_is_1024_tokens_on_cpu_and_whole_batches_on_a_gpu():
    import torch

    from plaintune.data.batching import micro_batch_budget

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert micro_batch_budget("auto", cpu)[0] == 1024
    assert micro_batch_budget(300, cpu)[0] == 300  # a number is taken as given
    assert micro_batch_budget(None, cpu)[0] is None
    assert micro_batch_budget("auto", gpu)[0] is None


@pytest.mark.e2e
def test_a_run_says_how_many_tokens_a_pass_holds(project, capsys):
    import train

    assert train.main(["--config", "t", "training.epochs=1", "training.micro_batch_tokens=96"]) == 0
    assert "; passes of at most 96 padded tokens" in capsys.readouterr().out
