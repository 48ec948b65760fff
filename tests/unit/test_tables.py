"""Spreadsheets and tables as training data (afinar.data.tables) and `afinar convertir`: every file is written by the
test itself (pandas/openpyxl/odfpy writers, raw bytes for encodings and broken CSVs)."""
import json

import pytest

from afinar.cli import main
from afinar.config import DataSection, DataSource, recipe_from_dict
from afinar.data import tables
from afinar.data.formats import CODES, Problem, load_examples, shipped_dataset
from afinar.data.tables import convert, detect_columns, example_row, read_table, table_examples, write_table
from afinar.data.validate import gather
from afinar.errors import AfinarError

SECRET = "Juana Pérez DNI 12345678Z"  # stands for patient data: never in an error


def csv_bytes(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def messages(examples):
    return [e.messages for e in examples]


def write_xlsx(path, sheets: dict, merge: dict | None = None):
    """sheets: name → rows (lists of values, None for an empty cell)."""
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
        for cells in (merge or {}).get(name, []):
            sheet.merge_cells(cells)
    book.save(path)
    return path


# --- what real Spanish spreadsheets contain -------------------------------------------------------------------------


def test_semicolon_decimal_comma_and_na_stay_text(tmp_path):
    path = csv_bytes(tmp_path / "dosis.csv", "Pregunta;Respuesta;Dosis\n¿Cuánto jarabe?;Dale 3,5 ml;NA\n"
                     "¿Y si vomita?;Repite la dosis;\n")
    table = read_table(path)
    assert table.columns == ["Pregunta", "Respuesta", "Dosis"]
    assert table.rows == [(2, {"Pregunta": "¿Cuánto jarabe?", "Respuesta": "Dale 3,5 ml", "Dosis": "NA"}),
                          (3, {"Pregunta": "¿Y si vomita?", "Respuesta": "Repite la dosis", "Dosis": ""})]
    examples = table_examples(path, columnas={"contexto": "Dosis"})
    assert examples[0].messages == [{"role": "user", "content": "¿Cuánto jarabe?\nNA"},
                                    {"role": "assistant", "content": "Dale 3,5 ml"}]
    assert examples[1].messages[0]["content"] == "¿Y si vomita?"  # an empty context adds nothing
    assert [e.where for e in examples] == [f"{path}:2", f"{path}:3"]


@pytest.mark.parametrize("text", [
    "Registro, enfermería, 2026\nPregunta;Respuesta;Dosis\n¿A?;Dale 3,5 ml, o 4,5 ml, o 5,5;2,5\n¿B?;Sí, 1,5;0,5\n",
    "question,answer,dose\n¿A?,\"Dale 3,5 ml, o 4,5 ml, o 5,5\",\"2,5\"\n¿B?,\"Sí, 1,5\",\"0,5\"\n",
    "Pregunta\tRespuesta\tDosis\n¿A?\tDale 3,5 ml, o 4,5 ml, o 5,5\t2,5\n¿B?\tSí, 1,5\t0,5\n",
])
def test_the_delimiter_is_found_despite_commas_in_titles_and_numbers(tmp_path, text):
    table = read_table(csv_bytes(tmp_path / "d.csv", text))
    assert [list(cells.values()) for _, cells in table.rows] == [["¿A?", "Dale 3,5 ml, o 4,5 ml, o 5,5", "2,5"],
                                                                 ["¿B?", "Sí, 1,5", "0,5"]]


@pytest.mark.parametrize("encoding", ["cp1252", "utf-8-sig", "latin-1"])
def test_excel_encodings(tmp_path, encoding):
    text = "Pregunta;Respuesta\r\n¿Qué hago si sangra la nariz?;Inclina la cabeza hacia delante: ñ, ü, €\r\n"
    if encoding == "latin-1":
        text = text.replace("€", "¤") + "\x81;x\r\n"  # 0x81 is not cp1252: only latin-1 decodes this file
    path = csv_bytes(tmp_path / f"{encoding}.csv", text, encoding)
    table = read_table(path)
    assert table.columns == ["Pregunta", "Respuesta"]  # no BOM glued to the first header
    first = table_examples(path)[0].messages
    assert first[0]["content"] == "¿Qué hago si sangra la nariz?"
    assert first[1]["content"].endswith("ñ, ü, " + ("¤" if encoding == "latin-1" else "€"))


def test_line_breaks_inside_cells_and_row_numbers(tmp_path):
    path = csv_bytes(tmp_path / "saltos.csv", 'Pregunta;Respuesta\n"¿Qué hago?";"Primero esto.\nDespués aquello."\n'
                     '"¿Y luego?";""\n')
    problems = []
    examples = table_examples(path, problems=problems)
    assert examples[0].messages[1]["content"] == "Primero esto.\nDespués aquello."
    # The cell with a line break is one row: the next one is row 3 as the spreadsheet shows it, not line 4.
    assert [(p.line, p.code) for p in problems] == [(3, "D005")]
    assert problems[0].render() == f"{path}, fila 3: D005: la columna «Respuesta» (B) está vacía"


def test_empty_trailing_rows_and_columns_are_ignored(tmp_path):
    path = csv_bytes(tmp_path / "bordes.csv", "Pregunta;Respuesta;;\n¿Uno?;Sí;;\n;;;\n¿Dos?;No;;\n;;;\n;;;\n")
    table = read_table(path)
    assert table.columns == ["Pregunta", "Respuesta"]
    assert [r for r, _ in table.rows] == [2, 4]
    assert len(table_examples(path)) == 2


def test_title_row_merged_across_the_header_and_problems_with_sheet_row_column(tmp_path):
    path = write_xlsx(tmp_path / "datos.xlsx", {"Casos": [
        ["Registro de consultas de enfermería 2026", None, None],
        [None, None, None],
        ["Nº", "Consulta", "Respuesta"],
        [1, "¿Qué hago ante una quemadura?", "Agua fresca 20 minutos."],
        [2, SECRET, None],
        [3, None, None],  # a pre-numbered row nobody filled: skipped, not an error
    ]}, merge={"Casos": ["A1:C1"]})
    table = read_table(path)
    assert (table.sheet, table.header_row, table.columns) == ("Casos", 3, ["Nº", "Consulta", "Respuesta"])
    problems = []
    examples = table_examples(path, problems=problems)
    assert [(e.line, e.messages[0]["content"]) for e in examples] == [(4, "¿Qué hago ante una quemadura?")]
    assert [(p.source, p.sheet, p.line, p.code) for p in problems] == [(str(path), "Casos", 5, "D005")]
    rendered = problems[0].render()
    assert rendered == f"{path}, hoja «Casos», fila 5: D005: la columna «Respuesta» (C) está vacía"
    assert SECRET not in rendered and "12345678Z" not in rendered


def test_several_sheets_by_name_or_number_and_an_unknown_one(tmp_path):
    path = write_xlsx(tmp_path / "libro.xlsx", {
        "Portada": [["Pregunta", "Respuesta"], ["¿Primera hoja?", "Sí"]],
        "Casos": [["Pregunta", "Respuesta"], ["¿Segunda?", "Sí"], ["¿Otra?", "No"]],
    })
    assert read_table(path).sheets == ["Portada", "Casos"]
    assert len(table_examples(path)) == 1  # the first sheet by default
    assert len(table_examples(path, hoja="Casos")) == 2
    assert len(table_examples(path, hoja=2)) == 2
    assert len(table_examples(path, hoja="2")) == 2  # --hoja 2 from the command line
    with pytest.raises(AfinarError) as err:
        read_table(path, "Resumen")
    assert err.value.code == "D024" and "«Portada»" in err.value.message and "«Casos»" in err.value.message


def test_xlsx_numbers_read_as_a_person_sees_them(tmp_path):
    path = write_xlsx(tmp_path / "n.xlsx", {"Hoja1": [["Pregunta", "Respuesta", "Contexto"],
                                                      ["¿Dosis?", 5.0, 3.5], ["¿Edad?", 72, 1e20]]})
    rows = [cells for _, cells in read_table(path).rows]
    assert [(r["Respuesta"], r["Contexto"]) for r in rows] == [("5", "3.5"), ("72", "100000000000000000000")]
    assert tables._cell_text(3.0) == "3" and tables._cell_text(float("nan")) == ""


def test_ods_and_parquet(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"Pregunta": ["¿Uno?", "¿Dos?"], "Respuesta": ["Sí", "No"]})
    with pd.ExcelWriter(tmp_path / "d.ods", engine="odf") as writer:
        pd.DataFrame({"x": ["portada"]}).to_excel(writer, sheet_name="Portada", index=False)
        frame.to_excel(writer, sheet_name="Datos", index=False)
    examples = table_examples(tmp_path / "d.ods", hoja="Datos")
    assert [(e.line, e.messages[1]["content"]) for e in examples] == [(2, "Sí"), (3, "No")]
    frame.to_parquet(tmp_path / "d.parquet")
    assert messages(table_examples(tmp_path / "d.parquet")) == messages(examples)


