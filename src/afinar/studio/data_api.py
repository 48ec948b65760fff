"""The Datos step's spreadsheets and table editor: a table (.csv .tsv .xlsx .ods .parquet .json) uploaded to a staging
folder, previewed with the columns afinar detects, turned into a workspace JSONL with the columns the person chose; and
any uploaded JSONL edited row by row in the page (paginated), saved atomically and checked again exactly as an upload.

The cells go to the person's own browser (she asked to see them); no row's text is logged or put in an error.
Error codes: E042 (not a table), E043 (no such staged table), E044 (a column choice that does not fit the table),
E045 (no row of the table is a usable example), E046 (an edited row without its question or answer), E047 (the file
changed since the editor read it), E048 (a row the editor cannot change).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from afinar.data.records import TABLE_SUFFIXES
from afinar.errors import AfinarError
from afinar.studio.checks import receive_named_upload, unusable, validation
from afinar.studio.workspace import Workspace, checked_name

TABLE_UPLOAD_PATH = "/api/tablas"
TABLES_FOLDER = "tablas"  # <carpeta>/datos/tablas/: uploaded spreadsheets waiting for their columns
PREVIEW_ROWS = 10
PAGE_ROWS = 50
EDITABLE = ("pregunta", "respuesta", "contexto", "sistema")
NOT_FOUND = {"E043"}
CONFLICT = {"E047"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UseTableForm(Strict):
    hoja: str | None = Field(default=None, max_length=200)
    columnas: dict[str, str | None]  # field → column (None or "": not used)


class Row(Strict):
    linea: int | None = None  # the JSONL line it replaces; None for a new row
    pregunta: str = Field(default="", max_length=100_000)
    respuesta: str = Field(default="", max_length=100_000)
    contexto: str = Field(default="", max_length=100_000)
    sistema: str = Field(default="", max_length=100_000)


class SaveRowsForm(Strict):
    version: str = Field(max_length=64)
    filas: list[Row] = Field(default_factory=list, max_length=5000)
    borradas: list[int] = Field(default_factory=list, max_length=100_000)


def register(app: FastAPI, workspace: Workspace, options) -> None:
    staging = workspace.data / TABLES_FOLDER

    @app.post(TABLE_UPLOAD_PATH)
    async def upload_table(request: Request):
        final, name, _ = await receive_named_upload(request, staging, "tabla.csv", options.max_upload_bytes,
                                                    TABLE_SUFFIXES, _not_a_table)
        try:
            preview = await run_in_threadpool(_named, name, _preview, final, None)
        except BaseException:
            final.unlink(missing_ok=True)  # a file that is not a table is not kept
            raise
        return {"tabla": final.name, "nombre": name, **preview}

    @app.get("/api/tablas/{table}")
    async def table_preview(table: str, hoja: str | None = None):
        return {"tabla": table, **await run_in_threadpool(_named, table, _preview, _staged(staging, table), hoja)}

    @app.post("/api/tablas/{table}/usar")
    async def use_table(table: str, form: UseTableForm):
        path = _staged(staging, table)
        return await run_in_threadpool(_named, table, _convert, path, form.columnas, form.hoja, workspace)

    @app.get("/api/datos/{dataset}/filas")
    async def rows(dataset: str, pagina: int = 1, por_pagina: int = PAGE_ROWS):
        path = _uploaded(workspace, dataset)
        return await run_in_threadpool(_page, path, pagina, max(1, min(por_pagina, 200)))

    @app.post("/api/datos/{dataset}/filas")
    async def save_rows(dataset: str, form: SaveRowsForm):
        path = _uploaded(workspace, dataset)
        return await run_in_threadpool(_save, path, form)


# --- spreadsheets ---------------------------------------------------------------------------------------------------


def _not_a_table(name: str) -> AfinarError:
    return AfinarError("E042", f"«{name}» no es una hoja de cálculo que el estudio lea.",
                       hint="sube un archivo .xlsx, .ods, .csv, .tsv, .parquet o .json (o un .jsonl)")


def _staged(staging: Path, table: str) -> Path:
    name = checked_name(table, "tabla")
    path = staging / name
    if path.suffix.lower() not in TABLE_SUFFIXES or not path.is_file():
        raise AfinarError("E043", "esa hoja de cálculo ya no está en el estudio: vuelve a subirla.", where=table)
    return path


def _named(shown: str, function, path: Path, *args):
    """function(path, *args), with an error that names the staged file («/…/datos/tablas/x-1a2b.xlsx, hoja…»)
    naming it as the person knows it instead."""
    try:
        return function(path, *args)
    except AfinarError as exc:
        exc.where = exc.where.replace(str(path), shown) if exc.where else exc.where
        exc.message = exc.message.replace(str(path), shown)
        raise


def _preview(path: Path, sheet: str | None) -> dict:
    """Sheets, columns, the detected mapping (or why there is none: the page then asks) and the first rows."""
    from afinar.data.tables import FIELDS, detect_columns, read_table

    table = read_table(path, sheet)
    try:
        mapping, problem = detect_columns(table.columns, path), None
    except AfinarError as exc:  # ambiguous or missing: what is certain is preselected, she chooses the rest
        mapping, problem = _certain_columns(list(table.columns)), exc.message
    return {"hojas": list(table.sheets or []), "hoja": table.sheet, "fila_cabecera": table.header_row,
            "columnas": list(table.columns), "campos": list(FIELDS), "mapeo": mapping, "mapeo_error": problem,
            "total_filas": len(table.rows),
            "filas": [{"fila": number, "celdas": cells} for number, cells in table.rows[:PREVIEW_ROWS]]}


def _certain_columns(columns: list[str]) -> dict[str, str]:
    """The fields exactly one column's header names (the same synonyms `detect_columns` knows)."""
    from afinar.data.tables import SYNONYMS, normalize

    found = {field: [c for c in columns if normalize(c) in names] for field, names in SYNONYMS.items()}
    return {field: matches[0] for field, matches in found.items() if len(matches) == 1}


