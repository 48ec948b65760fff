"""What the studio says about a data file: is it a JSONL at all, its problems by line, the lines that may hold personal
data and the checks its topic suggests (never a row's text). Shared by every way a dataset reaches the workspace:
an upload, a spreadsheet, the table editor, the reviewed drafts."""
from __future__ import annotations

import json
from pathlib import Path

from afinar.errors import AfinarError
from afinar.studio.settings import fix_for, suggest_checks
from afinar.studio.workspace import unique_path


def mb(size: int) -> str:
    return f"{size / 2**20:g} MB".replace(".", ",")


def not_jsonl(path: Path) -> str | None:
    """Why an upload is not a JSONL file at all (None when at least one line is a JSON object): a PDF, a spreadsheet
    or a photo is refused whole; a JSONL with some bad lines is kept and its problems listed by line."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    if not head.strip():
        return "el archivo está vacío."
    if b"\0" in head[:4096]:
        return "no es un archivo de texto (¿un PDF, una hoja de cálculo o una imagen?)."
    try:
        text = head.decode("utf-8-sig")  # as the validator reads it: a BOM is allowed
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 1 MB boundary
            return "no está en UTF-8: guárdalo como «UTF-8» en tu editor."
        text = head[: exc.start].decode("utf-8-sig")
    for line in text.splitlines()[:200]:
        if line.strip():
            try:
                if isinstance(json.loads(line), dict):
                    return None
            except ValueError:
                continue
    return "ninguna de las primeras líneas es un objeto JSON: no parece un archivo JSONL."


EXPECTED_FORMAT = ('un ejemplo por línea, cada uno entre llaves, con los campos "pregunta" y "respuesta" '
                   '(o "instruction" y "output", o "messages")')


def validation(path: Path) -> dict:
    """Counts and problems by line (never a row's text), the lines that may hold personal data (by kind), and the
    domain checks the examples suggest."""
    from afinar.config import DataSection, DataSource
    from afinar.data.pii import KINDS, kinds_in
    from afinar.data.validate import gather

    prepared = gather(DataSection(sources=[DataSource(path=str(path))]))
    examples = prepared.train + prepared.val

    def listed(problems):
        # "duplicado exacto de /ruta/completa/datos/x.jsonl:5" → "… de la línea 5": the page names lines, not paths.
        return [{"linea": p.line, "codigo": p.code, "mensaje": p.message.replace(f"{path}:", "la línea "),
                 "arreglo": fix_for(p.code)} for p in problems[:200]]

    personal = []
    for example in sorted(examples, key=lambda e: e.line):
        kinds = sorted(KINDS[k] for k in kinds_in(example.messages))
        if kinds:
            personal.append({"linea": example.line, "tipos": kinds})
    return {"ejemplos": len(examples), "errores": listed(prepared.errors),
            "avisos": listed(prepared.warnings), "total_errores": len(prepared.errors),
            "total_avisos": len(prepared.warnings), "archivo": path.name, "datos_personales": personal,
            "comprobaciones_sugeridas": suggest_checks(examples)}


def unusable(checked: dict, name: str) -> AfinarError:
    """One sentence for a file with no usable example: what is wrong with most of its lines and what to write."""
    from collections import Counter

    from afinar.data.formats import CODES

    codes = Counter(p["codigo"] for p in checked["errores"])
    if codes:
        code, count = codes.most_common(1)[0]
        example = next(p for p in checked["errores"] if p["codigo"] == code)
        what = f"{CODES.get(code, code)} en {count} línea(s), por ejemplo la {example['linea']}: {example['mensaje']}"
    else:
        what = "no tiene ninguna línea con texto"
    return AfinarError("E017", f"no se ha guardado: ninguna línea es un ejemplo que se pueda usar ({what}).",
                       where=name, hint=f"escribe {EXPECTED_FORMAT}, y vuelve a subirlo")



async def receive_upload(request, final: Path, limit: int) -> int:
    """A file body written to a hidden temporary file beside `final` and renamed to it once complete (never half a
    file under its name); its size. E013 (nothing kept) when it is over `limit`, declared or not."""
    import os

    declared = request.headers.get("content-length", "")
    too_big = AfinarError("E013", f"el archivo ocupa más de {mb(limit)}, el límite del estudio",
                          hint="divide el archivo o arranca el estudio con --max-subida-mb")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    partial = final.with_name(f".{final.name}.subida")
    size = 0
    try:
        with open(partial, "wb") as handle:  # noqa: ASYNC230 — chunks of a local file: not worth a thread each
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_big
                handle.write(chunk)
        if not size:
            raise AfinarError("E014", "el archivo está vacío.", hint="elige el archivo otra vez: el que llegó no tiene "
                              "nada (¿se guardó vacío?)")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return size


async def receive_named_upload(request, folder: Path, fallback: str, limit: int, accepted: tuple[str, ...],
                               refuse) -> tuple[Path, str, int]:
    """An upload whose type is one of `accepted` (else `refuse(name)`, the AfinarError to raise), saved as
    FOLDER/<slug of its name>-<random><suffix> through `receive_upload`: (that path, its name as she sees it, size)."""
    name = Path(shown_name(request, fallback)).name
    suffix = Path(name).suffix.lower()
    if suffix not in accepted:
        raise refuse(name)
    folder.mkdir(parents=True, exist_ok=True)
    final = unique_path(folder, name, Path(fallback).stem, suffix)
    return final, name, await receive_upload(request, final, limit)


def shown_name(request, fallback: str) -> str:
    """The file's name as the person sees it (the page sends it URI-encoded): shown, never used as a path."""
    from urllib.parse import unquote

    return unquote(request.headers.get("x-nombre-archivo", "") or fallback)[:200]
