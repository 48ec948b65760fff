"""The training order without a model: weighted mixing, token budgets, resumable steps, shares per process."""
import random
from collections import Counter

import pytest

from afinar.data.batching import MicroBatchStream, SourceMix, examples_of, plan_micro_batches, shard_for_eval


def lengths_of(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(20, 300) for _ in range(n)]


def test_mix_is_reproducible_and_weighted():
    row_source = [0] * 30 + [1] * 10
    mix = SourceMix(row_source, [3, 1], seed=7)
    assert mix.sizes == [30, 10]
    first = mix.epoch(0)
    assert first == SourceMix(row_source, [3, 1], seed=7).epoch(0)  # same seed, same order, in a new object
    assert first != mix.epoch(1)
    drawn = Counter(row_source[r] for r in first)
    assert drawn == {0: 30, 1: 10}  # 40 rows per epoch, 3:1
    assert mix.per_epoch() == {0: 30, 1: 10}
    # equal weights: every row exactly once per epoch
    plain = SourceMix(row_source, [1, 1], seed=7)
    assert sorted(plain.epoch(3)) == list(range(40))


def test_small_source_is_oversampled_by_weight():
    row_source = [0] * 40 + [1] * 10
    mix = SourceMix(row_source, [1, 1.5], seed=1)
    drawn = Counter(row_source[r] for r in mix.epoch(0))
    assert drawn == {0: 20, 1: 30}  # 50 per epoch, shares 1 : 1.5, the small source cycled
    assert len(set(r for r in mix.epoch(0) if row_source[r] == 1)) == 10


@pytest.mark.parametrize("packing", [True, False])
def test_micro_batches_respect_both_budgets_and_keep_every_example(packing):
    lengths = lengths_of(200)
    order = list(range(200))
    random.Random(3).shuffle(order)
    batches = plan_micro_batches(order, lengths, batch_size=6, tokens_per_batch=700, packing=packing, row_tokens=350)
    assert sorted(examples_of(b) for b in batches) and sorted(sum(map(examples_of, batches), [])) == list(range(200))
    for batch in batches:
        assert 1 <= len(examples_of(batch)) <= 6
        widths = [sum(lengths[e] for e in row) for row in batch]
        assert len(batch) * max(widths) <= 700  # rows × the widest row: what the collated tensor holds
        if packing:
            assert max(widths) <= 350
        else:
            assert all(len(row) == 1 for row in batch)
    # similar widths together: far less padding than rows taken in the given order
    pad = lambda bs: sum(len(b) * max(sum(lengths[e] for e in r) for r in b) - sum(lengths[e] for e in examples_of(b)) for b in bs)
    unsorted = [[[e] for e in order[i : i + 2]] for i in range(0, 200, 2)]
    assert pad(batches) < 0.5 * pad(unsorted)
    # the order stays local: a micro-batch only holds examples from one block of consecutive ones
    position = {e: i for i, e in enumerate(order)}
    for batch in batches:
        spots = [position[e] for e in examples_of(batch)]
        assert max(spots) // 300 == min(spots) // 300


def test_short_examples_share_packed_rows():
    batches = plan_micro_batches(list(range(10)), [100] * 10, batch_size=64, tokens_per_batch=700, packing=True, row_tokens=350)
    assert [[len(row) for row in b] for b in batches] == [[3, 3], [3, 1]]  # 2 rows × 300 ≤ 700, then the rest


def stream(n=60, packing=True):
    lengths = lengths_of(n, seed=4)
    return MicroBatchStream(SourceMix([0] * n, [1], seed=9), lengths, 4, 600, packing, row_tokens=300)


def test_steps_cross_epochs_and_a_fresh_stream_resumes_identically():
    s = stream()
    per_epoch = s.micro_batches_per_epoch()
    steps = [s.step(k, grad_accum=3) for k in range(1, 30)]
    assert {e for step in steps for e, _ in step} >= {0, 1, 2}
    flat = [mb for step in steps for _, mb in step]
    assert sorted(e for mb in flat[:per_epoch] for e in examples_of(mb)) == list(range(60))  # epoch 0: each once
    resumed = stream()  # a new process after a crash knows nothing but the step number
    assert [resumed.step(k, grad_accum=3) for k in range(17, 30)] == steps[16:]


def test_processes_split_each_step_and_together_equal_one_process():
    s = stream()
    for step in range(1, 12):
        single = s.step(step, grad_accum=4, rank=0, processes=1)
        shares = [s.step(step, grad_accum=2, rank=r, processes=2) for r in range(2)]
        assert shares[0] + shares[1] == single


def test_eval_shards_cover_everything_once():
    shards = [list(shard_for_eval(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