def test_json_array_and_field_named_columns_parse_like_jsonl(tmp_path):
    lines = [{"instruction": "Explica", "input": "la fiebre", "output": "Es…"},
             {"pregunta": "¿Qué es?", "respuesta": "Esto.", "contexto": "Caso 1", "claves": [["esto", "eso"]]},
             {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                           {"role": "assistant", "content": "A"}]}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    array = tmp_path / "d.json"
    array.write_text(json.dumps(lines, ensure_ascii=False), encoding="utf-8")
    expected = load_examples(jsonl)
    got = load_examples(array)
    assert [(e.line, e.format, e.messages, e.claves) for e in got] == [
        (e.line, e.format, e.messages, e.claves) for e in expected]
    # A table whose columns are the field names gives the messages of the JSONL lines they come from.
    alpaca = csv_bytes(tmp_path / "alpaca.csv", "instruction,input,output\nExplica,la fiebre,Es…\n")
    assert messages(load_examples(alpaca)) == [expected[0].messages]
    pregunta = csv_bytes(tmp_path / "p.csv", "pregunta;respuesta;contexto;claves\n¿Qué es?;Esto.;Caso 1;esto|eso\n")
    (got,) = load_examples(pregunta)
    assert (got.messages, got.claves) == (expected[1].messages, expected[1].claves)


