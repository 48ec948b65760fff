"""Sentences (or long pieces of sentences) that many training answers repeat word for word.

A small model trained on answers that all contain "Llama al 112 (o al número de emergencias de tu país)" learns to
write that and little else. `repeated_sentences` finds such boilerplate and says how many answers hold it; only the
repeated words and counts are returned, never an answer.

What counts as "the same sentence" (decided for issue 26; tested in tests/unit/test_repeated.py):

* Answers are split into sentences at . ! ? … (followed by a space, a closing mark or the end) and at line breaks,
  and words are compared after `afinar.data.duplicates.normalise` (case, accents and punctuation ignored).
* A whole sentence of 4 or 5 words repeats only as a whole sentence (shorter ones are ignored: "Llama al 112." is
  too common to be a finding).
* From 6 words up, a **run of 6+ consecutive words inside a sentence** counts, wherever it sits in the sentence.
  The shipped first-aid set is why: its 112 sentence is rarely a sentence of its own ("Si no respira, llama al 112
  (o al número de emergencias de tu país) y…"): exact sentences find 16 of its 320 answers, sentences grouped by
  their first 6 words 56 (under the 20 % threshold), while the words "al 112 (o al número de emergencias de tu país)"
  are in 193 (60 %). Sentences that start the same and end differently (grouping by a common start, asked for in the
  issue) are the special case where the run is at the start: "Llama al 112 (o al número de emergencias de tu país)…".
* A run starts from the 6-word seed that most answers hold and grows one word to the left, then to the right, while
  at least `GROW_KEEP` (90 %) of the answers holding it also hold the longer run ("número de emergencias de tu país",
  200 answers, grows to "al 112 (o al número de emergencias de tu país)", 193; "llama" before it, 159, stops it).
  Words already in a chosen run are not used again, so one piece of boilerplate is reported once.
* `sentence` is the most common original spelling of the run, with "…" where it continues a longer sentence:
  "…al 112 (o al número de emergencias de tu país)". `count` is how many answers contain the run (each
  answer once; counted again on all answers after choosing it, so exact for the text shown), `share` =
  count / len(answers).
* A run that `afinar.data.pii.find_pii` flags, in any spelling or with a few characters of its context on each side
  (so "paciente Ana López" or half a phone number at the edge is caught), is never returned.

Cost: candidates come from all answers up to `SAMPLE` answers, else from an even sample of that many (with half the
share as threshold, so a run in >= 20 % of answers is not missed); every candidate is then counted on all answers
(320 answers: 0.07 s; 50 000 answers of ~100 words: ~8 s on 2 CPU cores).
"""
from __future__ import annotations

import functools
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from afinar.data.duplicates import normalise
from afinar.data.pii import find_pii

MIN_SENTENCE_WORDS = 4  # whole sentences shorter than this are ignored
RUN_WORDS = 6  # from this many words, a run inside a longer sentence counts
SAMPLE = 2000  # answers read to find candidates; all answers are counted
MAX_CANDIDATES = 50
GROW_KEEP = 0.9  # a run grows by a word while at least this share of the answers holding it keep the longer run
PII_CONTEXT = 12  # characters on each side of a run also checked for personal data

_END = re.compile(r"[.!?…]+(?=[\s\"'»”)\]]|$)|[\r\n]+")
_WORD = re.compile(r"\w+")
_OPENING = "([«“¿¡\"'"
_CLOSING = ")]»”\"'"


@dataclass
class _Sentence:
    words: list[str]  # normalised
    starts: list[int]  # character offsets of each word in the answer
    ends: list[int]
    padded: str  # " w1 w2 … " for substring search


@functools.lru_cache(maxsize=1 << 16)
def _words_of(token: str) -> tuple[str, ...]:
    return tuple(normalise(token).split())


def _parse(text: str) -> list[_Sentence]:
    sentences = []
    start = 0
    bounds = [(m.start(), m.end()) for m in _END.finditer(text)] + [(len(text), len(text))]
    for stop, after in bounds:
        words, starts, ends = [], [], []
        for m in _WORD.finditer(text, start, stop):
            for word in _words_of(m.group()):  # "½" normalises to two words: both point at the same span
                words.append(word)
                starts.append(m.start())
                ends.append(m.end())
        if words:
            sentences.append(_Sentence(words, starts, ends, " " + " ".join(words) + " "))
        start = after
    return sentences


def _threshold(n: int, min_share: float, min_count: int) -> int:
    return max(1, min_count, math.ceil(min_share * n - 1e-9))


