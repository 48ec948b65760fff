"""`afinar inspect`: every section of the pre-flight report, on a small file with planted problems."""
import json

from afinar.cli import main
from afinar.data.preflight import inspect
from tests.conftest import qa_rows, write_jsonl

SENTINEL = "SECRETO-FILA-7391"
LONG_Q = ("Mi abuela de ochenta años se ha caído en la cocina, se queja de dolor en la cadera y no puede "
          "levantarse del suelo, ¿qué debo hacer mientras llega la ambulancia?")


def planted_rows():
    rows = qa_rows(12)
    rows.append(dict(rows[0]))  # line 13: exact duplicate (D009)
    rows.append({"instruction": LONG_Q, "output": "No la muevas, abrígala y llama al 112."})  # 14
    rows.append({"instruction": LONG_Q.replace("cocina", "terraza"), "output": "Abrígala, no la levantes y llama al 112."})  # 15
    rows.append({"instruction": "¿Qué hago con una picadura de abeja?",
                 "output": "Remove the stinger by scraping it out and then wash the area with soap and water."})  # 16
    rows.append({"instruction": "¿Puedo enviar mis datos?",
                 "output": f"{SENTINEL} el DNI 12345678Z y el correo ana@ejemplo.es no deben ir en los datos."})  # 17
    rows.append({"instruction": "¿Respira?", "output": "Sí."})  # 18: very short answer
    rows.append({"instruction": "Explica todo.", "output": " ".join(["quemadura"] * 400)})  # 19: too long
    rows.append('{"instruction": "roto", ')  # 20: D001
    return rows


def run(tmp_path, capsys, *extra):
    data = write_jsonl(tmp_path / "datos.jsonl", planted_rows())
    out = tmp_path / "informe"
    code = inspect(data, base=extra[0], max_length=400, output=out, show_examples="--mostrar" in extra, progress=False)
    printed = capsys.readouterr().out
    return code, printed, json.loads((out / "informe_datos.json").read_text(encoding="utf-8")), out


def test_report_sections(tmp_path, capsys, tiny_base):
    code, printed, report, out = run(tmp_path, capsys, str(tiny_base))
    assert code == 1  # schema error
    assert report["errors"]["by_code"] == {"D001": 1}
    assert any(x.endswith("datos.jsonl:20: D001: JSON inválido: texto sin cerrar (columna 17)") or ":20: D001" in x
               for x in report["errors"]["list"])
    assert report["warnings"]["by_code"]["D009"] == 1 and report["duplicates"]["exact"] == 1
    assert report["train_examples"] + report["val_examples"] == 18
    tok = report["tokens"]
    assert tok["available"] and tok["too_long"]["count"] == 1 and tok["too_long"]["places"][0].endswith(":19")
    assert tok["answer"]["max"] > 200 and tok["tokens_per_word"] > 1
    assert tok["spanish_vs_english"] > 0
    assert report["short_answers"]["count"] == 1 and report["short_answers"]["places"][0].endswith(":18")
    near = report["duplicates"]["near_prompts"]
    assert near["count"] == 1 and {near["pairs"][0]["a"][-3:], near["pairs"][0]["b"][-3:]} == {":14", ":15"}
    assert report["language"]["mostly_non_spanish_examples"]["places"][0].endswith(":16")
    assert 0 < report["language"]["non_spanish_share"] < 0.5
    pii = report["personal_data"]
    assert pii["by_kind"] == {"DNI": 1, "correo electrónico": 1}
    assert all(p["place"].endswith(":17") and p["field"].startswith("assistant") for p in pii["places"])
    assert len(report["samples"]) == 3 and all(s["end_of_turn_trained"] for s in report["samples"])
    assert all("segments" not in s for s in report["samples"])
    # no row text anywhere unless asked
    html = (out / "informe_datos.html").read_text(encoding="utf-8")
    for text in (printed, html, json.dumps(report, ensure_ascii=False)):
        assert SENTINEL not in text and "12345678Z" not in text and "ana@ejemplo.es" not in text
    assert (out / "longitudes.png").read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64," in html
    assert "DNI" in printed and "datos.jsonl:17" in printed