def test_a_json_that_is_not_an_array(tmp_path):
    path = tmp_path / "o.json"
    path.write_text('{"pregunta": "x", "respuesta": "y"}', encoding="utf-8")
    problems = []
    assert load_examples(path, problems=problems) == []
    assert [p.code for p in problems] == ["D033"]


# --- columns → fields -----------------------------------------------------------------------------------------------


def test_headers_are_recognized_by_synonym_case_accents_and_punctuation():
    assert detect_columns(["Nº", "PREGÚNTA:", "Respuestas", "Datos del caso", "System prompt", "Puntos clave",
                           "Peligros"]) == {
        "pregunta": "PREGÚNTA:", "respuesta": "Respuestas", "contexto": "Datos del caso",
        "sistema": "System prompt", "claves": "Puntos clave", "peligros": "Peligros"}
    assert detect_columns(["question", "answer"]) == {"pregunta": "question", "respuesta": "answer"}


def test_missing_columns_show_the_recipe_line_to_add(tmp_path):
    with pytest.raises(AfinarError) as err:
        detect_columns(["Nº", "Consulta del paciente", "Respuesta de la enfermera"], tmp_path / "x.csv")
    assert err.value.code == "D026"
    assert "«Nº», «Consulta del paciente», «Respuesta de la enfermera»" in err.value.message
    assert 'columnas: {pregunta: "Consulta del paciente", respuesta: "Respuesta de la enfermera"}' in err.value.hint


def test_ambiguous_columns(tmp_path):
    path = csv_bytes(tmp_path / "doble.csv", f"Pregunta;Consulta;Respuesta\n{SECRET};b;c\n")
    problems = []
    assert table_examples(path, problems=problems) == []
    (problem,) = problems
    assert problem.code == "D027" and "«Pregunta», «Consulta»" in problem.message
    assert 'columnas: {pregunta: "Pregunta", respuesta: "Respuesta"}' in problem.message
    assert SECRET not in problem.render()
    # The recipe's mapping settles it.
    assert len(table_examples(path, columnas={"pregunta": "Consulta"})) == 1


