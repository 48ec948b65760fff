from collections import Counter

from afinar.data.formats import Example
from afinar.data.split import epoch_order, leakage, split


def examples(n, prefix="q"):
    return [Example("f.jsonl", i + 1, "alpaca", [{"role": "user", "content": f"{prefix} {i}"}, {"role": "assistant", "content": "a"}]) for i in range(n)]


def test_split_is_deterministic_and_90_10():
    data = examples(100)
    train, val = split(data, 0.1, 42)
    _, again_val = split(examples(100), 0.1, 42)
    assert [e.line for e in val] == [e.line for e in again_val]
    assert (len(train), len(val)) == (90, 10)
    assert {e.line for e in train}.isdisjoint({e.line for e in val})
    assert [e.line for e in split(data, 0.1, 43)[1]] != [e.line for e in val]


def test_split_edge_cases():
    assert split(examples(1), 0.1)[1] == []
    assert len(split(examples(3), 0.1)[1]) == 1
    assert split(examples(10), 0.0)[1] == []


def test_leakage_is_reported_by_line_even_with_different_punctuation():
    train = examples(5)
    twin = Example("g.jsonl", 9, "alpaca", [{"role": "user", "content": "Q   3!"}, {"role": "assistant", "content": "b"}])
    problems = leakage(train, [twin, *examples(2, "otro")])
    assert [(p.source, p.line, p.code) for p in problems] == [("g.jsonl", 9, "D014")]
    assert "f.jsonl:4" in problems[0].message


def test_epoch_order_equal_weights_is_a_permutation():
    order = epoch_order([5, 3], [1.0, 1.0], seed=1, epoch=0)
    assert sorted(order) == [(0, i) for i in range(5)] + [(1, i) for i in range(3)]
    assert order == epoch_order([5, 3], [1.0, 1.0], seed=1, epoch=0)
    assert order != epoch_order([5, 3], [1.0, 1.0], seed=1, epoch=1)


def test_epoch_order_weights_set_the_share():
    # Equal weights mean "no mixing": each example once, whatever the source sizes.
    assert Counter(s for s, _ in epoch_order([90, 10], [0.5, 0.5], seed=0, epoch=0)) == {0: 90, 1: 10}
    order = epoch_order([90, 10], [7, 3], seed=0, epoch=0)
    assert order == epoch_order([90, 10], [7, 3], seed=0, epoch=0)
    assert Counter(s for s, _ in order) == {0: 70, 1: 30}
    assert Counter(i for s, i in order if s == 1) == {i: 3 for i in range(10)}  # small source oversampled evenly
