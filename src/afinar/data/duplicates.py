"""Exact and near-duplicate detection over texts (MinHash + LSH, verified by exact Jaccard).

Near duplicates are pairs whose word 3-gram sets overlap (Jaccard) at or above a threshold. For a few
hundred texts every pair could be compared, but users bring 100k-row datasets: LSH keeps this close to
linear. Candidates from LSH are always verified with the exact Jaccard, so there are no false positives;
a true pair can be missed only with tiny probability near the threshold.
"""
from __future__ import annotations

import re
import unicodedata
import zlib
from collections import defaultdict

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")
_MERSENNE = (1 << 61) - 1


def fold(text: str) -> str:
    """Lower case without accents: 'Vómito' and 'vomito' compare equal."""
    text = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def normalise(text: str) -> str:
    """Lower case, no accents, no punctuation, single spaces: 'equal after normalising' = exact duplicate."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", fold(text))).strip()


def shingles(text: str, n: int = 3) -> set[str]:
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _signature(grams: set[str], params: list[tuple[int, int]]) -> list[int]:
    # crc32 rather than hash(): Python's string hash changes per process and results must be reproducible.
    hashes = [zlib.crc32(g.encode("utf-8")) for g in grams] or [0]
    return [min((a * h + b) % _MERSENNE for h in hashes) for a, b in params]


def exact_duplicates(texts: list[str]) -> list[tuple[int, int]]:
    """(first index, later index) for texts equal after `normalise`."""
    first: dict[str, int] = {}
    pairs = []
    for i, text in enumerate(texts):
        key = normalise(text)
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs


def near_duplicates(
    texts: list[str], threshold: float = 0.5, bands: int = 16, rows: int = 4, seed: int = 1
) -> list[tuple[int, int, float]]:
    """(i, j, jaccard) with i < j for distinct texts whose 3-gram Jaccard is >= threshold.

    16 bands x 4 rows: a pair at Jaccard 0.5 is found with probability 1-(1-0.5^4)^16 ≈ 0.65, at 0.6 ≈ 0.89,
    at 0.7 ≈ 0.99. Small inputs (<= 400 texts) are compared exhaustively instead, so nothing is missed.
    """
    grams = [shingles(t) for t in texts]
    exact = {j for _, j in exact_duplicates(texts)}
    found: list[tuple[int, int, float]] = []
    if len(texts) <= 400:
        candidates = ((i, j) for i in range(len(texts)) for j in range(i + 1, len(texts)))
    else:
        import random

        rng = random.Random(seed)
        params = [(rng.randrange(1, _MERSENNE), rng.randrange(0, _MERSENNE)) for _ in range(bands * rows)]
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, g in enumerate(grams):
            if not g:
                continue
            sig = _signature(g, params)
            for band in range(bands):
                buckets[(band, *sig[band * rows : (band + 1) * rows])].append(i)
        pairs: set[tuple[int, int]] = set()
        for members in buckets.values():
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    pairs.add((members[a], members[b]))
        candidates = iter(sorted(pairs))
    for i, j in candidates:
        if i in exact or j in exact:
            continue  # already reported as exact duplicates
        score = jaccard(grams[i], grams[j])
        if score >= threshold:
            found.append((i, j, round(score, 3)))
    return found
