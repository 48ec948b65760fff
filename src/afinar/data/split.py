"""Deterministic train/validation split, leakage report and weighted mixing of sources."""
from __future__ import annotations

import random
import re

from afinar.data.formats import Example, Problem


def split(examples: list[Example], val_fraction: float, seed: int = 42) -> tuple[list[Example], list[Example]]:
    """Same input, same seed → same split, on every machine (Python's `random` is specified)."""
    if val_fraction <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    val_ids = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_ids]
    val = [e for i, e in enumerate(examples) if i in val_ids]
    return train, val


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def prompt_key(example: Example) -> str:
    """The question side of an example, normalised: what must not appear in both train and val."""
    return _normalise(" ".join(m["content"] for m in example.messages if m["role"] == "user"))


def leakage(train: list[Example], val: list[Example]) -> list[Problem]:
    seen = {}
    for example in train:
        seen.setdefault(prompt_key(example), example)
    problems = []
    for example in val:
        twin = seen.get(prompt_key(example))
        if twin is not None:
            problems.append(
                Problem(
                    example.source,
                    example.line,
                    "D014",
                    f"la pregunta de validación también está en entrenamiento ({twin.where}); la pérdida de validación será optimista",
                    "warning",
                )
            )
    return problems


def epoch_order(sizes: list[int], weights: list[float], seed: int, epoch: int) -> list[tuple[int, int]]:
    """(source index, example index) pairs for one epoch.

    Equal weights: every example once, shuffled. Unequal weights: an epoch keeps the total size, and source
    i fills a share w_i / sum(w) of it, cycling through its own shuffled examples (oversampling small ones).
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    total = sum(sizes)
    if len(set(weights)) <= 1:
        counts = list(sizes)
    else:
        counts = [round(total * w / sum(weights)) if size else 0 for size, w in zip(sizes, weights)]
    pairs = []
    for source, (size, count) in enumerate(zip(sizes, counts)):
        drawn: list[int] = []
        while len(drawn) < count and size:
            cycle = list(range(size))
            rng.shuffle(cycle)
            drawn.extend(cycle)
        pairs.extend((source, i) for i in drawn[:count])
    rng.shuffle(pairs)
    return pairs
