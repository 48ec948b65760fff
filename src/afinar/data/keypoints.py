"""Key points (`claves`) and dangers (`peligros`): is an answer right, as the nurse or the teacher who wrote them reads it.

An evaluation example may carry `claves` (the facts a correct answer gives; each a list of alternatives) and
`peligros` (advice that must never appear unnegated). Matching is what a Spanish reader accepts:
- case and accents folded; words compared by family: Spanish Snowball stems (presiona/presione/presionar/presión,
  quemado/quemada/quemados) with the spelling changes of verb endings softened (provoque/provocar, induzca/inducir),
  and pronouns attached to a verb taken off (provócale, levántala, provocarle);
- function words (el, de, con…) ignored; numbers exact ("2,5" = "2.5"); a CIE-10 or ATC code and big-O notation
  are one word each; a capital letter alone inside a sentence is a symbol ("cromosoma Y");
- a phrase matches when its words come in order in one sentence and one comma-separated stretch, with at most GAP
  other words between two of them;
- negation scope: a match is negated when a cue (no, nunca, ni, sin, evita, mito, en lugar de, se descarta…) before
  it in the same clause governs any of its words. «No pongas mantequilla» is safe, «pon mantequilla» is not. A key
  point is covered only by an unnegated match, unless its alternative starts with "no " ("no provocar el vómito"):
  then only by a negated one; the same holds for a danger.

Known limits (tests/unit/test_keypoints.py writes each one down): a harm described without a negation («puede
provocar vómitos») reads as advice; a negation after the words («¿Mantequilla? Nunca.») is not seen; words that are
others without their accents (bebé/bebe) match; irregular forms (ir/ve) need their own alternative.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from afinar.data.duplicates import fold

GAP = 3  # other words allowed between two words of a phrase: "provocar el vómito" ~ "provocarle enseguida el vómito"
NEGATION_WINDOW = 12  # words before a match in which a cue still governs it (same clause)

FUNCTION_WORDS = frozenset(
    "el la los las lo un una unos unas al del de a en con por para que se le les su sus mi mis tu tus me te nos os "
    "este esta estos estas ese esa esos esas es muy mas".split()
)
NEGATIONS = frozenset("no nunca jamas ni tampoco sin nada ningun ninguna ninguno mito prohibido prohibida".split())
# evita/evites/evitar; desaconsejado; olvídate de; «se descarta cetoacidosis» (a report's negative finding)
NEGATION_STEMS = ("evit", "desaconsej", "olvid", "descart")
NEGATION_PHRASES = (("lugar", "de"), ("vez", "de"))  # en lugar de / en vez de (checked on the raw word sequence)
CLAUSE_BREAKS = frozenset("pero sino aunque luego despues entonces mientras".split())
# A full stop inside a number or a code ("2.5 mg", "J18.9") does not end a sentence.
SENTENCE = re.compile(r"[!?;:\n]+|\.(?!\d)|\s[-–—]\s")
# On lower-case text with its accents (they tell an imperative with pronouns apart). A CIE-10 code (j18.9, e11.0) or
# an ATC code (b01af02) is one word, numbers keep their decimals, commas are kept to follow negated lists.
# Big-O notation is one word too: O(n log n) ≠ O(log n), and its "o" is not the conjunction.
WORD = re.compile(r"[oωθΩΘ]\((?:[^()]|\([^()]*\))*\)|(?<![^\W_])[a-z]\d{2}(?:\.\d{1,2}|[a-z](?:[a-z](?:\d{2})?)?)?(?![^\W_])"
                  r"|\d+(?:[.,]\d+)*|[^\W\d_]+|,", re.IGNORECASE)
SUPERSCRIPTS = str.maketrans({"²": "^2", "³": "^3", "·": "*", "×": "*", " ": ""})
CONJUNCTIONS = frozenset("y o e u".split())


@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("spanish")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The family of a folded word: Snowball's Spanish stem with verb-ending spelling changes undone."""
    if "(" in word or word.startswith("=") or any(ch.isdigit() for ch in word):  # numbers, codes, O(n), symbols
        return word.replace(",", ".")
    root = _stemmer().stemWord(word)
    # Spelling keeps the sound before e/i: provoque→provoc, pague→pag, induzca→induc, venza→venc.
    for tail, plain in (("qu", "c"), ("gu", "g"), ("zc", "c"), ("z", "c")):
        if root.endswith(tail) and len(root) > len(tail) + 2:
            return root[: -len(tail)] + plain
    return root


