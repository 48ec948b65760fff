"""The shipped datasets: valid, distinct (exact and near duplicates), within their length rules, and
checked with the same functions users get (epicrisis checker, markdown rule, Python snippets that compile)."""
import ast
import json
import re
from pathlib import Path

import pytest

from afinar.config import DataSection, DataSource
from afinar.data.duplicates import exact_duplicates, jaccard, near_duplicates, normalise, shingles
from afinar.data.formats import shipped_dataset
from afinar.data.pii import find_pii
from afinar.data.preflight import NEAR_THRESHOLD
from afinar.data.validate import gather
from afinar.evaluate.checks import MARKDOWN, check_epicrisis

NAMES = ["primeros_auxilios", "primeros_auxilios_evaluacion", "epicrisis", "tutor_algoritmos", "ciencias_biologia", "general_es"]
MINIMUM = {"primeros_auxilios": 300, "primeros_auxilios_evaluacion": 30, "epicrisis": 120, "tutor_algoritmos": 100,
           "ciencias_biologia": 100, "general_es": 50}
TUTOR_SYSTEM = (
    "Eres un tutor de algoritmos y estructuras de datos. Explicas en español, paso a paso y con paciencia, con "
    "ejemplos cortos en Python e indicando el coste en notación O grande."
)


def rows(name):
    return [json.loads(line) for line in shipped_dataset(name).read_text(encoding="utf-8").splitlines() if line.strip()]


def sides(name, row):
    """(question side, answer side) as plain text, for duplicate checks."""
    if name == "tutor_algoritmos":
        messages = row["messages"]
        return (" ".join(m["content"] for m in messages if m["role"] == "user"),
                " ".join(m["content"] for m in messages if m["role"] == "assistant"))
    if name == "epicrisis":
        case = row["input"]
        values = [case["motivo_ingreso"], case["evolucion"], *case["procedimientos"], *case["indicaciones_alta"],
                  *(d["descripcion"] for d in case["diagnosticos"]), *(m["nombre"] for m in case["medicamentos"])]
        return " ".join(values), row["output"]
    return row["instruction"], row["output"]


@pytest.mark.parametrize("name", NAMES)
def test_valid_large_enough_and_distinct(name):
    data = rows(name)
    assert len(data) >= MINIMUM[name]
    prepared = gather(DataSection(sources=[DataSource(path=str(shipped_dataset(name)))]))
    assert not prepared.problems, [p.render() for p in prepared.problems[:5]]
    for side in (0, 1):
        texts = [sides(name, r)[side] for r in data]
        assert exact_duplicates(texts) == []
        near = near_duplicates(texts, threshold=0.5)  # exhaustive below 400 texts
        assert near == [], [(i + 1, j + 1, s) for i, j, s in near[:5]]
    # no personal data in text we wrote ourselves
    assert not [k for r in data for k in find_pii(" ".join(sides(name, r)))]


@pytest.mark.parametrize("name", NAMES)
def test_dataset_card_ships(name):
    card = Path(str(shipped_dataset(name))).with_suffix(".md").read_text(encoding="utf-8").lower()
    for needle in ("propósito", "formato", "tamaño", "licencia", "cc by 4.0", "límites", str(len(rows(name)))):
        assert needle in card, (name, needle)


def test_first_aid_rules():
    data = rows("primeros_auxilios")
    assert all(set(r) == {"instruction", "output"} for r in data)
    assert all(40 <= len(r["output"].split()) <= 150 for r in data)
    assert not any(MARKDOWN.search(r["output"]) for r in data)
    text = " ".join(r["output"].lower() for r in data)
    assert "20 minutos" in text and "112" in text  # cool burns ~20 min; emergency number
    assert sum("112" in r["output"] for r in data) >= len(data) // 2
    burns = [r["output"].lower() for r in data if "quemad" in r["instruction"].lower()]
    assert burns and not any(re.search(r"\b(aplica|pon|ponga|usa)\b[^.]*\b(hielo|mantequilla)", b) for b in burns)