def _candidates(parsed: list[list[_Sentence]], threshold: int) -> list[tuple[tuple[str, ...], bool]]:
    """(words, whole_sentence_only) for runs held by >= threshold of the parsed answers, most frequent first."""
    short: Counter = Counter()
    seeds: Counter = Counter()
    for sentences in parsed:
        short.update({tuple(s.words) for s in sentences if MIN_SENTENCE_WORDS <= len(s.words) < RUN_WORDS})
        seeds.update({tuple(s.words[i : i + RUN_WORDS]) for s in sentences for i in range(len(s.words) - RUN_WORDS + 1)})
    found: list[tuple[tuple[str, ...], bool]] = [(words, True) for words, n in short.most_common() if n >= threshold]
    frequent = {words for words, n in seeds.items() if n >= threshold}
    if not frequent:
        return found
    # Every place (answer, sentence, first word) of a frequent seed.
    places: dict[tuple, list[tuple[int, int, int]]] = defaultdict(list)
    for a, sentences in enumerate(parsed):
        for si, s in enumerate(sentences):
            for i in range(len(s.words) - RUN_WORDS + 1):
                key = tuple(s.words[i : i + RUN_WORDS])
                if key in frequent:
                    places[key].append((a, si, i))
    covered: set[tuple[int, int, int]] = set()  # (answer, sentence, word) already in a chosen run

    def free(a, si, i, length):
        return all((a, si, k) not in covered for k in range(i, i + length))

    runs = []
    while len(runs) < MAX_CANDIDATES:
        best, best_places, best_n = None, [], 0
        for key, where in places.items():
            left = [p for p in where if free(*p, RUN_WORDS)]
            n = len({p[0] for p in left})
            if n > best_n:
                best, best_places, best_n = key, left, n
        if best is None or best_n < threshold:
            break
        answers = {p[0] for p in best_places}
        occ = [(a, si, i, RUN_WORDS) for a, si, i in best_places]
        for side in (-1, 1):  # grow left, then right, while nearly every answer keeps the longer run
            while True:
                nexts: dict[str, list] = defaultdict(list)
                for a, si, i, length in occ:
                    k = i + length if side == 1 else i - 1
                    words = parsed[a][si].words
                    if 0 <= k < len(words) and (a, si, k) not in covered:
                        nexts[words[k]].append((a, si, i if side == 1 else i - 1, length + 1))
                if not nexts:
                    break
                grown = max(nexts.values(), key=lambda v: len({p[0] for p in v}))
                keeps = {p[0] for p in grown}
                if len(keeps) < max(threshold, GROW_KEEP * len(answers)):
                    break
                occ, answers = grown, keeps
        for a, si, i, length in occ + [(a, si, i, RUN_WORDS) for a, si, i in best_places]:
            covered.update((a, si, k) for k in range(i, i + length))
        a, si, i, length = occ[0]
        runs.append(tuple(parsed[a][si].words[i : i + length]))
    return found + [(run, False) for run in runs]


def _spelling(text: str, s: _Sentence, i: int, length: int) -> tuple[str, str]:
    """(shown text with "…" where the sentence goes on, the context window checked for personal data)."""
    begin, end = s.starts[i], s.ends[i + length - 1]
    while begin > 0 and text[begin - 1] in _OPENING:
        begin -= 1
    while end < len(text) and text[end] in _CLOSING:
        end += 1
    shown = ("…" if i > 0 else "") + " ".join(text[begin:end].split()) + ("…" if i + length < len(s.words) else "")
    return shown, text[max(0, begin - PII_CONTEXT) : end + PII_CONTEXT]


def repeated_sentences(answers: list[str], min_share: float = 0.2, min_count: int = 5, top: int = 5) -> list[dict]:
    """[{"sentence", "count", "share"}] for runs of words that >= max(min_count, min_share · len(answers)) answers
    repeat (see the module docstring), most answers first; never a run with possible personal data."""
    return [item for item, _ in find_repeated(answers, min_share, min_count, top)]


def find_repeated(answers: list[str], min_share: float = 0.2, min_count: int = 5, top: int = 5) -> list[tuple[dict, list[int]]]:
    """As `repeated_sentences`, each with the indices of the answers that contain it."""
    n = len(answers)
    if not n:
        return []
    threshold = _threshold(n, min_share, min_count)
    if threshold > n:
        return []
    if n <= SAMPLE:
        sample, sample_threshold = [_parse(text) for text in answers], threshold
    else:
        sample = [_parse(answers[k * n // SAMPLE]) for k in range(SAMPLE)]
        sample_threshold = max(2, math.ceil(min_share / 2 * SAMPLE))
    candidates = _candidates(sample, sample_threshold)
    if not candidates:
        return []
    parsed = sample if n <= SAMPLE else [_parse(text) for text in answers]
    found, needles = [], []
    for words, whole in candidates:
        needle = " " + " ".join(words) + " "
        if not whole and any(needle in longer for longer in needles):
            continue  # a piece of a run already counted (or hidden)
        holders, spellings, hidden = [], Counter(), False
        for a, sentences in enumerate(parsed):
            for s in sentences:
                pos = s.padded.find(needle)
                if pos < 0 or (whole and s.padded != needle):
                    continue
                shown, context = _spelling(answers[a], s, s.padded.count(" ", 0, pos), len(words))
                hidden = hidden or bool(find_pii(context))
                spellings[shown] += 1
                holders.append(a)
                break  # each answer once
        hidden = hidden or any(find_pii(text) for text in spellings)
        if hidden or len(holders) >= threshold:
            needles.append(needle)
        if hidden or len(holders) < threshold:
            continue
        sentence = spellings.most_common(1)[0][0]
        found.append(({"sentence": sentence, "count": len(holders), "share": round(len(holders) / n, 4)}, holders))
    found.sort(key=lambda item: (-item[0]["count"], -len(item[0]["sentence"])))
    return found[:top]


def percent(share: float) -> int:
    """0.606 → 61 (for "61 %")."""
    return int(100 * share + 0.5)


def describe(item: dict, total: int) -> str:
    """The warning in Spanish: counts and the repeated words only."""
    return (f"{percent(item['share'])} % de las respuestas de entrenamiento ({item['count']} de {total}) contienen "
            f"«{item['sentence']}»: el modelo aprenderá a repetirla (varía la redacción o quítala de parte de ellas)")