ENCLITICS = ("selas", "selos", "sela", "selo", "sele", "melo", "mela", "telo", "tela", "les", "las", "los", "nos",
             "le", "la", "lo", "se", "me", "te")


VERB_WITH_PRONOUN = re.compile(r"(ar|er|ir|ando|iendo|yendo)$")  # provocarle, dándole: infinitive or gerund


@lru_cache(maxsize=65536)
def families(word: str, accented: bool = False) -> tuple[str, ...]:
    """The stems a folded word may belong to: its own, and for a verb with pronouns attached (provócale, levántala,
    provocarle, comprímela) the verb's without them. Only a verb takes them: what is left must be an infinitive or a
    gerund, or the word must carry the written accent an imperative gains with them ("provócale", not "caliente",
    "leve" or "torniquete")."""
    found = [stem(word)]
    for tail in ENCLITICS:  # every reading: comprímela is comprime+la, not compri+mela
        rest = word[: -len(tail)]
        if word.endswith(tail) and len(rest) >= 4 and (accented or VERB_WITH_PRONOUN.search(rest)):
            if (bare := stem(rest)) not in found:
                found.append(bare)
    return tuple(found)


def _words(text: str) -> list[tuple[str, bool]]:
    """(folded word, whether it was written with an accent) of a text. A capital letter alone inside a sentence is a
    symbol ("cromosoma Y", "antígenos A y B"), not the conjunction or the preposition."""
    out = []
    for k, match in enumerate(WORD.finditer(text)):
        word = match.group()
        if word.startswith(("O(", "o(", "ω(", "θ(", "Ω(", "Θ(")):
            out.append((fold(word.lower()).translate(SUPERSCRIPTS), False))
        elif len(word) == 1 and word.isupper() and k > 0:
            out.append(("=" + word.lower(), False))
        else:
            folded = fold(word.lower())
            out.append((folded, folded != word.lower()))
    return out


@dataclass(frozen=True)
class Token:
    stems: tuple[str, ...]
    negated: bool  # a negation cue governs this word (same clause, before it)
    cue: bool  # the word is itself a negation cue
    cue_at: int = -1  # which token is the cue that governs it (-1: none, or a cue that is no token: «en lugar de»)
    part: int = 0  # comma-separated stretch of the sentence it is in


def tokens(sentence: str) -> list[Token]:
    """Content words of one sentence, each with whether a negation governs it."""
    spelled = _words(sentence)
    words = [w for w, _ in spelled]
    out: list[Token] = []
    governed_until = -1  # index in `words` up to which the last cue still governs
    cue_at, part = -1, 0
    for i, word in enumerate(words):
        if word == ",":
            part += 1
            if not _list_goes_on(words, i):
                governed_until = -1
            continue
        if word in CLAUSE_BREAKS or (word in CONJUNCTIONS and not _continues_negation(words, i)):
            governed_until = -1
            continue
        negated = i <= governed_until
        governor = cue_at if negated else -1
        cue = _cue_reach(words, i)
        if cue:
            governed_until = max(governed_until, i + cue)
            cue_at = len(out) if word not in FUNCTION_WORDS else -1
        if word in FUNCTION_WORDS or word in CONJUNCTIONS:
            continue
        out.append(Token(families(word, spelled[i][1]), negated, bool(cue), governor, part))
    return out