def _mapping(columns: list[str], chosen: dict[str, str | None]) -> dict[str, str]:
    from afinar.data.tables import FIELDS

    mapping = {field: column for field, column in chosen.items() if column}
    unknown = [field for field in mapping if field not in FIELDS]
    if unknown:
        raise AfinarError("E044", f"campo desconocido: {', '.join(unknown)}.",
                          hint=f"los campos son {', '.join(FIELDS)}")
    missing = [column for column in mapping.values() if column not in columns]
    listed = ", ".join(f"«{c}»" for c in columns)
    if missing:
        raise AfinarError("E044", f"la tabla no tiene la columna «{missing[0]}»; sus columnas son: {listed}.",
                          hint="elige una de esas columnas en la lista de cada campo")
    for needed in ("pregunta", "respuesta"):
        if needed not in mapping:
            raise AfinarError("E044", f"falta elegir la columna de la {needed}; las columnas son: {listed}.",
                              hint=f"elige qué columna tiene la {needed}")
    repeated = {c for c in mapping.values() if list(mapping.values()).count(c) > 1}
    if repeated:
        raise AfinarError("E044", f"la columna «{sorted(repeated)[0]}» está elegida para dos campos.",
                          hint="cada columna puede ser un solo campo")
    return mapping


def _convert(path: Path, chosen: dict[str, str | None], sheet: str | None, workspace: Workspace) -> dict:
    """The table with those columns → a JSONL in the workspace (temp + rename), checked like an upload. Rows with a
    problem (an empty answer…) are left out and listed by row number (never by their text)."""
    from afinar.data.tables import jsonl_lines, read_table

    table = read_table(path, sheet)
    mapping = _mapping(list(table.columns), chosen)
    problems: list = []
    # «— ninguna —» (None) stays in: that field then has no column even where a header looks like it.
    unused = {field: None for field, column in chosen.items() if not column}
    lines = [json.dumps(line, ensure_ascii=False)
             for line in jsonl_lines(path, columnas=mapping | unused, hoja=table.sheet, problems=problems)]
    listed = [{"fila": p.line, "codigo": p.code, "mensaje": p.message.replace(f"{path}:", "la fila "),
               "aviso": getattr(p, "severity", "error") != "error"} for p in problems[:200]]
    left_out = [p for p in listed if not p["aviso"]]
    if not lines:
        first = ""
        if left_out:
            where = f", fila {left_out[0]['fila']}" if left_out[0]["fila"] else ""
            first = f" ({left_out[0]['mensaje']}{where})"
        raise AfinarError("E045", f"ninguna fila de la tabla es un ejemplo que se pueda usar{first}.",
                          hint="revisa que las columnas elegidas sean las de la pregunta y la respuesta")
    stem = path.stem.rsplit("-", 1)[0]  # without the staging name's random part
    several = table.sheet and len(table.sheets or []) > 1
    final = workspace.new_dataset_path(stem + (f"-{table.sheet}" if several else ""))
    _write_lines(final, lines)
    checked = validation(final)
    if not checked["ejemplos"]:
        final.unlink(missing_ok=True)
        raise unusable(checked, path.name)
    return {"id": final.stem, "ejemplos": checked["ejemplos"], "filas_descartadas": left_out,
            "total_descartadas": sum(1 for p in problems if getattr(p, "severity", "error") == "error"),
            "avisos_tabla": [p for p in listed if p["aviso"]], "columnas": mapping, "hoja": table.sheet,
            "validacion": checked}