def test_a_mapping_that_names_a_missing_column(tmp_path):
    path = csv_bytes(tmp_path / "m.csv", "Consulta del paciente;Respuesta\na;b\n")
    with pytest.raises(AfinarError) as err:
        tables._mapping(read_table(path), {"pregunta": "Consulta paciente"})
    assert err.value.code == "D028"
    assert "«Consulta del paciente», «Respuesta»" in err.value.message
    assert "«Consulta del paciente»" in err.value.hint  # the closest one
    assert table_examples(path, columnas={"pregunta": "consulta del paciente"})  # case and accents don't matter


def test_a_field_set_to_no_column_is_not_detected_and_a_column_is_one_field(tmp_path):
    """`columnas: {contexto: null}` (the studio's «— ninguna —»): a «Contexto» header is then not used; one column
    for two fields is refused."""
    path = csv_bytes(tmp_path / "c.csv", "Pregunta;Respuesta;Contexto\n¿Qué hago?;Enfría la zona;notas internas\n")
    assert table_examples(path)[0].messages[0]["content"] == "¿Qué hago?\nnotas internas"
    assert table_examples(path, columnas={"contexto": None})[0].messages[0]["content"] == "¿Qué hago?"
    problems = []
    assert table_examples(path, columnas={"pregunta": "Pregunta", "respuesta": "Pregunta"}, problems=problems) == []
    assert [p.code for p in problems] == ["D028"] and "«Pregunta»" in problems[0].message
    source = DataSource(path=str(path), columnas={"contexto": None})  # valid in a recipe too
    assert gather(DataSection(sources=[source])).problems == []


def test_system_context_claves_and_peligros_cells(tmp_path):
    path = write_xlsx(tmp_path / "e.xlsx", {"Hoja1": [
        ["Sistema", "Pregunta", "Contexto", "Respuesta", "Claves", "Peligros"],
        ["Eres enfermera.", " ¿Qué hago? ", "Niño de 3 años", "Agua fresca. ", "agua fresca|agua fría; 20 minutos",
         "hielo\nmantequilla"],
        [None, "¿Y ahora?", None, "Nada.", "nada|", None],
    ]})
    problems = []
    first, *_ = table_examples(path, problems=problems)
    assert first.messages == [{"role": "system", "content": "Eres enfermera."},
                              {"role": "user", "content": "¿Qué hago?\nNiño de 3 años"},
                              {"role": "assistant", "content": "Agua fresca."}]
    assert first.claves == [["agua fresca", "agua fría"], ["20 minutos"]]
    assert first.peligros == ["hielo", "mantequilla"]
    assert [(p.line, p.code) for p in problems] == [(3, "K002")]  # "nada|": an empty alternative
    assert "columna «Claves» (E)" in problems[0].render() and "hoja «Hoja1», fila 3" in problems[0].render()


# --- whole-file problems --------------------------------------------------------------------------------------------


def test_broken_files_each_with_its_code(tmp_path):
    not_zip = tmp_path / "roto.xlsx"
    not_zip.write_bytes(b"esto no es un zip " + SECRET.encode())
    locked = tmp_path / "clave.xlsx"
    locked.write_bytes(tables.OLE_MAGIC + b"\0" * 512)
    quote = csv_bytes(tmp_path / "comillas.csv", f'Pregunta;Respuesta\nuno;dos\n"{SECRET};tres\ncuatro;cinco\n')
    one_column = csv_bytes(tmp_path / "una.csv", f"Pregunta\n{SECRET}\n")
    formulas = write_xlsx(tmp_path / "formulas.xlsx", {"Hoja1": [["Pregunta", "Respuesta"],
                                                                 ["¿Cuánto?", '=CONCAT("a", "b")'],
                                                                 ["¿Total?", "=1+1"]]})
    expected = {not_zip: ("D020", None), locked: ("D021", None), quote: ("D022", 3), one_column: ("D025", None),
                formulas: ("D023", None)}
    for path, (code, row) in expected.items():
        problems = []
        assert load_examples(path, problems=problems) == [], path
        assert [(p.code, p.line) for p in problems] == [(code, row)], path
        text = problems[0].render()
        assert text.startswith(str(path)) and SECRET not in text and "12345678Z" not in text
        assert problems[0].code in CODES
    formula_problem = []
    load_examples(formulas, problems=formula_problem)
    assert "B2, B3" in formula_problem[0].message and "guárdalo en Excel o LibreOffice" in formula_problem[0].message
    assert "hoja «Hoja1»" in formula_problem[0].render()
    with pytest.raises(AfinarError) as err:
        read_table(locked)
    assert "contraseña" in err.value.message


