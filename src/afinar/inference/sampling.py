"""Sampling settings, the sampler and the one decode loop over any runtime that hands back logits.

Used by the onnxruntime engine (`afinar chat`, `afinar serve`), by the llama.cpp engine for its text side, and by the
export checks (`greedy_decode`: the same loop at temperature 0, on llama.cpp and onnxruntime). A leaf module: numpy
is imported inside the functions and nothing of afinar's but its config's types, so export/ and inference/ can both
use it without depending on each other.

The loop has two layers:
- `sample_tokens(step, …)`: token ids, chosen with `pick` from the logits `step(new_ids)` returns; the generator's
  return value says whether a stop token came (`collect` gives both);
- `stream_reply(tokens, decode, …)`: text pieces as they become whole characters, then a `Reply`. With
  `stop_strings`, the answer ends at the first one (counted as stopped): no piece ever holds a stop string or the
  part of one that may still be completing, and the reply's text is cut before it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from afinar.config import GenerationSection

# `step(new_ids)` feeds tokens to a runtime (which keeps its own cache) and returns the last position's logits (V,).
Step = Callable[[list[int]], object]
# The ids of an answer so far → its text (special tokens skipped).
Decode = Callable[[list[int]], str]


@dataclass
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.1
    max_tokens: int = 256
    seed: int | None = None
    timeout_s: float | None = None  # stop generating after this long (the answer is then cut, stopped=False)

    @classmethod
    def from_generation(cls, gen: GenerationSection, **overrides) -> Sampling:
        base = cls(gen.temperature, gen.top_p, gen.top_k, gen.repetition_penalty, gen.max_new_tokens)
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        return base


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    stopped: bool  # the model ended its turn by itself, or wrote a stop string (False: cut by max_tokens or time)


def pick(logits, seen: set[int], sampling: Sampling, rng) -> int:
    """transformers' order: repetition penalty, temperature, top-k, top-p, then a draw (argmax at temperature 0)."""
    import numpy as np

    # The penalty in float32, as transformers applies it to float32 logits: the same argmax on near-ties.
    scores = np.array(logits, dtype=np.float32)
    if sampling.repetition_penalty != 1.0 and seen:
        index = list(seen)
        chosen = scores[index]
        scores[index] = np.where(chosen < 0, chosen * sampling.repetition_penalty, chosen / sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(scores.argmax())
    scores = scores.astype(np.float64) / sampling.temperature
    if sampling.top_k and sampling.top_k < scores.size:
        kth = np.partition(scores, -sampling.top_k)[-sampling.top_k]
        scores[scores < kth] = -np.inf
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        # The nucleus is nearly always a few tokens: sort the 256 likeliest (a partition, not a sort, of the
        # vocabulary: 2.3 → 1.5 ms a token for SmolLM2's 49 152), and all of them only when those fall short.
        likeliest = np.argpartition(-probs, min(256, probs.size) - 1)[:256]
        order = likeliest[np.argsort(-probs[likeliest])]
        if probs[order].sum() < sampling.top_p:
            order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


# --- tokens ---------------------------------------------------------------------------------------------------------


class AnswerSampler:
    """One answer's choices: `next(logits)` is the token to feed, or None when the answer is over (`stopped`: True
    when a stop token came, False when `max_tokens` or `timeout_s` cut it). Shared by `sample_tokens` (one answer,
    any runtime) and llama.cpp's batched answers, so both choose by the same rule."""

    def __init__(self, prompt_ids: list[int], eos: set[int], sampling: Sampling):
        import numpy as np

        self.eos, self.sampling = eos, sampling
        self.deadline = time.monotonic() + sampling.timeout_s if sampling.timeout_s else None
        self.rng = np.random.default_rng(sampling.seed)
        self.seen = set(prompt_ids)
        self.count = 0
        self.stopped: bool | None = None

    def next(self, logits) -> int | None:
        if self.count >= self.sampling.max_tokens or (self.deadline and time.monotonic() >= self.deadline):
            self.stopped = False
            return None
        token = pick(logits, self.seen, self.sampling, self.rng)
        if token in self.eos:
            self.stopped = True
            return None
        self.count += 1
        self.seen.add(token)
        return token


def sample_tokens(step: Step, prompt_ids: list[int], eos: set[int], sampling: Sampling) -> Generator[int, None, bool]:
    """The answer's token ids, one at a time (the stop token not included); returns True if a stop token came, False
    when `max_tokens` or `timeout_s` cut it. Closing the generator stops the runtime: no further `step`."""
    sampler = AnswerSampler(prompt_ids, eos, sampling)
    logits = step(list(prompt_ids))
    while (token := sampler.next(logits)) is not None:
        yield token
        logits = step([token])
    return bool(sampler.stopped)


def replay(tokens: list[int], stopped: bool) -> Generator[int, None, bool]:
    """`tokens` as a `sample_tokens`-like generator (for `stream_reply`) of an answer already chosen."""
    yield from tokens
    return stopped


def collect(tokens: Generator[int, None, bool]) -> tuple[list[int], bool]:
    """(every token of `tokens`, the generator's return value)."""
    out: list[int] = []
    while True:
        try:
            out.append(next(tokens))
        except StopIteration as end:
            return out, bool(end.value)


def greedy_decode(step: Step, prompt_ids: list[int], eos: set[int], max_new_tokens: int,
                  penalty: float = 1.0) -> tuple[list[int], bool]:
    """Greedy decoding over any runtime: `step(new_ids)` feeds tokens and returns the last position's logits (V,).

    `penalty` is transformers' repetition penalty (see `pick`), so each runtime is held to the same rule as the
    reference. Returns (tokens without the stop token, whether a stop token came)."""
    greedy = Sampling(temperature=0.0, repetition_penalty=penalty, max_tokens=max_new_tokens)
    return collect(sample_tokens(step, prompt_ids, eos, greedy))


# --- text -----------------------------------------------------------------------------------------------------------


class Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character, nor a stop string or the start of one.

    `push(token)` returns the text that is safe to show now; `cut` becomes the stop string's position in `text` when
    one appears; `flush()` releases what was held back once the answer is over."""

    def __init__(self, decode: Decode, stop_strings: tuple[str, ...] = ()):
        self.decode = decode
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.ids: list[int] = []
        self.text = ""  # the answer decoded so far, whole characters only
        self.sent = 0  # characters of `text` already released
        self.cut: int | None = None

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        self.text = text
        found = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        if found:
            self.cut = min(found)
            return self._release(max(self.cut, self.sent))
        return self._release(len(text) - self._held_back(text))

    def _held_back(self, text: str) -> int:
        """Length of the longest end of `text` (not yet released) that begins some stop string."""
        free = len(text) - self.sent
        return max((k for s in self.stop_strings for k in range(min(len(s) - 1, free), 0, -1)
                    if text.endswith(s[:k])), default=0)

    def _release(self, end: int) -> str:
        piece = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece

    def flush(self) -> str:
        return "" if self.cut is not None else self._release(len(self.text))

    def final_text(self) -> str:
        return self.text[:self.cut] if self.cut is not None else self.decode(self.ids)


def stream_reply(tokens: Iterator[int], decode: Decode, prompt_tokens: int,
                 stop_strings: tuple[str, ...] = ()) -> Iterator[str | Reply]:
    """Text pieces of `tokens` as they are decoded, then a `Reply`. `tokens` is a `sample_tokens`-like generator
    (its return value: a stop token came); a stop string ends the answer there, stopped, and `tokens` is closed."""
    detok = Detokenizer(decode, stop_strings)
    stopped = False
    try:
        while True:
            try:
                token = next(tokens)
            except StopIteration as end:
                stopped = bool(end.value)
                break
            piece = detok.push(token)
            if piece:
                yield piece
            if detok.cut is not None:
                stopped = True
                break
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()
    if rest := detok.flush():
        yield rest
    yield Reply(detok.final_text().strip(), prompt_tokens, len(detok.ids), stopped)


def generate(step: Step, prompt_ids: list[int], eos: set[int], sampling: Sampling, decode: Decode,
             stop_strings: tuple[str, ...] = ()) -> Iterator[str | Reply]:
    """One streamed answer over any runtime: `sample_tokens` read by `stream_reply`."""
    return stream_reply(sample_tokens(step, prompt_ids, eos, sampling), decode, len(prompt_ids), stop_strings)