def _record(row: dict) -> dict:
    """One example as a JSONL object: {"pregunta", "respuesta", "contexto"?, "claves"?, "peligros"?}; with fixed
    instructions for the assistant («sistema»), a conversation (the format that carries them)."""
    question, answer = (row.get("pregunta") or "").strip(), (row.get("respuesta") or "").strip()
    context, system = (row.get("contexto") or "").strip(), (row.get("sistema") or "").strip()
    if system:
        user = question + (f"\n{context}" if context else "")
        record: dict[str, Any] = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                                               {"role": "assistant", "content": answer}]}
    else:
        record = {"pregunta": question, "respuesta": answer}
        if context:
            record["contexto"] = context
    for key in ("claves", "peligros"):
        if row.get(key):
            record[key] = row[key]
    return record


def _write_lines(path: Path, lines: list[str]) -> None:
    from afinar.atomic import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in lines))


# --- the table editor -----------------------------------------------------------------------------------------------


def _uploaded(workspace: Workspace, dataset: str) -> Path:
    if dataset.startswith("afinar:"):
        raise AfinarError("E018", "los conjuntos incluidos no se modifican.", where=dataset,
                          hint="sube tu propio archivo (o una hoja de cálculo) para editarlo")
    return workspace.dataset_path(dataset)


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _lines(path: Path) -> tuple[bytes, list[str]]:
    data = path.read_bytes()
    text = data.decode("utf-8-sig", errors="replace")
    return data, text.splitlines()


def row_of(text: str) -> dict:
    """A JSONL line as the editor shows it: the four texts when it is one question and one answer («ejemplo»),
    or read-only: a longer conversation («conversacion»), cases as data («estructurado»), a broken line
    («error»)."""
    try:
        obj = json.loads(text)
    except ValueError:
        return {"tipo": "error", "texto": text[:2000]}
    if not isinstance(obj, dict):
        return {"tipo": "error", "texto": text[:2000]}
    if "messages" in obj:
        messages = obj["messages"]
        ok = isinstance(messages, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                for m in messages)
        roles = [m.get("role") for m in messages] if ok else []
        if roles in (["user", "assistant"], ["system", "user", "assistant"]):
            texts = {m["role"]: m["content"] for m in messages}
            return {"tipo": "ejemplo", "pregunta": texts["user"], "respuesta": texts["assistant"], "contexto": "",
                    "sistema": texts.get("system", "")}
        if ok:
            first = next((m["content"] for m in messages if m.get("role") == "user"), "")
            return {"tipo": "conversacion", "turnos": sum(r == "user" for r in roles), "pregunta": first}
        return {"tipo": "error", "texto": text[:2000]}
    keys = ("instruction", "output", "input") if ("instruction" in obj or "output" in obj) else \
        ("pregunta", "respuesta", "contexto")
    values = [obj.get(k, "") for k in keys]
    system = obj.get("sistema", obj.get("system", ""))
    if not all(isinstance(v, str) for v in values):
        if isinstance(values[2], (dict, list)):
            return {"tipo": "estructurado", "pregunta": values[0] if isinstance(values[0], str) else ""}
        return {"tipo": "error", "texto": text[:2000]}
    return {"tipo": "ejemplo", "pregunta": values[0], "respuesta": values[1], "contexto": values[2],
            "sistema": system if isinstance(system, str) else ""}


