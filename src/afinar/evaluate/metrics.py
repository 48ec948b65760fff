"""Per-generation measures: did it stop, does it repeat itself, is it Spanish, how long, how close to the reference."""
from __future__ import annotations

from afinar.data.language import language_share


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: 0 = no loops, → 1 = the same phrase over and over."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def spanish_share(text: str) -> float | None:
    """Share of the decided words that are Spanish; None when no sentence could be decided (too short)."""
    share = language_share(text)
    return 1 - share.non_spanish_share if share.words else None


def chrf(hypothesis: str, reference: str) -> float:
    """chrF (sacrebleu) in 0..1: character n-gram F-score, robust to Spanish inflection."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hypothesis, [reference]).score / 100


def measure(text: str, reference: str, stopped: bool, new_tokens: int) -> dict:
    return {
        "stopped": stopped,
        "tokens": new_tokens,
        "words": len(text.split()),
        "repetition": round(repetition(text), 4),
        "spanish": None if (s := spanish_share(text)) is None else round(s, 4),
        "chrf": round(chrf(text, reference), 4) if reference else None,
    }