def test_a_csv_with_rows_wider_than_its_title(tmp_path):
    path = csv_bytes(tmp_path / "ancho.csv", "Registro 2026\nPregunta;Respuesta;Nota\n¿Uno?;Sí;x\n")
    table = read_table(path)
    assert (table.header_row, table.columns, len(table.rows)) == (2, ["Pregunta", "Respuesta", "Nota"], 1)


# --- recipes, validate and the cache --------------------------------------------------------------------------------


def test_gather_on_a_recipe_source_with_columnas_and_hoja(tmp_path):
    path = write_xlsx(tmp_path / "d.xlsx", {
        "Notas": [["a", "b"]],
        "Casos": [["Consulta del paciente", "Respuesta de la enfermera"]] + [[f"¿Pregunta {i}?", f"Respuesta {i}."]
                                                                             for i in range(10)],
    })
    recipe = recipe_from_dict({"name": "t", "data": {"sources": [{
        "path": str(path), "hoja": "Casos",
        "columnas": {"pregunta": "Consulta del paciente", "respuesta": "Respuesta de la enfermera"}}],
        "val_fraction": 0.2}})
    prepared = gather(recipe.data)
    assert not prepared.errors
    assert (len(prepared.train), len(prepared.val), prepared.per_source) == (8, 2, {str(path): 10})
    # Without the mapping: D026 (which names the columns of the right sheet), and no D012 on top of it.
    bare = gather(DataSection(sources=[DataSource(path=str(path), hoja=2)]))
    assert [p.code for p in bare.errors] == ["D026"]


def test_columnas_and_hoja_only_for_tables():
    with pytest.raises(AfinarError) as err:
        recipe_from_dict({"name": "t", "data": {"sources": [{"path": "d.jsonl", "hoja": 2}]}})
    assert "solo valen para hojas de cálculo" in err.value.message
    with pytest.raises(AfinarError):
        recipe_from_dict({"name": "t", "data": {"sources": [{"path": "d.csv", "columnas": {"pregunts": "A"}}]}})
    problems = []
    load_examples(shipped_dataset("primeros_auxilios"), problems=problems, hoja=1)
    assert [p.code for p in problems] == ["D029"]


def test_cache_key_covers_the_mapping_and_the_bytes(tmp_path):
    from afinar.data.tokenized import cache_key

    class Tokenizer:
        chat_template, eos_token, pad_token = "t", "</s>", "</s>"

        def get_vocab(self):
            return {"a": 0}

    path = csv_bytes(tmp_path / "d.csv", "Consulta;Respuesta\na;b\n")
    key = lambda **kw: cache_key(DataSection(sources=[DataSource(path=str(path), **kw)]), Tokenizer())  # noqa: E731
    before = key()
    assert key(columnas={"pregunta": "Consulta"}) != before
    path.write_bytes(b"Consulta;Respuesta\na;c\n")
    assert key() != before


def test_validate_a_table_from_the_command_line(tmp_path, capsys):
    path = csv_bytes(tmp_path / "d.csv", "Consulta del paciente;Texto\n¿Uno?;Sí\n¿Dos?;No\n")
    assert main(["validate", str(path)]) == 1
    assert "D026" in capsys.readouterr().out
    assert main(["validate", str(path), "--columnas", "pregunta=Consulta del paciente,respuesta=Texto"]) == 0
    assert f"{path}: 2 ejemplos válidos" in capsys.readouterr().out
    assert tables.parse_columnas("pregunta=Consulta, con coma,respuesta=R") == {
        "pregunta": "Consulta, con coma", "respuesta": "R"}


