import json

import pytest

from afinar.config import DataSection, DataSource
from afinar.data.formats import CODES, load_examples
from afinar.data.validate import gather, report
from tests.conftest import qa_rows, write_jsonl

SECRET = "Juana Pérez DNI 12345678Z"  # stands for patient data: must never be printed

GOOD_ALPACA = {"instruction": f"Resume el caso de {SECRET}", "output": f"Ingresa por dolor. {SECRET}"}

# (line as written in the file, expected code); the file is written in this order, so line = index + 1.
BROKEN = [
    ('{"instruction": "' + SECRET + '", "output": ', "D001"),
    ('["' + SECRET + '"]', "D002"),
    (json.dumps({"question": SECRET, "answer": SECRET}), "D003"),
    (json.dumps({SECRET: "x", "texto": 1}), "D003"),  # a key can hold patient text too
    (json.dumps({"instruction": SECRET}), "D004"),
    (json.dumps({"instruction": "   ", "output": SECRET}), "D005"),
    (json.dumps({"instruction": SECRET, "output": 42}), "D006"),
    (json.dumps({"messages": [{"role": "doctor", "content": SECRET}, {"role": "assistant", "content": SECRET}]}), "D007"),
    (json.dumps({"messages": [{"role": "assistant", "content": SECRET}, {"role": "user", "content": SECRET}]}), "D008"),
    (json.dumps({"messages": [{"role": "user", "content": SECRET}, {"role": "user", "content": SECRET}]}), "D008"),
    (json.dumps({"messages": [{"role": "user", "content": SECRET}]}), "D008"),
    (json.dumps({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": SECRET}]}), "D006"),
    (json.dumps({"messages": "hola"}), "D006"),
    (json.dumps({"instruction": SECRET, "input": 7, "output": SECRET}), "D006"),
    (json.dumps(GOOD_ALPACA, ensure_ascii=False), None),
    (json.dumps(GOOD_ALPACA, ensure_ascii=False), "D009"),
]


@pytest.fixture
def broken_file(tmp_path):
    path = tmp_path / "roto.jsonl"
    path.write_bytes(("\n".join(line for line, _ in BROKEN) + "\n").encode() + b'{"instruction": "\xff"}\n')
    return path


def test_every_problem_in_one_pass_with_file_line_code(broken_file, capsys):
    prepared = gather(DataSection(sources=[DataSource(path=str(broken_file))], val_fraction=0))
    found = {(p.line, p.code) for p in prepared.problems}
    for index, (_, code) in enumerate(BROKEN, start=1):
        if code:
            assert (index, code) in found, (index, code, sorted(found))
    assert (len(BROKEN) + 1, "D013") in found  # not UTF-8
    assert len(prepared.train) == 1  # the one good row, its duplicate dropped
    report(prepared)
    out = capsys.readouterr().out
    assert f"{broken_file}:1: D001: JSON inválido" in out
    assert SECRET not in out and "12345678Z" not in out and "doctor" not in out
    assert "claves: answer, question)" in out and "claves: texto y 1 más)" in out
    assert all(p.code in CODES for p in prepared.problems)


def test_duplicate_is_a_warning_not_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text((json.dumps(GOOD_ALPACA) + "\n") * 2, encoding="utf-8")
    prepared = gather(DataSection(sources=[DataSource(path=str(path))], val_fraction=0))
    assert not prepared.errors
    assert [(p.line, p.code, p.severity) for p in prepared.warnings] == [(2, "D009", "warning")]


def test_missing_and_empty_files(tmp_path):
    empty = tmp_path / "vacio.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    prepared = gather(DataSection(sources=[DataSource(path=str(tmp_path / "no.jsonl")), DataSource(path=str(empty))]))
    assert {(p.source.split("/")[-1], p.code) for p in prepared.errors} == {("no.jsonl", "D011"), ("vacio.jsonl", "D012")}


def test_formats_are_detected_and_normalised(tmp_path):
    rows = [
        {"instruction": "Explica", "input": "la fotosíntesis", "output": "Es..."},
        {"instruction": "Epicrisis:", "input": {"edad": 72, "dx": ["J18.9"]}, "output": "Ingresa por neumonía (J18.9)."},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
                      {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}]},
    ]
    path = tmp_path / "mix.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    alpaca, structured, chat = load_examples(path)
    assert alpaca.format == "alpaca" and alpaca.messages[0]["content"] == "Explica\nla fotosíntesis"
    assert structured.format == "structured"
    assert structured.messages[0]["content"] == 'Epicrisis:\n{"edad":72,"dx":["J18.9"]}'  # compact JSON
    assert chat.format == "chat" and [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_format_override_is_enforced(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"instruction": "E", "input": {"a": 1}, "output": "O"}) + "\n" + json.dumps({"instruction": "E", "output": "O"}) + "\n")
    problems = []
    load_examples(path, "alpaca", problems)
    assert [(p.line, p.code) for p in problems] == [(1, "D006")]
    problems = []
    load_examples(path, "structured", problems)
    assert [(p.line, p.code) for p in problems] == [(2, "D004")]
    problems = []
    load_examples(path, "chat", problems)
    assert [p.code for p in problems] == ["D004", "D004"]


def test_nothing_fits_max_length_is_d015(tmp_path, tokenizer):
    from afinar.data.validate import encode, gather

    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(6))
    data = DataSection(sources=[DataSource(path=str(path))], max_length=16, val_fraction=0)
    prepared = encode(gather(data), tokenizer, data)
    assert [p.code for p in prepared.errors] == ["D015"]
    assert prepared.errors[0].source == str(path) and "max_length=16" in prepared.errors[0].message


def test_spanish_field_names_pregunta_respuesta_contexto(tmp_path):
    """What people write by hand: "pregunta"/"respuesta" (and "contexto") read as instruction/output (and input)."""
    path = tmp_path / "es.jsonl"
    rows = [{"pregunta": "¿Qué hago ante una quemadura?", "respuesta": "Enfría con agua 20 minutos."},
            {"pregunta": "Resume", "contexto": "Caso de prueba", "respuesta": "Resumen."},
            {"pregunta": "Sin respuesta"},
            {"pregunta": "Contexto raro", "contexto": {"a": 1}, "respuesta": "x"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    problems = []
    examples = load_examples(path, "auto", problems)
    assert [e.format for e in examples] == ["pregunta", "pregunta"]
    assert examples[0].messages == [{"role": "user", "content": "¿Qué hago ante una quemadura?"},
                                    {"role": "assistant", "content": "Enfría con agua 20 minutos."}]
    assert examples[1].messages[0]["content"] == "Resume\nCaso de prueba"
    assert {(p.line, p.code) for p in problems} == {(3, "D004"), (4, "D006")}
    assert "'respuesta'" in next(p.message for p in problems if p.line == 3)
