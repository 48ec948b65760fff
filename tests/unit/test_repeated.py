"""Sentences that many training answers repeat (issue 26): found, counted once per answer, never with personal data,
and reported by `afinar validate` (D016) and the pre-flight report (`repeated_sentences`)."""
import json

import pytest

from afinar.cli import main
from afinar.data import repeated as rep
from afinar.data.formats import CODES, Example, load_examples, shipped_dataset
from afinar.data.repeated import repeated_sentences
from afinar.data.validate import last_answers
from tests.conftest import write_jsonl

TOPICS = ["la quemadura", "el corte", "la picadura", "el esguince", "la fiebre", "el golpe", "la hemorragia",
          "el mareo", "la torcedura", "el atragantamiento", "la insolación", "la herida"]
BOILER = "Vigila su respiración y su nivel de consciencia hasta que llegue la ayuda."


def varied(i: int) -> str:
    """An answer that shares no 4-word sentence or 6-word run with the others."""
    return f"Para {TOPICS[i % len(TOPICS)]} número {i} conviene actuar con calma. Revisa {i} veces la zona afectada {i}."


def test_a_sentence_in_3_of_10_answers_is_reported_with_its_share():
    answers = [varied(i) for i in range(10)]
    for i in (1, 4, 7):
        answers[i] += " " + BOILER
    assert repeated_sentences(answers, min_count=3) == [
        {"sentence": BOILER.rstrip("."), "count": 3, "share": 0.3}]
    assert repeated_sentences(answers) == []  # 3 < min_count=5


def test_under_the_thresholds_or_too_short_nothing_is_reported():
    answers = [varied(i) for i in range(30)]
    for i in range(5):
        answers[i] += " " + BOILER  # 5 of 30 = 17 % < 20 %
    assert repeated_sentences(answers) == []
    assert repeated_sentences(answers, min_share=0.1)[0]["count"] == 5
    short = [varied(i) + " Llama al 112." for i in range(30)]  # 3 words: too short to be a finding
    assert repeated_sentences(short) == []
    assert repeated_sentences([]) == [] and repeated_sentences(["Hola."] * 3) == []


def test_spelling_case_and_accents_are_one_sentence_counted_once_per_answer():
    answers = [varied(i) for i in range(10)]
    for i in range(6):
        answers[i] += " " + BOILER
    answers[6] += " VIGILA SU RESPIRACION Y SU NIVEL DE CONSCIENCIA HASTA QUE LLEGUE LA AYUDA!"
    answers[0] += "\n" + BOILER  # twice in one answer: still one answer
    [found] = repeated_sentences(answers)
    assert found == {"sentence": BOILER.rstrip("."), "count": 7, "share": 0.7}  # the most common spelling


def test_sentences_that_start_the_same_are_grouped_by_their_common_start():
    endings = ["si no respira", "si se desmaya", "cuanto antes", "aunque parezca estar bien", "si sangra mucho",
               "si tiene convulsiones"]
    answers = [f"{varied(i)} Llama al 112 (o al número de emergencias de tu país) {end}." for i, end in enumerate(endings)]
    answers += [varied(i) for i in range(6, 10)]
    assert repeated_sentences(answers) == [
        {"sentence": "Llama al 112 (o al número de emergencias de tu país)…", "count": 6, "share": 0.6}]


def test_a_run_inside_longer_sentences_is_found_and_marked_as_a_piece():
    starts = ["Si no respira, llama", "Si convulsiona, pide que alguien llame", "Ante la duda llama", "Sin esperar, llama",
              "Si pierde el conocimiento llama", "Desde el móvil llama"]
    answers = [f"{varied(i)} {s} al 112 (o al número de emergencias de tu país) y espera." for i, s in enumerate(starts)]
    answers += [varied(i) for i in range(6, 10)]
    [found] = repeated_sentences(answers)
    assert found["sentence"] == "…al 112 (o al número de emergencias de tu país) y espera" and found["count"] == 6