def test_jsonl_problems_render_as_before():
    assert Problem("d.jsonl", 3, "D005", "x").render() == "d.jsonl:3: D005: x"
    assert Problem("d.jsonl", None, "D012", "x", "warning").render() == "d.jsonl: D012 (aviso): x"
    assert Problem("d.json", 2, "D005", "x").render() == "d.json, elemento 2: D005: x"


# --- reviewed drafts (afinar borradores) ----------------------------------------------------------------------------


def test_only_reviewed_drafts_are_trained_on(tmp_path):
    base = {"id": "b1", "fuente": "guia.pdf", "profesor": "qwen2.5:7b", "nota": "", "datos_personales": []}
    states = ["aceptado", "corregido", "sin revisar", "descartado", "sin revisar"]
    path = tmp_path / "borradores.jsonl"
    path.write_text("".join(json.dumps(base | {"estado": s, "pregunta": f"¿{i}?", "respuesta": f"R{i}."},
                                       ensure_ascii=False) + "\n" for i, s in enumerate(states)), encoding="utf-8")
    prepared = gather(DataSection(sources=[DataSource(path=str(path))], val_fraction=0))
    assert not prepared.errors
    assert [e.line for e in prepared.train] == [1, 2]
    (warning,) = prepared.warnings
    assert (warning.code, warning.line) == ("D017", None)
    assert warning.message.startswith("3 borradores sin revisar o descartados no se usan")
    # All unreviewed: D012 as for any empty file, and the D017 that says why.
    path.write_text(json.dumps(base | {"estado": "sin revisar", "pregunta": "¿?", "respuesta": "R"}) + "\n",
                    encoding="utf-8")
    prepared = gather(DataSection(sources=[DataSource(path=str(path))]))
    assert sorted(p.code for p in prepared.problems) == ["D012", "D017"]
    # An unknown state is an error, and a draft reviewed in a spreadsheet follows the same rule.
    table = csv_bytes(tmp_path / "revisados.csv", "pregunta;respuesta;estado\n¿A?;A;Aceptado\n¿B?;;descartado\n"
                      "¿C?;C;pendiente\n")
    problems = []
    examples = load_examples(table, problems=problems)
    assert [e.line for e in examples] == [2]
    assert sorted((p.code, p.line) for p in problems) == [("D017", None), ("D035", 4)]


# --- afinar convertir -----------------------------------------------------------------------------------------------


def _keypoints(examples):
    return [(e.messages, e.claves, e.peligros) for e in examples]


@pytest.mark.parametrize("name", ["primeros_auxilios", "primeros_auxilios_evaluacion"])
def test_round_trip_of_the_shipped_set_through_xlsx_and_cp1252_csv(tmp_path, name):
    original = load_examples(shipped_dataset(name))
    assert len(original) > 30
    for table, options in ((tmp_path / "d.xlsx", {}), (tmp_path / "d.csv", {"sep": ";", "encoding": "cp1252"})):
        assert convert(shipped_dataset(name), table, **options, out=lambda *_: None) == 0
        back = tmp_path / f"back{table.suffix}.jsonl"
        assert convert(table, back, out=lambda *_: None) == 0
        again = load_examples(back)
        assert len(again) == len(original)
        for before, after in zip(original, again):
            assert (before.messages, before.claves, before.peligros) == (after.messages, after.claves, after.peligros)
        assert _keypoints(load_examples(table)) == _keypoints(original)  # training reads the table directly too
    assert (tmp_path / "d.csv").read_bytes().decode("cp1252").startswith("pregunta;respuesta")