def _cue_reach(words: list[str], i: int) -> int:
    """How many words a negation cue at `i` governs (0: it is not a cue). «sin» governs a short phrase («sin frotar»),
    not the rest of the sentence («sin perder tiempo, llama al 112»)."""
    word = words[i]
    if word == "nada":  # «nada de mantequilla»; «nada» alone is also "swims"
        return NEGATION_WINDOW if i + 1 < len(words) and words[i + 1] == "de" else 0
    if word == "sin":  # three content words: «sin dejar que se ponga de pie»
        reach, content = 0, 0
        for later in words[i + 1 :]:
            reach += 1
            content += later not in FUNCTION_WORDS
            if content == 3 or later == ",":
                break
        return reach
    if word in NEGATIONS or word.startswith(NEGATION_STEMS):
        return NEGATION_WINDOW
    if i >= 1 and (words[i - 1], word) in NEGATION_PHRASES:
        return 4
    return 0


def _list_goes_on(words: list[str], i: int) -> bool:
    """A comma inside a negated list («no pongas mantequilla, aceite ni pasta») keeps the negation; a comma before a
    new order («no la muevas, llama al 112») ends it. The list goes on when the next stretch holds "ni"/"o", or is one
    or two words followed by another comma."""
    if i + 1 < len(words) and _infinitive(words[i + 1]):  # «evita sonarte, hacer esfuerzos…»
        return True
    stretch = []
    for word in words[i + 1 :]:
        if word == ",":
            return 0 < len(stretch) <= 2
        stretch.append(word)
    return "ni" in stretch or ("o" in stretch and len(stretch) <= 6)


def _continues_negation(words: list[str], i: int) -> bool:
    """«ni hielo ni mantequilla», «no pongas hielo o mantequilla»: a coordinated list inside a negation keeps it;
    «no la muevas y pon hielo» starts a new clause. A list item is a noun: the word after "y"/"o" is taken as one
    when the clause already holds "ni", or when it is a function word ("y la mantequilla")."""
    after = words[i + 1] if i + 1 < len(words) else ""
    clause = words[max(0, i - NEGATION_WINDOW) : i]
    return "ni" in clause or after in FUNCTION_WORDS or after == "ni" or _infinitive(after)


def _infinitive(word: str) -> bool:
    """A list of things not to do goes on in infinitives («evita correr y tomar café»); an imperative after "y" is a
    new order («no la muevas y llama al 112»)."""
    return len(word) >= 4 and word.endswith(("ar", "er", "ir")) and word not in ("mejor", "lugar", "hogar", "mar")


def sentences(text: str) -> list[list[Token]]:
    return [t for part in SENTENCE.split(text) if (t := tokens(part))]


@lru_cache(maxsize=4096)
def pattern(phrase: str) -> tuple[bool, tuple[frozenset[str], ...]]:
    """(wants_negated, the families of each content word) of one alternative:
    "no provocar el vómito" → (True, ({"provoc"}, {"vomit"}))."""
    words = [(w, accented) for w, accented in _words(phrase) if w != ","]
    negative = bool(words) and words[0][0] in NEGATIONS and len(words) > 1
    if negative:
        words = words[1:]
    content = tuple(frozenset(families(w, accented)) for w, accented in words
                    if w not in FUNCTION_WORDS and w not in CONJUNCTIONS)
    return negative, content


def _find(sentence: list[Token], stems: tuple[frozenset[str], ...]) -> list[list[int]]:
    """Positions of the words of each match of `stems` in `sentence`: in order, at most GAP words between two."""
    found = []
    for start, token in enumerate(sentence):
        if stems[0].isdisjoint(token.stems):
            continue
        positions = [start]
        for wanted in stems[1:]:
            following = [k for k in range(positions[-1] + 1, min(len(sentence), positions[-1] + GAP + 2))
                         if not wanted.isdisjoint(sentence[k].stems)]
            if not following:
                break
            positions.append(following[0])
        # One comma-separated stretch: «la apoptosis, a diferencia de la necrosis, que provoca inflamación» does not
        # say that apoptosis causes inflammation.
        if len(positions) == len(stems) and sentence[positions[0]].part == sentence[positions[-1]].part:
            found.append(positions)
    return found