def test_a_sentence_with_personal_data_is_never_shown():
    answers = [varied(i) for i in range(10)]
    for i in range(6):
        answers[i] += " Avisa al Sr. García López cuando termines de curar la herida del brazo."  # name after "Sr."
        answers[i] += " La paciente Ana Pérez Ruiz toma paracetamol cada ocho horas desde ayer."
        answers[i] += " Su DNI 12345678Z figura en la pulsera de identificación del hospital."
        answers[i] += " " + BOILER
    found = repeated_sentences(answers, top=10)
    assert [f["sentence"] for f in found] == [BOILER.rstrip(".")]  # the rest is repeated but may be personal data
    text = json.dumps(found, ensure_ascii=False)
    assert "García" not in text and "Ana" not in text and "12345678Z" not in text


def test_candidates_from_a_sample_are_counted_on_every_answer(monkeypatch):
    monkeypatch.setattr(rep, "SAMPLE", 40)
    answers = [varied(i) + (" " + BOILER if i % 3 == 0 else "") for i in range(300)]
    assert repeated_sentences(answers) == [{"sentence": BOILER.rstrip("."), "count": 100, "share": 0.3333}]


def test_the_answer_is_the_last_assistant_turn():
    messages = [{"role": "user", "content": "¿Qué hago?"}, {"role": "assistant", "content": "primera"},
                {"role": "user", "content": "¿Y luego?"}, {"role": "assistant", "content": "última"}]
    assert last_answers([Example("x.jsonl", 1, "chat", messages)]) == ["última"]


def test_the_shipped_first_aid_set_repeats_the_112_sentence():
    examples = load_examples(shipped_dataset("primeros_auxilios"), "auto", [])
    found = repeated_sentences(last_answers(examples))
    top = found[0]
    assert "al 112 (o al número de emergencias de tu país)" in top["sentence"]
    assert top["share"] >= 0.5 and top["count"] == 193 and len(examples) == 320
    # one piece of boilerplate is one finding, even with a low threshold ("…y llama al 112 (o al…" is the same one)
    assert sum("112" in f["sentence"] for f in repeated_sentences(last_answers(examples), min_share=0.05)) == 1


def test_validate_reports_d016_as_a_warning_without_the_answers(tmp_path, capsys):
    rows = [{"instruction": f"Pregunta {i}", "output": varied(i) + (" " + BOILER if i < 6 else "")} for i in range(10)]
    path = write_jsonl(tmp_path / "datos.jsonl", rows)
    assert main(["validate", str(path)]) == 0  # a warning, not an error
    printed = capsys.readouterr().out
    assert "D016" in CODES
    line = next(x for x in printed.splitlines() if "D016" in x)
    assert "(aviso)" in line and "contienen «Vigila su respiración y su nivel de consciencia hasta que llegue la ayuda»" in line
    assert "de las respuestas de entrenamiento" in line and "el modelo aprenderá a repetirla" in line
    assert "conviene actuar con calma" not in printed  # no answer text
    assert "1 avisos" in printed


def test_preflight_report_of_the_demo_recipe_lists_the_112_sentence(tmp_path, capsys, monkeypatch):
    from afinar.data import validate
    from afinar.data.preflight import inspect

    monkeypatch.setattr(validate, "try_tokenizer", lambda base, template="auto": (None, "sin tokenizador en la prueba"))
    assert inspect("recipes/enfermeria_demo.yaml", output=tmp_path / "informe", progress=False) == 0
    out = tmp_path / "informe"
    report = json.loads((out / "informe_datos.json").read_text(encoding="utf-8"))
    [top] = report["repeated_sentences"]
    assert set(top) == {"sentence", "count", "share"} and top["share"] >= 0.5
    assert top["sentence"] == "…al 112 (o al número de emergencias de tu país)"
    assert top["count"] == pytest.approx(top["share"] * report["train_examples"], abs=0.01)
    assert report["warnings"]["by_code"]["D016"] == 1
    printed = capsys.readouterr().out
    assert "frases repetidas en muchas respuestas" in printed and "«…al 112 (o al número de emergencias" in printed
    html = (out / "informe_datos.html").read_text(encoding="utf-8")
    assert "Frases repetidas en muchas respuestas" in html and "al 112 (o al número de emergencias de tu país)" in html