@pytest.mark.parametrize("held_out, training", [
    ("primeros_auxilios_evaluacion", "primeros_auxilios"), ("epicrisis_evaluacion", "epicrisis"),
    ("tutor_algoritmos_evaluacion", "tutor_algoritmos"), ("ciencias_biologia_evaluacion", "ciencias_biologia"),
])
def test_evaluation_sets_are_held_out(held_out, training):
    """The held-out sets (`afinar eval --split afinar:NAME`, a recipe's `evaluation.set`) never leak from training:
    no prompt or reference answer repeats or near-repeats a training one (word 3-gram Jaccard, every pair), and every
    example carries its key points and dangers."""
    from afinar.data.formats import load_examples, shipped_dataset

    data = load_examples(shipped_dataset(held_out))
    assert len(data) >= 20 and all(e.claves and e.peligros for e in data)
    threshold = 0.5  # as for the shipped sets above; stricter than preflight's train/validation leak threshold
    assert threshold <= NEAR_THRESHOLD
    train = load_examples(shipped_dataset(training))
    for turn in (-2, -1):  # the prompt (with a structured case's JSON) and the reference answer
        texts = [e.messages[turn]["content"] for e in data]
        assert exact_duplicates(texts) == [] and near_duplicates(texts, threshold=0.5) == []
        seen = {normalise(e.messages[turn]["content"]) for e in train}
        assert not [t for t in texts if normalise(t) in seen]
        grams = [shingles(e.messages[turn]["content"]) for e in train]
        leaks = [(i + 1, j + 1, round(jaccard(shingles(t), g), 3)) for i, t in enumerate(texts)
                 for j, g in enumerate(grams) if jaccard(shingles(t), g) >= threshold]
        assert not leaks, leaks[:5]  # (evaluation line, training line, similarity)


def test_first_aid_evaluation_answers_follow_the_training_style():
    data = rows("primeros_auxilios_evaluacion")
    assert all(50 <= len(r["output"].split()) <= 110 for r in data)
    assert not any(MARKDOWN.search(r["output"]) for r in data)
    assert sum("112" in r["output"] for r in data) >= len(data) // 2

def test_every_epicrisis_passes_the_checker_users_get():
    data = rows("epicrisis")
    keys = {"sexo", "edad", "motivo_ingreso", "diagnosticos", "procedimientos", "medicamentos", "evolucion", "indicaciones_alta"}
    failures = {}
    for line, row in enumerate(data, start=1):
        assert set(row) == {"instruction", "input", "output"} and set(row["input"]) == keys, line
        assert row["input"]["sexo"] in ("F", "M") and isinstance(row["input"]["edad"], int)
        assert all(re.fullmatch(r"[A-Z]\d{2}(\.\d{1,2})?", d["cie10"]) for d in row["input"]["diagnosticos"]), line
        assert all(re.fullmatch(r"[A-V]\d{2}[A-Z]{2}\d{2}", m["atc"]) for m in row["input"]["medicamentos"]), line
        findings = check_epicrisis(row["input"], row["output"])
        if findings:
            failures[line] = [f.render() for f in findings]
    assert not failures, dict(list(failures.items())[:5])


def test_tutor_dialogues():
    data = rows("tutor_algoritmos")
    multi = 0
    for line, row in enumerate(data, start=1):
        messages = row["messages"]
        assert messages[0] == {"role": "system", "content": TUTOR_SYSTEM}, line
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * ((len(messages) - 1) // 2), line
        multi += len(messages) > 3
        for message in messages:
            if message["role"] == "assistant":
                for block in re.findall(r"```python\n(.*?)```", message["content"], re.DOTALL):
                    ast.parse(block)  # every Python example the tutor gives is valid Python
    assert multi >= len(data) // 4


def test_science_interleaves_long_and_short():
    data = rows("ciencias_biologia")
    words = [len(r["output"].split()) for r in data]
    long_, short = sum(w >= 100 for w in words), sum(w <= 60 for w in words)
    assert long_ >= 30 and short >= 30 and long_ + short == len(data)
    kinds = "".join("L" if w >= 100 else "S" for w in words)
    assert "LLL" not in kinds and "SSS" not in kinds  # interleaved, not blocks
    assert not any(MARKDOWN.search(r["output"]) for r in data)


def test_general_set_is_general():
    """The forgetting guard must not overlap the domains it guards."""
    text = " ".join(r["instruction"] + " " + r["output"] for r in rows("general_es")).lower()
    for word in ("112", "quemadura", "paciente", "algoritmo", "python", "fotosíntesis", "célula"):
        assert word not in text, word
    assert not any(MARKDOWN.search(r["output"]) for r in rows("general_es"))