def test_context_and_system_columns_survive_a_conversion(tmp_path):
    lines = [{"pregunta": "¿Qué hago?", "contexto": "Niño de 3 años", "respuesta": "Agua."},
             {"messages": [{"role": "system", "content": "Eres tutor."}, {"role": "user", "content": "¿Qué es?"},
                           {"role": "assistant", "content": "Un árbol."}]}]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    assert convert(src, tmp_path / "d.xlsx", out=lambda *_: None) == 0
    table = read_table(tmp_path / "d.xlsx")
    assert table.columns == ["pregunta", "respuesta", "contexto", "sistema"]
    assert table.rows[0][1]["contexto"] == "Niño de 3 años"
    assert convert(tmp_path / "d.xlsx", tmp_path / "back.jsonl", out=lambda *_: None) == 0
    back = [json.loads(line) for line in (tmp_path / "back.jsonl").read_text(encoding="utf-8").splitlines()]
    # A row with an empty system cell goes back as pregunta/respuesta with its context apart; one with it, as messages.
    assert back[0] == {"pregunta": "¿Qué hago?", "respuesta": "Agua.", "contexto": "Niño de 3 años"}
    assert back[1] == lines[1]
    assert messages(load_examples(tmp_path / "back.jsonl")) == messages(load_examples(src))


def test_convertir_refuses_to_overwrite(tmp_path, capsys):
    src = shipped_dataset("primeros_auxilios")
    out = tmp_path / "d.csv"
    out.write_text("mío", encoding="utf-8")
    assert main(["convertir", str(src), str(out)]) == 2
    assert "D031" in capsys.readouterr().err and out.read_text(encoding="utf-8") == "mío"
    assert main(["convertir", str(src), str(out), "--sobrescribir", "--separador", ","]) == 0
    assert out.read_text(encoding="utf-8-sig").startswith("pregunta,respuesta")
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.endswith(f"{out}: {len(load_examples(src))} ejemplos escritos.")


def test_multi_turn_conversations_are_listed_and_skipped(tmp_path, capsys):
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    lines = [{"pregunta": "¿Uno?", "respuesta": "Sí."},
             {"messages": [turn("user", SECRET), turn("assistant", "a"), turn("user", "b"), turn("assistant", "c")]},
             {"pregunta": "¿Dos?", "respuesta": "No."}]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert example_row(load_examples(src)[1]) is None
    assert convert(src, tmp_path / "d.ods") == 0
    out = capsys.readouterr().out
    assert "D034 (aviso): 1 conversaciones de varios turnos no caben en una fila y se omiten (líneas 2)" in out
    assert "2 ejemplos escritos (1 conversaciones de varios turnos omitidas)" in out and SECRET not in out
    assert [r for r, _ in read_table(tmp_path / "d.ods").rows] == [2, 3]


def test_a_character_cp1252_cannot_hold_writes_nothing(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"pregunta": "¿Uno?", "respuesta": "Sí."}) + "\n"
                   + json.dumps({"pregunta": "¿Dos?", "respuesta": f"{SECRET} → 😀"}) + "\n", encoding="utf-8")
    with pytest.raises(AfinarError) as err:
        convert(src, tmp_path / "d.csv", encoding="cp1252", out=lambda *_: None)
    assert err.value.code == "D030" and "línea 2 (respuesta)" in err.value.message
    assert SECRET not in err.value.render() and "😀" not in err.value.render()
    assert list(tmp_path.iterdir()) == [src]  # nothing written, not even a temporary file
    with pytest.raises(AfinarError) as err:
        write_table([{"pregunta": "a", "respuesta": "→"}], tmp_path / "w.csv", encoding="cp1252")
    assert "fila 2 (respuesta)" in err.value.message and list(tmp_path.iterdir()) == [src]
    assert convert(src, tmp_path / "d.csv", out=lambda *_: None) == 0  # utf-8-sig holds everything


def test_an_input_with_errors_is_reported_and_nothing_written(tmp_path, capsys):
    src = csv_bytes(tmp_path / "d.csv", f"Pregunta;Respuesta\n{SECRET};\n¿Dos?;No\n")
    assert main(["convertir", str(src), str(tmp_path / "d.jsonl")]) == 1
    out = capsys.readouterr().out
    assert f"{src}, fila 2: D005: la columna «Respuesta» (B) está vacía" in out and SECRET not in out
    assert not (tmp_path / "d.jsonl").exists()
    with pytest.raises(AfinarError) as err:
        convert(src, tmp_path / "d.txt")
    assert err.value.code == "D032"
