"""The Datos step's spreadsheets, table editor and drafts review through the studio's HTTP API (FastAPI's TestClient):
a spreadsheet previewed with its detected columns and turned into a dataset with the columns chosen, the editor's
pages and saves (with the same checks as an upload), and the review queue of a drafts file; the `afinar borradores`
job is checked by its command line (run by the fake interpreter of test_studio.py: no teacher model)."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from tests.unit.test_studio import AUTH, Studio, error_of, studio, wait_for  # noqa: F401 — studio: the fixture

SECRET = "garza turquesa"  # in every row: never in an error message
DOCUMENT = ("# Quemaduras\n\n" + "Enfría la zona quemada con agua corriente durante veinte minutos y cúbrela con un paño "
            "limpio. No pongas hielo, mantequilla ni pasta de dientes. Si la quemadura es grande, llama al 112. " * 4)


def table_rows(n: int) -> list[tuple[str, str, str]]:
    return [(f"¿Qué hago con la {SECRET} número {i}?", f"Con la {SECRET} {i}, enfría con agua y llama al 112.",
             f"nota {i}") for i in range(n)]


def write_xlsx(path: Path, rows: list[tuple], header=("Pregunta", "Respuesta", "Notas"), second_sheet=True) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "Ejemplos"
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    if second_sheet:
        other = book.create_sheet("Otra")
        other.append(["Pregunta", "Respuesta"])
        other.append(["¿Y la otra hoja?", "Tiene una sola fila de ejemplo."])
    book.save(path)
    return path


def upload(s: Studio, path: Path, url: str = "/api/tablas"):
    return s.post(url, content=path.read_bytes(), headers={"X-Nombre-Archivo": quote(path.name, safe="")})


def jsonl_upload(s: Studio, lines: list[str], name: str = "mios.jsonl") -> str:
    answer = s.post("/api/datos", content=("\n".join(lines) + "\n").encode("utf-8"), headers={"X-Nombre-Archivo": name})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


# --- spreadsheets ---------------------------------------------------------------------------------------------------


def test_xlsx_preview_with_detected_columns_then_used_with_explicit_ones(studio, tmp_path):
    s = studio()
    rows = [(*row, "agua | agua corriente; 112") for row in table_rows(12)]
    answer = upload(s, write_xlsx(tmp_path / "Mis ejemplos.xlsx", rows, header=("Pregunta", "Respuesta", "Notas", "Claves")))
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["nombre"] == "Mis ejemplos.xlsx"
    assert preview["hojas"] == ["Ejemplos", "Otra"] and preview["hoja"] == "Ejemplos"
    assert preview["columnas"] == ["Pregunta", "Respuesta", "Notas", "Claves"]
    assert preview["mapeo"] == {"pregunta": "Pregunta", "respuesta": "Respuesta", "claves": "Claves"}
    assert preview["total_filas"] == 12 and len(preview["filas"]) == 10  # the first rows only
    assert preview["filas"][0]["celdas"]["Pregunta"] == table_rows(1)[0][0]
    staged = s.workspace.data / "tablas" / preview["tabla"]
    assert staged.is_file() and not s.get("/api/datos").json()["subidos"]  # not a dataset until she says which columns

    other = s.get(f"/api/tablas/{preview['tabla']}", params={"hoja": "Otra"}).json()
    assert other["hoja"] == "Otra" and other["total_filas"] == 1

    used = s.post(f"/api/tablas/{preview['tabla']}/usar",
                  json={"hoja": "Ejemplos", "columnas": {"pregunta": "Pregunta", "respuesta": "Respuesta",
                                                         "contexto": "Notas", "sistema": None, "claves": "Claves"}})
    assert used.status_code == 200, used.text
    result = used.json()
    assert result["ejemplos"] == 12 and result["validacion"]["ejemplos"] == 12
    assert result["validacion"]["total_errores"] == 0
    assert [d["id"] for d in s.get("/api/datos").json()["subidos"]] == [result["id"]]
    lines = [json.loads(x) for x in (s.workspace.data / f"{result['id']}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 12
    assert lines[0] == {"pregunta": rows[0][0], "respuesta": rows[0][1], "contexto": "nota 0",
                        "claves": [["agua", "agua corriente"], ["112"]]}  # the context in its own field, as she wrote it
    assert s.get(f"/api/datos/{result['id']}/validacion").json()["ejemplos"] == 12


def test_semicolon_cp1252_csv_is_read_and_used(studio, tmp_path):
    s = studio()
    text = "Pregunta;Respuesta\n" + "".join(f"{q};{a}\n" for q, a, _ in table_rows(5))
    path = tmp_path / "excel-español.csv"
    path.write_bytes(text.encode("cp1252"))
    answer = upload(s, path)
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["columnas"] == ["Pregunta", "Respuesta"]
    assert preview["filas"][0]["celdas"]["Pregunta"].startswith("¿Qué hago")  # decoded, not mojibake
    used = s.post(f"/api/tablas/{preview['tabla']}/usar",
                  json={"columnas": {"pregunta": "Pregunta", "respuesta": "Respuesta"}})
    assert used.status_code == 200, used.text
    assert used.json()["validacion"]["ejemplos"] == 5


def test_a_field_set_to_none_is_not_taken_from_a_header_that_looks_like_it(studio, tmp_path):
    """«— ninguna —» for the context of a table whose third column is called «Contexto»: she said it is not context."""
    s = studio()
    text = "Pregunta;Respuesta;Contexto\n" + "".join(f"{q};{a};notas internas\n" for q, a, _ in table_rows(3))
    path = tmp_path / "con-notas.csv"
    path.write_bytes(text.encode("utf-8"))
    preview = upload(s, path).json()
    assert preview["mapeo"]["contexto"] == "Contexto"  # detected, and preselected in the page
    used = s.post(f"/api/tablas/{preview['tabla']}/usar",
                  json={"columnas": {"pregunta": "Pregunta", "respuesta": "Respuesta", "contexto": None}})
    assert used.status_code == 200, used.text
    lines = (s.workspace.data / f"{used.json()['id']}.jsonl").read_text(encoding="utf-8")
    assert "notas internas" not in lines and "contexto" not in lines


def test_a_column_that_is_not_in_the_table_is_refused_listing_the_columns(studio, tmp_path):
    s = studio()
    preview = upload(s, write_xlsx(tmp_path / "t.xlsx", table_rows(3), second_sheet=False)).json()
    answer = s.post(f"/api/tablas/{preview['tabla']}/usar",
                    json={"columnas": {"pregunta": "Pregunta", "respuesta": "Contestación"}})
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["codigo"] == "E044" and "Contestación" in error["mensaje"]
    assert "«Pregunta», «Respuesta», «Notas»" in error["mensaje"] and error["sugerencia"]
    assert SECRET not in answer.text
    missing = s.post(f"/api/tablas/{preview['tabla']}/usar", json={"columnas": {"pregunta": "Pregunta"}})
    assert error_of(missing)["codigo"] == "E044" and "respuesta" in error_of(missing)["mensaje"]
    assert not s.get("/api/datos").json()["subidos"]


def test_columns_that_cannot_be_detected_are_chosen_by_her(studio, tmp_path):
    s = studio()
    preview = upload(s, write_xlsx(tmp_path / "raro.xlsx", table_rows(4), header=("Columna uno", "Columna dos", "x"),
                                   second_sheet=False)).json()
    assert preview["mapeo_error"] and "«Columna uno», «Columna dos», «x»" in preview["mapeo_error"]
    assert preview["mapeo"] == {}
    used = s.post(f"/api/tablas/{preview['tabla']}/usar",
                  json={"columnas": {"pregunta": "Columna uno", "respuesta": "Columna dos"}})
    assert used.status_code == 200, used.text
    assert used.json()["ejemplos"] == 4


def test_a_partly_detected_table_preselects_what_is_certain(studio, tmp_path):
    s = studio()
    preview = upload(s, write_xlsx(tmp_path / "consultas.xlsx", table_rows(2), header=("Consulta", "Contestación", "Notas"),
                                   second_sheet=False)).json()
    assert "respuesta" in preview["mapeo_error"] and preview["mapeo"] == {"pregunta": "Consulta"}


def test_not_a_table_unknown_table_and_size_limit(studio, tmp_path):
    s = studio(max_upload_bytes=2048)
    bad = s.post("/api/tablas", content=b"%PDF-1.4", headers={"X-Nombre-Archivo": "informe.pdf"})
    assert bad.status_code == 400 and error_of(bad)["codigo"] == "E042"
    unknown = s.get("/api/tablas/no-existe-1234.xlsx")
    assert unknown.status_code == 404 and error_of(unknown)["codigo"] == "E043"
    assert s.post("/api/tablas/../../x/usar", json={"columnas": {}}).status_code in (400, 404)
    big = s.post("/api/tablas", content=b"a;b\n" * 1000, headers={"X-Nombre-Archivo": "grande.csv"})
    assert big.status_code == 413 and error_of(big)["codigo"] == "E013"
    staging = s.workspace.data / "tablas"
    assert not staging.exists() or not list(staging.iterdir())  # neither the file nor its temporary copy
    assert s.client.post("/api/tablas", content=b"a;b\n", headers={"X-Nombre-Archivo": "x.csv"}).status_code == 401


# --- the table editor -----------------------------------------------------------------------------------------------


def qa(i: int, **extra) -> str:
    return json.dumps({"pregunta": f"¿Pregunta {i} de la {SECRET}?", "respuesta": f"Respuesta {i}, con agua.", **extra},
                      ensure_ascii=False)


CONVERSATION = json.dumps({"messages": [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "Hola, dime."},
                                        {"role": "user", "content": "¿Y una quemadura?"},
                                        {"role": "assistant", "content": "Agua corriente 20 minutos."}]},
                          ensure_ascii=False)


def test_editor_pages_edit_delete_add_and_check_again(studio):
    s = studio()
    lines = [qa(0, claves=[["agua"]]), qa(1), CONVERSATION, qa(3)]
    dataset = jsonl_upload(s, lines)
    page = s.get(f"/api/datos/{dataset}/filas").json()
    assert page["total"] == 4 and page["paginas"] == 1
    rows = {r["linea"]: r for r in page["filas"]}
    assert rows[1]["tipo"] == "ejemplo" and rows[1]["pregunta"].startswith("¿Pregunta 0")
    assert rows[3]["tipo"] == "conversacion" and rows[3]["turnos"] == 2

    saved = s.post(f"/api/datos/{dataset}/filas", json={
        "version": page["version"],
        "filas": [{"linea": 1, "pregunta": "¿Pregunta cambiada?", "respuesta": "Respuesta cambiada.", "contexto": "",
                   "sistema": ""},
                  {"linea": None, "pregunta": "¿Nueva?", "respuesta": "Sí, nueva.", "contexto": "con contexto",
                   "sistema": "Eres una enfermera."}],
        "borradas": [2]})
    assert saved.status_code == 200, saved.text
    checked = saved.json()
    assert checked["ejemplos"] == 4 and checked["total_errores"] == 0  # 1 edited, 1 deleted, 1 new, 1 conversation
    assert checked["cambiadas"] == 1 and checked["borradas"] == 1 and checked["nuevas"] == 1
    assert checked["version"] != page["version"]
    written = (s.workspace.data / f"{dataset}.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(written[0]) == {"pregunta": "¿Pregunta cambiada?", "respuesta": "Respuesta cambiada.",
                                      "claves": [["agua"]]}  # her other fields stay
    assert written[1] == CONVERSATION and written[2] == qa(3)  # untouched lines stay byte for byte
    new = json.loads(written[3])
    assert new["messages"][0] == {"role": "system", "content": "Eres una enfermera."}
    assert [r["tipo"] for r in s.get(f"/api/datos/{dataset}/filas").json()["filas"]] == [
        "ejemplo", "conversacion", "ejemplo", "ejemplo"]
    assert not [p for p in s.workspace.data.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_editor_refuses_an_empty_answer_naming_the_row_and_keeps_the_file(studio):
    s = studio()
    dataset = jsonl_upload(s, [qa(0), qa(1), CONVERSATION])
    path = s.workspace.data / f"{dataset}.jsonl"
    before = path.read_bytes()
    version = s.get(f"/api/datos/{dataset}/filas").json()["version"]
    empty = s.post(f"/api/datos/{dataset}/filas", json={"version": version, "filas": [
        {"linea": 2, "pregunta": "¿Sigue?", "respuesta": "   "}]})
    assert empty.status_code == 400
    assert error_of(empty)["codigo"] == "E046" and "línea 2" in error_of(empty)["mensaje"]
    assert "respuesta" in error_of(empty)["mensaje"]
    new_empty = s.post(f"/api/datos/{dataset}/filas", json={"version": version, "filas": [
        {"linea": None, "pregunta": "", "respuesta": "algo"}]})
    assert error_of(new_empty)["codigo"] == "E046" and "nueva número 1" in error_of(new_empty)["mensaje"]
    conversation = s.post(f"/api/datos/{dataset}/filas", json={"version": version, "filas": [
        {"linea": 3, "pregunta": "a", "respuesta": "b"}]})
    assert error_of(conversation)["codigo"] == "E048"
    stale = s.post(f"/api/datos/{dataset}/filas", json={"version": "otra", "borradas": [1]})
    assert stale.status_code == 409 and error_of(stale)["codigo"] == "E047"
    assert path.read_bytes() == before
    everything = s.post(f"/api/datos/{dataset}/filas", json={"version": version, "borradas": [1, 2, 3]})
    assert everything.status_code == 400 and error_of(everything)["codigo"] == "E017"
    assert path.read_bytes() == before
    shipped = s.get("/api/datos/afinar:primeros_auxilios/filas")
    assert error_of(shipped)["codigo"] == "E018"


def test_editor_paginates_large_files(studio):
    s = studio()
    dataset = jsonl_upload(s, [qa(i) for i in range(120)])
    first = s.get(f"/api/datos/{dataset}/filas").json()
    assert first["paginas"] == 3 and len(first["filas"]) == 50 and first["filas"][0]["linea"] == 1
    last = s.get(f"/api/datos/{dataset}/filas", params={"pagina": 99}).json()
    assert last["pagina"] == 3 and [r["linea"] for r in last["filas"]] == list(range(101, 121))


# --- drafts ---------------------------------------------------------------------------------------------------------


def draft(i: int, **extra) -> dict:
    return {"id": f"p{i}-1", "estado": "sin revisar", "pregunta": f"¿Borrador {i} sobre la {SECRET}?",
            "respuesta": f"Respuesta del profesor {i}.", "fuente": {"archivo": "protocolo.pdf", "pagina": i + 1,
                                                                   "seccion": None, "pasaje": f"p{i}",
                                                                   "texto": f"Texto del pasaje {i}."},
            "profesor": {"modelo": "qwen2.5:7b", "url": "http://127.0.0.1:11434/v1"}, **extra}


def write_drafts(s: Studio, name: str = "protocolo", n: int = 4) -> Path:
    folder = s.root / "borradores"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.jsonl"
    items = [draft(i, **({"datos_personales": ["telefono"]} if i == 0 else {})) for i in range(n)]
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in items), encoding="utf-8")
    return path


def test_review_queue_decisions_undo_counts_and_the_reviewed_dataset(studio):
    s = studio()
    write_drafts(s)
    listed = s.get("/api/borradores").json()["borradores"]
    assert [b["id"] for b in listed] == ["protocolo"] and listed[0]["recuento"]["sin revisar"] == 4
    queue = s.get("/api/borradores/protocolo").json()
    assert [d["id"] for d in queue["borradores"]] == ["p0-1", "p1-1", "p2-1", "p3-1"]
    assert queue["borradores"][0]["fuente"]["texto"] == "Texto del pasaje 0."
    assert queue["borradores"][0]["datos_personales"] == ["telefono"]

    nothing = s.post("/api/borradores/protocolo/usar")
    assert nothing.status_code == 400 and error_of(nothing)["codigo"] == "E057"

    def decide(draft_id, decision, **texts):
        answer = s.post("/api/borradores/protocolo/revisar", json={"borrador": draft_id, "decision": decision, **texts})
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert decide("p0-1", "aceptar")["borrador"]["estado"] == "aceptado"
    corrected = decide("p1-1", "corregir", pregunta="¿Pregunta corregida?", respuesta="Respuesta corregida.")
    assert corrected["borrador"]["estado"] == "corregido" and corrected["borrador"]["original"]
    assert decide("p2-1", "descartar")["recuento"]["descartado"] == 1
    undone = decide("p2-1", "deshacer")
    assert undone["borrador"]["estado"] == "sin revisar"
    assert undone["recuento"] == {"sin revisar": 2, "aceptado": 1, "corregido": 1, "descartado": 0, "total": 4}
    decide("p2-1", "descartar")

    empty = s.post("/api/borradores/protocolo/revisar", json={"borrador": "p3-1", "decision": "corregir",
                                                              "pregunta": "¿Algo?", "respuesta": " "})
    assert empty.status_code == 400 and error_of(empty)["codigo"] == "E058"
    unknown = s.post("/api/borradores/protocolo/revisar", json={"borrador": "nada", "decision": "aceptar"})
    assert unknown.status_code == 404
    assert s.get("/api/borradores/no-hay").status_code == 404
    assert error_of(s.post("/api/borradores/protocolo/revisar",
                           json={"borrador": "p3-1", "decision": "borrar"}))["codigo"] == "E006"

    used = s.post("/api/borradores/protocolo/usar")
    assert used.status_code == 200, used.text
    result = used.json()
    assert result["ejemplos"] == 2 and result["validacion"]["ejemplos"] == 2
    assert result["id"] in [d["id"] for d in s.get("/api/datos").json()["subidos"]]
    text = (s.workspace.data / f"{result['id']}.jsonl").read_text(encoding="utf-8")
    assert "¿Pregunta corregida?" in text and "Borrador 0" in text
    assert "Borrador 2" not in text and "Borrador 3" not in text  # discarded and unreviewed never train
    assert not [p for p in s.workspace.data.iterdir() if p.name.startswith(".")]


def test_documents_upload_and_the_drafts_job_command(studio, tmp_path):
    s = studio()
    document = s.post("/api/documentos", content=DOCUMENT.encode(),
                      headers={"X-Nombre-Archivo": quote("Protocolo básico.md", safe="")})
    assert document.status_code == 200, document.text
    doc = document.json()
    assert doc["pasajes"] >= 1 and doc["id"].startswith("Protocolo-basico-") and doc["id"].endswith(".md")
    assert [d["id"] for d in s.get("/api/documentos").json()["documentos"]] == [doc["id"]]
    refused = s.post("/api/documentos", content=b"MZ\x00", headers={"X-Nombre-Archivo": "programa.exe"})
    assert error_of(refused)["codigo"] == "E049"

    form = {"documentos": [doc["id"]], "profesor_url": "http://192.168.1.20:11434/v1", "modelo": "qwen2.5:7b"}
    remote = s.post("/api/borradores/trabajo", json=form)
    assert remote.status_code == 400 and error_of(remote)["codigo"] == "E053"
    assert "Permitir un servidor fuera de este equipo" in error_of(remote)["sugerencia"]
    assert error_of(s.post("/api/borradores/trabajo", json={**form, "profesor_url": "ftp://x"}))["codigo"] == "E052"
    # The CLI's rules (judge.url_host / is_loopback): a name that only starts like a loopback address is another
    # machine, and a port that cannot exist is not an address.
    for url, code in (("http://127.evil.example:11434/v1", "E053"), ("http://127.0.0.1:99999/v1", "E052")):
        assert error_of(s.post("/api/borradores/trabajo", json={**form, "profesor_url": url}))["codigo"] == code
    assert error_of(s.post("/api/borradores/trabajo", json={**form, "documentos": ["otro.pdf"],
                                                            "permitir_remoto": True}))["codigo"] == "E051"
    assert error_of(s.post("/api/borradores/trabajo", json={**form, "modelo": " "}))["codigo"] == "E055"
    assert not (s.root / "llamadas.jsonl").exists()  # nothing was started

    job = s.post("/api/borradores/trabajo", json={**form, "permitir_remoto": True, "por_pasaje": 2})
    assert job.status_code == 202, job.text
    record = job.json()
    name = "Protocolo-basico"
    expected = ["borradores", f"documentos/{doc['id']}", "--profesor", "http://192.168.1.20:11434/v1",
                "--modelo", "qwen2.5:7b", "--salida", f"borradores/{name}.jsonl", "--por-pasaje", "2",
                "--permitir-remoto"]
    assert record["tipo"] == "borradores" and record["ejecucion"] == name and record["argv"] == expected
    assert record["comando"].startswith("afinar borradores documentos/")
    from afinar.cli import parse_args

    parsed = parse_args(expected)  # the command line the real CLI reads
    assert (parsed.documents, parsed.teacher, parsed.model, parsed.output, parsed.per_passage,
            parsed.allow_remote) == ([f"documentos/{doc['id']}"], "http://192.168.1.20:11434/v1", "qwen2.5:7b",
                                        f"borradores/{name}.jsonl", 2, True)
    assert s.wait_end(record["id"])["estado"] == "terminado"
    calls = [json.loads(x) for x in (s.root / "llamadas.jsonl").read_text().splitlines()]
    assert calls == [["-m", "afinar", *expected]]

    local = s.post("/api/borradores/trabajo", json={**form, "profesor_url": "http://localhost:11434/v1",
                                                    "nombre": "mio"})
    assert local.status_code == 202, local.text
    assert "--permitir-remoto" not in local.json()["argv"] and f"borradores/mio.jsonl" in local.json()["argv"]
    s.wait_end(local.json()["id"])


def test_drafts_being_written_are_not_reviewed_until_the_job_ends(studio):
    s = studio("wait")
    write_drafts(s, "mio", 1)
    document = s.post("/api/documentos", content=DOCUMENT.encode(), headers={"X-Nombre-Archivo": "a.txt"}).json()
    job = s.post("/api/borradores/trabajo", json={"documentos": [document["id"]], "modelo": "m", "nombre": "mio"})
    assert job.status_code == 202, job.text
    busy = s.post("/api/borradores/mio/revisar", json={"borrador": "p0-1", "decision": "aceptar"})
    assert busy.status_code == 409 and error_of(busy)["codigo"] == "E056"
    assert s.get("/api/borradores/mio").json()["escribiendose"] is True
    second = s.post("/api/borradores/trabajo", json={"documentos": [document["id"]], "modelo": "m"})
    assert second.status_code == 409 and error_of(second)["codigo"] == "E020"


def test_the_page_script_of_the_data_step_is_served_and_guarded(studio):
    s = studio()
    script = s.get("/static/datos.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "/api/borradores/" in script.text and "Usar estas columnas" in script.text
    assert '<script src="/static/datos.js" defer></script>' in s.get("/").text
    # Every new action is a POST behind the token header; the cookie alone never does one.
    cookie = {"afinar_estudio_7860": "t0k"}
    for path in ("/api/tablas", "/api/documentos", "/api/borradores/x/revisar", "/api/borradores/x/usar",
                 "/api/borradores/trabajo", "/api/datos/x/filas", "/api/tablas/x.csv/usar"):
        s.client.cookies.update(cookie)
        answer = s.client.post(path, content=b"{}")
        assert answer.status_code == 403 and error_of(answer)["codigo"] == "E004", path
        s.client.cookies.clear()


def test_a_damaged_spreadsheet_is_refused_by_its_name_and_not_kept(studio):
    s = studio()
    answer = s.post("/api/tablas", content=b"PK\x03\x04 no es un zip de verdad", headers={"X-Nombre-Archivo": "notas.xlsx"})
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["codigo"].startswith("D") and error["mensaje"]
    assert "notas.xlsx" in (error["donde"] or "") and "tablas" not in (error["donde"] or "")
    assert not list((s.workspace.data / "tablas").iterdir())
