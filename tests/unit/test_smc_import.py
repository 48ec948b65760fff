import json

import pytest

from afinar.cli import main
from afinar.config import DataSection, DataSource
from afinar.data.smc import CLINICAL_CASE_SYSTEM, import_smc
from afinar.data.validate import gather
from afinar.errors import AfinarError
from tests.smc_data import COLUMNS, expected_counts, smc_row, write_smc_parquet


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_parquet_rows_become_chat_examples(tmp_path):
    src = write_smc_parquet(tmp_path / "smc.parquet", 120)
    out = tmp_path / "medico.jsonl"
    summary = import_smc(out, inputs=[str(src)], progress=False)
    want = expected_counts(120)
    assert summary.read == 120
    assert summary.by_type == {"question": want["question"], "clinic_case": want["clinic_case"]}
    assert summary.skipped == {"type": want["open_text"], "no_target": want["no_target"]}
    rows = read_jsonl(out)
    assert len(rows) == summary.written == want["question"] + want["clinic_case"]
    # row 0 (question, empty topic) and row 2 (open text) are skipped: row 1 is a case, row 3 a question
    case, question = rows[0]["messages"], rows[1]["messages"]
    assert [m["role"] for m in question] == ["system", "user", "assistant"]
    assert question[1]["content"] == smc_row(3)["raw_text"].strip()
    assert question[2]["content"] == smc_row(3)["topic"]
    assert case[0]["content"] == CLINICAL_CASE_SYSTEM
    assert smc_row(1)["raw_text"].strip() in case[1]["content"] and case[2]["content"] == smc_row(1)["topic"]
    # the output is valid afinar data
    prepared = gather(DataSection(sources=[DataSource(path=str(out))]))
    assert not prepared.errors


def test_filters_and_limit(tmp_path):
    src = write_smc_parquet(tmp_path / "smc.parquet", 240)
    out = tmp_path / "o.jsonl"
    summary = import_smc(out, inputs=[str(src)], specialities=["Cardiología"], types=["question"], progress=False)
    rows = [smc_row(i) for i in range(240)]
    want = [r for r in rows if r["raw_text_type"] == "question" and r["speciallity"] == "cardiología" and r["topic"]]
    assert summary.written == len(want) > 0
    assert all(m["messages"][0]["content"] != CLINICAL_CASE_SYSTEM for m in read_jsonl(out))
    limited = import_smc(tmp_path / "l.jsonl", inputs=[str(src)], max_examples=7, progress=False)
    assert limited.written == 7 and len(read_jsonl(tmp_path / "l.jsonl")) == 7
    assert limited.read < 240  # stopped reading


def test_jsonl_input_with_the_same_schema(tmp_path):
    src = tmp_path / "smc.jsonl"
    src.write_text("".join(json.dumps(smc_row(i), ensure_ascii=False) + "\n" for i in range(30)), encoding="utf-8")
    summary = import_smc(tmp_path / "o.jsonl", inputs=[str(src)], progress=False)
    assert summary.written == expected_counts(30)["question"] + expected_counts(30)["clinic_case"]


def test_200k_rows_stream_to_exact_counts(tmp_path):
    """Scale check of the streaming path (peak memory is measured in bench/import_smc_memory.py)."""
    n = 200_000
    src = write_smc_parquet(tmp_path / "big.parquet", n)
    summary = import_smc(tmp_path / "big.jsonl", inputs=[str(src)], progress=False)
    want = expected_counts(n)
    assert summary.read == n
    assert summary.written == want["question"] + want["clinic_case"]
    with open(tmp_path / "big.jsonl", encoding="utf-8") as handle:
        assert sum(1 for _ in handle) == summary.written


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda p: p.write_bytes(b"PAR1 esto no es un parquet"), "I001"),
        (lambda p: write_smc_parquet(p, 10, columns=tuple(c for c in COLUMNS if c != "topic")), "I002"),
        (lambda p: write_smc_parquet(p, 1), "I003"),  # row 0: empty topic -> zero usable rows
    ],
    ids=["unreadable", "wrong-columns", "no-usable-rows"],
)
def test_bad_input_gives_code_and_writes_nothing(tmp_path, make, code):
    src = tmp_path / "smc.parquet"
    make(src)
    out = tmp_path / "o.jsonl"
    with pytest.raises(AfinarError) as info:
        import_smc(out, inputs=[str(src)], progress=False)
    assert info.value.code == code
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.jsonl")]  # no temp file left


def test_existing_output_and_unknown_format(tmp_path):
    src = write_smc_parquet(tmp_path / "smc.parquet", 20)
    out = tmp_path / "o.jsonl"
    out.write_text("previo\n", encoding="utf-8")
    with pytest.raises(AfinarError) as info:
        import_smc(out, inputs=[str(src)], progress=False)
    assert info.value.code == "I005" and out.read_text(encoding="utf-8") == "previo\n"
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(AfinarError) as info:
        import_smc(tmp_path / "n.jsonl", inputs=[str(tmp_path / "x.csv")], progress=False)
    assert info.value.code == "I001"


def test_hub_path_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(AfinarError) as info:
        import_smc(tmp_path / "o.jsonl", progress=False)
    assert info.value.code == "I004" and "--entrada" in info.value.hint
    assert not (tmp_path / "o.jsonl").exists()


def test_cli(tmp_path, capsys):
    src = write_smc_parquet(tmp_path / "smc.parquet", 60)
    out = tmp_path / "o.jsonl"
    assert main(["import", "smc", "--entrada", str(src), "--salida", str(out), "--sin-progreso"]) == 0
    printed = capsys.readouterr().out
    assert "ejemplos escritos" in printed and "omitidas" in printed and "Respuesta o diagnóstico" not in printed
    assert main(["import", "smc", "--entrada", str(src), "--salida", str(out)]) == 2
    assert "I005" in capsys.readouterr().err


def test_unknown_type_is_i006(tmp_path):
    src = write_smc_parquet(tmp_path / "smc.parquet", 10)
    with pytest.raises(AfinarError) as info:
        import_smc(tmp_path / "o.jsonl", inputs=[str(src)], types=["open_text"], progress=False)
    assert info.value.code == "I006" and not (tmp_path / "o.jsonl").exists()