def _numbered(lines: list[str]) -> list[int]:
    """The (1-based) numbers of the lines with something on them: the rows of the editor."""
    return [number for number, text in enumerate(lines, 1) if text.strip()]


def _page(path: Path, page: int, per_page: int) -> dict:
    data, lines = _lines(path)
    numbers = _numbered(lines)
    pages = max(1, -(-len(numbers) // per_page))
    page = max(1, min(page, pages))
    shown = numbers[(page - 1) * per_page: page * per_page]
    return {"version": _version(data), "total": len(numbers), "pagina": page, "paginas": pages,
            "por_pagina": per_page, "filas": [{"linea": n, **row_of(lines[n - 1])} for n in shown]}


def _save(path: Path, form: SaveRowsForm) -> dict:
    """Her edits, deletions and new rows → the file rewritten (temp + rename) and checked again. Lines she did not
    touch stay byte for byte; an edited line keeps its other fields (claves, peligros…)."""
    data, lines = _lines(path)
    if form.version != _version(data):
        raise AfinarError("E047", "el archivo ha cambiado desde que abriste la tabla (¿otra pestaña?): no se ha "
                          "guardado para no perder esos cambios.", hint="vuelve a abrir la tabla y repite tus cambios")
    existing = set(_numbered(lines))
    edits: dict[int, str] = {}
    new: list[str] = []
    fresh = 0
    for row in form.filas:
        if row.linea is None:
            fresh += 1
            where = f"la fila nueva número {fresh}"
        else:
            where = f"la fila de la línea {row.linea}"
        if row.linea is not None and row.linea in form.borradas:
            continue
        empty = [name for name in ("pregunta", "respuesta") if not getattr(row, name).strip()]
        if empty:
            raise AfinarError("E046", f"{where} no tiene {' ni '.join(empty)}: no se ha guardado nada.",
                              where=where, hint="escribe el texto que falta o borra esa fila")
        texts = row.model_dump(exclude={"linea"})
        if row.linea is None:
            new.append(json.dumps(_record(texts), ensure_ascii=False))
            continue
        if row.linea not in existing:
            raise AfinarError("E048", f"{where} ya no está en el archivo.", hint="vuelve a abrir la tabla")
        original = row_of(lines[row.linea - 1])
        if original["tipo"] != "ejemplo":
            raise AfinarError("E048", f"{where} es una conversación de varios turnos o una línea con errores: la "
                              "tabla no la cambia.", hint="bórrala, o cámbiala en tu archivo y vuelve a subirlo")
        kept = {k: v for k, v in json.loads(lines[row.linea - 1]).items()
                if k in ("claves", "peligros") or k not in {"messages", "instruction", "output", "input", "pregunta",
                                                           "respuesta", "contexto", "sistema", "system"}}
        edits[row.linea] = json.dumps({**_record(texts), **kept}, ensure_ascii=False)
    unknown = [n for n in form.borradas if n not in existing]
    if unknown:
        raise AfinarError("E048", f"la línea {unknown[0]} que quieres borrar ya no está en el archivo.",
                          hint="vuelve a abrir la tabla")
    gone = set(form.borradas)
    result = [edits.get(n, text) for n, text in enumerate(lines, 1) if n not in gone and text.strip()] + new
    partial = path.with_name(f".{path.name}.editando")
    try:
        _write_lines(partial, result)
        checked = validation(partial)
        if not checked["ejemplos"]:
            raise unusable(checked, path.stem)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    checked["archivo"] = path.name
    return {**checked, "version": _version(path.read_bytes()), "total": len(result), "cambiadas": len(edits),
            "borradas": len(gone), "nuevas": len(new)}
