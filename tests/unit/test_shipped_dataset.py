import json
import re
from pathlib import Path

from afinar.config import DataSection, DataSource
from afinar.data.formats import shipped_dataset
from afinar.data.validate import gather


def normalise(text):
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def trigrams(text):
    words = normalise(text).split()
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def test_first_aid_dataset_is_valid_and_distinct():
    path = shipped_dataset("primeros_auxilios")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 120
    assert all(set(r) == {"instruction", "output"} for r in rows)
    assert len({normalise(r["instruction"]) for r in rows}) == len(rows)
    assert len({normalise(r["output"]) for r in rows}) == len(rows)
    grams = [trigrams(r["instruction"]) for r in rows]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            union = grams[i] | grams[j]
            assert not union or len(grams[i] & grams[j]) / len(union) <= 0.5, (i + 1, j + 1)
    assert all(40 <= len(r["output"].split()) <= 150 for r in rows)
    assert not any(re.search(r"\*\*|^#|^\s*[-*] ", r["output"], re.M) for r in rows)  # no markdown
    prepared = gather(DataSection(sources=[DataSource(path=str(path))]))
    assert not prepared.problems


def test_first_aid_guidance_spot_checks():
    """A few facts the set must not get wrong (current first-aid guidance)."""
    rows = [json.loads(x) for x in shipped_dataset("primeros_auxilios").read_text(encoding="utf-8").splitlines()]
    text = " ".join(r["output"].lower() for r in rows)
    assert "20 minutos" in text or "veinte minutos" in text  # cool burns ~20 min
    assert "112" in text
    burns = [r["output"].lower() for r in rows if "quemad" in r["instruction"].lower()]
    assert burns and not any(re.search(r"\b(aplica|pon|ponga|usa)\b[^.]*\b(hielo|mantequilla)", b) for b in burns)


def test_dataset_card_ships():
    card = Path(str(shipped_dataset("primeros_auxilios"))).with_suffix(".md").read_text(encoding="utf-8")
    for needle in ("Licencia", "CC BY 4.0", "No sustituye la atención médica", "112"):
        assert needle.lower() in card.lower(), needle
