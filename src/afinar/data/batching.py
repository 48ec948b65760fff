"""Training order and micro-batches: which rows, in which order, in which micro-batch, on which process.

Everything here works on row indices and token counts, with no model and no torch, so the weighted mixing of
sources, the token budget and exact resume are unit-tested alone (tests/unit/test_batching.py).

- `SourceMix`: the rows of an epoch in order, each source drawing its weighted share (`split.epoch_order`).
- `plan_micro_batches`: blocks of consecutive examples → micro-batches of at most `batch_size` examples and
  `tokens_per_batch` tokens, as rows: packed, several examples per row (first-fit-decreasing up to `row_tokens`);
  padded, one per row; similar widths together either way, so little padding is left.
- `MicroBatchStream`: micro-batch number → rows, across epochs; step s on process r of W takes the grad_accum
  micro-batches that follow r × grad_accum in that step's block of W × grad_accum. Every process computes the same
  global order and takes its own share, so a resumed run, a run on more processes and a one-process run with
  W × grad_accum accumulation all see the same examples in the same steps.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from afinar.data.split import epoch_order

# Examples are grouped by length inside blocks of this many micro-batches (transformers'
# `get_length_grouped_indices` uses 50), so a micro-batch holds similar widths and little padding.
LENGTH_GROUP_BLOCK = 50


class SourceMix:
    """The training rows of each epoch in order: sources mixed by weight, reproducible from (seed, epoch)."""

    def __init__(self, row_source: Sequence[int], weights: Sequence[float], seed: int):
        self.by_source: list[list[int]] = [[] for _ in weights]
        for row, source in enumerate(row_source):
            self.by_source[source].append(row)
        self.weights = list(weights)
        self.seed = seed

    @property
    def sizes(self) -> list[int]:
        return [len(rows) for rows in self.by_source]

    def epoch(self, epoch: int) -> list[int]:
        order = epoch_order(self.sizes, self.weights, self.seed, epoch)
        return [self.by_source[s][i] for s, i in order]

    def per_epoch(self) -> dict[int, int]:
        """How many rows of each source one epoch draws (what the user asked for with `weight`)."""
        return dict(Counter(s for s, _ in epoch_order(self.sizes, self.weights, self.seed, 0)))


def plan_micro_batches(
    rows: Sequence[int], lengths: Sequence[int], batch_size: int, tokens_per_batch: int, packing: bool,
    row_tokens: int | None = None,
) -> list[list[list[int]]]:
    """Group `rows` into micro-batches: lists of rows of examples, at most `batch_size` examples and
    `tokens_per_batch` tokens (rows × the widest row) each.

    Packed: inside blocks of consecutive examples, first-fit-decreasing into rows of at most `row_tokens` tokens
    (several short examples share a row; position_ids restart at each), then rows of similar width together.
    Attention over a packed row costs its length squared, so rows stay short (`row_tokens`) instead of one row of
    `tokens_per_batch`. Padded: one example per row, similar lengths together. An example longer than a row or
    the budget is refused earlier (train.py, T005), so every example fits."""
    row_tokens = min(row_tokens or tokens_per_batch, tokens_per_batch)
    block = LENGTH_GROUP_BLOCK * batch_size
    batches: list[list[list[int]]] = []
    for start in range(0, len(rows), block):
        chunk = sorted(rows[start : start + block], key=lambda r: -lengths[r])  # stable: ties keep their order
        packed: list[list[int]] = []
        fill: list[int] = []
        for example in chunk:
            n = lengths[example]
            fits = (k for k, used in enumerate(fill) if used + n <= row_tokens and len(packed[k]) < batch_size)
            slot = next(fits, None) if packing else None
            if slot is None:
                packed.append([example])
                fill.append(n)
            else:
                packed[slot].append(example)
                fill[slot] += n
        order = sorted(range(len(packed)), key=lambda k: -fill[k])
        current: list[list[int]] = []
        examples = widest = 0
        for k in order:
            row, width = packed[k], fill[k]
            if current and (examples + len(row) > batch_size or (len(current) + 1) * max(widest, width) > tokens_per_batch):
                batches.append(current)
                current, examples, widest = [], 0, 0
            current.append(row)
            examples += len(row)
            widest = max(widest, width)
        if current:
            batches.append(current)
    return batches


def examples_of(micro_batch: list[list[int]]) -> list[int]:
    return [example for row in micro_batch for example in row]


class MicroBatchStream:
    """Global micro-batch number → (epoch, rows), computed epoch by epoch and cached."""

    def __init__(self, mix: SourceMix, lengths: Sequence[int], batch_size: int, tokens_per_batch: int, packing: bool,
                 row_tokens: int | None = None):
        self.mix, self.lengths = mix, lengths
        self.batch_size, self.tokens_per_batch, self.packing = batch_size, tokens_per_batch, packing
        self.row_tokens = row_tokens
        self._plans: dict[int, list[list[int]]] = {}
        self._counts: dict[int, int] = {}  # micro-batches per epoch: kept for every epoch seen (a few ints)

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            if len(self._plans) > 2:  # a step spans at most two epochs: keep memory flat
                self._plans.pop(min(self._plans))
            self._plans[epoch] = plan_micro_batches(
                self.mix.epoch(epoch), self.lengths, self.batch_size, self.tokens_per_batch, self.packing, self.row_tokens
            )
            self._counts[epoch] = len(self._plans[epoch])
        return self._plans[epoch]

    def count(self, epoch: int) -> int:
        if epoch not in self._counts:
            self.epoch_plan(epoch)
        return self._counts[epoch]

    def micro_batches_per_epoch(self) -> int:
        return self.count(0)

    def locate(self, micro: int) -> tuple[int, int]:
        """(epoch, index in that epoch) of global micro-batch `micro`."""
        epoch = 0
        while micro >= self.count(epoch):
            micro -= self.count(epoch)
            epoch += 1
        return epoch, micro

    def step(self, step: int, grad_accum: int, rank: int = 0, processes: int = 1) -> list[tuple[int, list[list[int]]]]:
        """The (epoch, micro-batch) pairs process `rank` trains on at 1-based optimizer step `step`."""
        first = (step - 1) * grad_accum * processes + rank * grad_accum
        epoch, index = self.locate(first)
        out = []
        for _ in range(grad_accum):
            plan = self.epoch_plan(epoch)
            if index >= len(plan):
                epoch, index = epoch + 1, 0
                plan = self.epoch_plan(epoch)
            out.append((epoch, plan[index]))
            index += 1
        return out


def shard_for_eval(n_batches: int, rank: int, processes: int) -> range:
    """Held-out micro-batches process `rank` scores; the sums are added across processes afterwards."""
    return range(rank, n_batches, processes)
