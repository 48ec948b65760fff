"""The recipe's data as training reads it: tokenized (cached), checked against the token budget, in micro-batches.

Shared by `afinar train` and `afinar plan`, so the plan counts the same examples, micro-batches and steps the
run will train on: tokens per step, the largest micro-batch (the one that sets peak memory), steps per epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from afinar.data.batching import (
    MicroBatchStream,
    SourceMix,
    examples_of,
    plan_micro_batches,
)
from afinar.data.templates import shared_prefix_of_batches
from afinar.errors import AfinarError

# Longest packed row (or the longest example, if longer). With a block-diagonal mask (train.compile, or a model
# without attention backends) a row's attention covers all of it: measured on SmolLM2-135M, one 1024-token row
# trained 30 % slower than 4 rows of 256. Per-example attention (afinar/attention.py) does not care.
PACKED_ROW_TOKENS = 512
# Tokens of each example read to find the prefix they all share (system prompt and the template's opening).
PREFIX_PROBE_TOKENS = 256


@dataclass
class TrainingData:
    data: object  # data.tokenized.TokenizedData
    lengths: list[int]  # tokens of each training example
    stream: MicroBatchStream
    val_plan: list  # the held-out micro-batches
    row_tokens: int

    def steps_per_epoch(self, grad_accum: int, processes: int = 1) -> int:
        return max(1, self.stream.micro_batches_per_epoch() // (grad_accum * processes))

    def total_steps(self, train_cfg, processes: int = 1) -> int:
        """Optimizer steps of the recipe: max_steps, else its epochs (a time budget may plan fewer)."""
        per_epoch = self.steps_per_epoch(train_cfg.grad_accum, processes)
        return train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * per_epoch))

    @cached_property
    def shared_prefix(self) -> int:
        """Tokens every example (train and val) starts with, no label predicted in them: read when a packed run asks
        (not by the plan's formula, nor with `packing: false`)."""
        splits = (self.data.train, self.data.val)
        return shared_prefix_of_batches(batch for split in splits for batch in _heads(split, PREFIX_PROBE_TOKENS))

    def micro_batch_tokens(self, epoch: int = 0) -> list[int]:
        """Real (unpadded) tokens of each micro-batch of an epoch, in training order."""
        return [sum(self.lengths[i] for i in examples_of(rows)) for rows in self.stream.epoch_plan(epoch)]

    def largest_micro_batch(self, epoch: int = 0) -> list[list[int]]:
        """The micro-batch of the epoch whose tensors are largest (rows × widest row): the one that sets the peak."""
        return max(self.stream.epoch_plan(epoch), key=self.width_tokens)

    def width_tokens(self, rows: list[list[int]]) -> int:
        """Tokens the micro-batch's tensors hold, padding included: rows × the widest row."""
        return len(rows) * max(sum(self.lengths[i] for i in row) for row in rows)


def prepare_training_data(recipe, tokenizer, progress: bool = True, say=print) -> TrainingData:
    """Tokenize (or reuse the cache), report, check and plan the micro-batches. Raises the data's own errors."""
    from afinar.data.tokenized import load_or_tokenize

    cfg = recipe.train
    data = load_or_tokenize(recipe.data, tokenizer, progress=progress)
    data.report(out=say)
    if data.errors:
        raise AfinarError("D000", f"los datos tienen {len(data.errors)} errores (ver arriba).")
    if len(data.train) == 0:
        raise AfinarError("T004", "no queda ningún ejemplo de entrenamiento tras aplicar max_length.")
    lengths = data.lengths("train")
    if max(lengths) > cfg.tokens_per_batch:
        raise AfinarError(
            "T005", f"el ejemplo más largo tiene {max(lengths)} tokens y train.tokens_per_batch es {cfg.tokens_per_batch}.",
            where="train.tokens_per_batch",
            hint=f"sube train.tokens_per_batch a {max(lengths)} o más, o baja data.max_length",
        )
    weights = [s.weight for s in recipe.data.sources]
    mix = SourceMix(data.train["source"], weights, cfg.seed)
    if len(weights) > 1:
        drawn = mix.per_epoch()
        for k, source in enumerate(recipe.data.sources):
            say(f"  mezcla por época: {Path(source.path).name}: {drawn.get(k, 0)} de {mix.sizes[k]} (peso {source.weight:g})")
    # Packed rows stay short: attention over a row costs its length squared (see data/batching.py).
    row_tokens = max(max(lengths), PACKED_ROW_TOKENS)
    stream = MicroBatchStream(mix, lengths, cfg.batch_size, cfg.tokens_per_batch, cfg.packing, row_tokens)
    val_lengths = data.lengths("val")
    val_plan = plan_micro_batches(list(range(len(val_lengths))), val_lengths, cfg.batch_size,
                                  max(cfg.tokens_per_batch, max(val_lengths, default=0)), cfg.packing, row_tokens)
    return TrainingData(data, lengths, stream, val_plan, row_tokens)


def _heads(dataset, tokens: int):
    """(ids, labels, lengths) of the first `tokens` tokens of every row, read from the Arrow table 4096 rows at a
    time as flat arrays (a 100 000-example dataset is never turned into Python lists)."""
    import pyarrow.compute as pc

    for table in dataset.with_format("arrow").iter(batch_size=4096):
        ids = pc.list_slice(table["input_ids"].combine_chunks(), 0, tokens)
        labels = pc.list_slice(table["labels"].combine_chunks(), 0, tokens)
        yield (ids.flatten().to_numpy(), labels.flatten().to_numpy(),
               pc.list_value_length(ids).to_numpy(zero_copy_only=False))