def test_show_examples_marks_trained_tokens(tmp_path, capsys, tiny_base, tokenizer):
    _, printed, report, out = run(tmp_path, capsys, str(tiny_base), "--mostrar")
    for sample in report["samples"]:
        trained = [text for text, flag in sample["segments"] if flag]
        assert len(trained) == 1 and trained[0].endswith(tokenizer.eos_token)  # answer + <|im_end|>, nothing else
        assert "<|im_start|>assistant" in "".join(t for t, f in sample["segments"] if not f)
    assert "⟦" in printed and "<mark>" in (out / "informe_datos.html").read_text(encoding="utf-8")


def test_without_tokenizer_the_rest_still_works(tmp_path, capsys):
    code, _, report, _ = run(tmp_path, capsys, str(tmp_path / "no-existe"))
    assert report["tokens"] == {"available": False, "reason": report["tokens"]["reason"]}
    assert "M002" in report["tokens"]["reason"]
    assert report["personal_data"]["count"] == 2 and report["histogram"] is None and code == 1


def test_recipe_report_goes_to_the_run_dir_and_training_accepts_it(tmp_path, capsys, tiny_recipe, monkeypatch):
    import yaml

    from afinar.train_stages import check_run_dir as _check_run_dir, prepare_run_dir as _prepare_run_dir

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe), encoding="utf-8")
    assert main(["inspect", str(path), "--sin-progreso"]) == 0
    run_dir = tmp_path / "run"
    assert (run_dir / "informe_datos" / "informe_datos.html").is_file()
    _check_run_dir(run_dir, resume=False, overwrite=False)  # a report alone does not block training
    (run_dir / "adapter").mkdir()
    _check_run_dir(run_dir, resume=False, overwrite=True)
    _prepare_run_dir(run_dir, resume=False)  # overwrite keeps the report
    assert (run_dir / "informe_datos").is_dir() and not (run_dir / "adapter").exists()


def test_template_that_cannot_mark_tokens_is_reported_not_a_crash(tmp_path, capsys, tiny_base, monkeypatch):
    from afinar.data import templates
    from afinar.errors import AfinarError

    def refuse(*args, **kwargs):
        raise AfinarError("T001", "la plantilla de chat del tokenizador no es incremental")

    monkeypatch.setattr(templates, "encode", refuse)
    code, _, report, _ = run(tmp_path, capsys, str(tiny_base))
    assert report["tokens"]["available"] is False and report["tokens"]["reason"].startswith("T001")
    assert report["samples"] == [] and report["duplicates"]["exact"] == 1 and code == 1


def test_lines_with_personal_data_are_counted_once_and_never_shown_as_examples(tmp_path, tiny_base):
    """A line with a DNI and a name is 1 line (2 findings); asked to show examples, a flagged line is never one."""
    from afinar.config import DataSection, DataSource
    from afinar.data.preflight import build_report
    from afinar.data.validate import try_tokenizer

    rows = [{"instruction": f"La paciente Ana López, DNI 12345678Z, caso {i}: ¿qué hago?", "output": "Enfría con agua."}
            for i in range(9)] + qa_rows(3)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    tokenizer, _ = try_tokenizer(str(tiny_base), "auto")
    report = build_report(DataSection(sources=[DataSource(path=str(data))], val_fraction=0), tokenizer,
                          show_examples=True, progress=False)
    pii = report["personal_data"]
    assert pii["count"] == 18 and pii["lines"] == 9 and pii["by_kind"] == {"DNI": 9, "nombre tras «paciente»": 9}
    assert sorted(int(s["place"].rsplit(":", 1)[1]) for s in report["samples"]) == [10, 11, 12]
    assert "12345678Z" not in json.dumps(report["samples"], ensure_ascii=False)