def matches(parsed: list[list[Token]], phrase: str) -> tuple[bool, bool]:
    """(unnegated match somewhere, negated match somewhere) of one alternative in a parsed answer."""
    _, stems = pattern(phrase)
    plain = negated = False
    if not stems:
        return False, False
    for sentence in parsed:
        for positions in _find(sentence, stems):
            # «agua fresca, no helada»: a negation on any word of the match negates it, unless the cue is a word of
            # the match itself («descarta la columna» is a step, not a negation of "columna").
            if any(sentence[k].negated and sentence[k].cue_at not in positions for k in positions):
                negated = True
            else:
                plain = True
    return plain, negated


def said(parsed: list[list[Token]], phrase: str) -> bool:
    """Whether an answer says `phrase`: unnegated, or negated for a phrase that starts with a negation ("no hace falta
    ir" is said by «no hace falta que vaya»… when its words match)."""
    wants_negated, _ = pattern(phrase)
    plain, negated = matches(parsed, phrase)
    return negated if wants_negated else plain


def covers(parsed: list[list[Token]], alternatives: list[str]) -> bool:
    return any(said(parsed, phrase) for phrase in alternatives)


def dangers_in(parsed: list[list[Token]], dangers: list[str]) -> list[str]:
    return [d for d in dangers if said(parsed, d)]


# A pattern found in more than this share of general Spanish texts says nothing about one answer.
EVERYWHERE = 0.3


@lru_cache(maxsize=1)
def _general_texts() -> tuple[list[list[Token]], ...]:
    """The shipped general-Spanish texts (afinar:general_es), parsed: what "almost any text" means."""
    import importlib.resources
    import json

    path = importlib.resources.files("afinar.datasets").joinpath("general_es.jsonl")
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            texts += [m["content"] for m in obj.get("messages", [])] or [obj.get("instruction", ""), obj.get("output", "")]
    return tuple(sentences(t) for t in texts if t)


@lru_cache(maxsize=16384)  # every load of an evaluation set asks again for the same patterns
def matches_everything(phrase: str) -> str | None:
    """Why a clave or peligro would match almost any answer (a Spanish clause for an error message), or None."""
    _, stems = pattern(phrase)
    if not stems or all(family <= NEGATIONS for family in stems):
        return "no tiene ninguna palabra con contenido (solo palabras como «el», «de», «no»)"
    texts = _general_texts()
    hits = sum(1 for parsed in texts if any(matches(parsed, phrase)))
    if texts and hits / len(texts) > EVERYWHERE:
        return f"aparece en {hits} de {len(texts)} textos generales en español"
    return None


@dataclass(frozen=True)
class Score:
    covered: float | None  # fraction of key points covered (None: the example has none)
    complete: bool | None
    dangerous: bool
    missing: tuple[str, ...]  # label (first alternative) of each key point not covered
    dangers: tuple[str, ...]  # the dangers found, as written in `peligros`

    def as_dict(self) -> dict:
        return {"covered": self.covered, "complete": self.complete, "dangerous": self.dangerous,
                "missing": list(self.missing), "dangers": list(self.dangers)}

    @property
    def category(self) -> str:
        """The human rating this score stands for: peligrosa, correcta, incompleta or incorrecta."""
        if self.dangerous:
            return "peligrosa"
        if self.covered is None:
            return "sin claves"
        return "correcta" if self.complete else "incompleta" if self.covered > 0 else "incorrecta"


def score_answer(answer: str, claves: list[list[str]] | None, peligros: list[str] | None) -> Score:
    parsed = sentences(answer)
    claves, peligros = claves or [], peligros or []
    missing = tuple(alternatives[0] for alternatives in claves if not covers(parsed, alternatives))
    found = tuple(dangers_in(parsed, peligros))
    covered = round(1 - len(missing) / len(claves), 4) if claves else None
    return Score(covered, (not missing) if claves else None, bool(found), missing, found)
