"""Which share of a dataset's text is not Spanish: a stop-word vote per sentence, no model, no download.

Function words identify a language well enough to flag English (or Portuguese, Catalan…) answers in a
Spanish dataset; a sentence with fewer than three function words stays undecided. Code blocks and inline
code are removed first so a tutor's Python does not count as English.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

STOPWORDS = {
    "es": "el la los las de del que y en un una es por con para se no su sus al lo como más pero muy sin sobre "
    "también hay donde cuando porque esto esta este estos estas ese esa eso entre hasta desde puede pueden "
    "son está están fue ser tiene tienen hace debe si sí le les nos ya ni otro otra otros cada todo todos qué cómo",
    "en": "the and of to is in that it for with as on are be this by you not or from at have an which was can "
    "if your will they their there what when how should do does has been but we he she its these those",
    "pt": "o os as do da dos das em um uma não com para é são também mais muito ao pelo pela no na nos nas "
    "que e se você isso esta este mas já há foi ser tem",
    "fr": "le les des du et est une un dans pour pas que qui sur avec au aux ce il elle sont plus ne vous nous "
    "cette ces mais où être ont fait",
    "it": "il lo gli della di che è e un una per con non sono del nel alla anche più questo questa ma come "
    "nella degli delle hanno",
    "ca": "el els les de del que i és en un una per amb no als aquest aquesta però molt també són seu seva "
    "hi ha pot",
    "de": "der die das und ist nicht ein eine mit zu von den dem für auf sich auch es im ich sie wir sind",
}
_SETS = {lang: set(words.split()) for lang, words in STOPWORDS.items()}
_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_SENTENCES = re.compile(r"(?<=[.!?;:])\s+|\n+")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


@dataclass
class LanguageShare:
    words: int = 0  # words in sentences whose language was decided
    spanish: int = 0
    by_language: dict | None = None

    @property
    def non_spanish_share(self) -> float:
        return 1 - self.spanish / self.words if self.words else 0.0

    def add(self, other: LanguageShare) -> None:
        self.words += other.words
        self.spanish += other.spanish
        merged = dict(self.by_language or {})
        for lang, n in (other.by_language or {}).items():
            merged[lang] = merged.get(lang, 0) + n
        self.by_language = merged


def sentence_language(sentence: str) -> tuple[str | None, int]:
    words = [w.lower() for w in _WORD.findall(sentence)]
    votes = {lang: sum(1 for w in words if w in stop) for lang, stop in _SETS.items()}
    best = max(votes.values(), default=0)
    if best < 3:
        return None, len(words)
    # Ties go to Spanish: shared words (de, que, en…) should not make a Spanish sentence foreign.
    lang = "es" if votes["es"] == best else max(votes, key=votes.get)
    return lang, len(words)


def language_share(text: str) -> LanguageShare:
    text = _INLINE_CODE.sub(" ", _CODE_BLOCK.sub(" ", text))
    share = LanguageShare(by_language={})
    for sentence in _SENTENCES.split(text):
        lang, n = sentence_language(sentence)
        if lang is None:
            continue
        share.words += n
        share.by_language[lang] = share.by_language.get(lang, 0) + n
        if lang == "es":
            share.spanish += n
    return share
