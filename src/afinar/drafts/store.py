"""The drafts file: one JSON object per line, written by `afinar borradores`, reviewed by a person in the studio.

    {"id": "<pasaje>-1", "estado": "sin revisar", "pregunta": "...", "respuesta": "...",
     "fuente": {"archivo": "protocolo.pdf", "pagina": 3, "seccion": null, "pasaje": "<id del pasaje>", "texto": "..."},
     "profesor": {"modelo": "qwen2.5:7b", "url": "http://127.0.0.1:11434/v1"},
     "datos_personales": ["telefono"]}            # only when the passage or the draft may hold personal data

States: "sin revisar" → "aceptado" | "corregido" (the reviewer edited it; the teacher's text is kept under
"original") | "descartado"; "deshacer" brings any of them back to "sin revisar" with the teacher's text. Only
aceptado and corregido drafts are training examples (reviewed_examples, write_reviewed).

Every change rewrites the whole file through a temporary sibling and a rename (afinar.atomic): an interrupted
write leaves the previous file, never half of one.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal

from afinar.atomic import atomic_open
from afinar.errors import AfinarError

UNREVIEWED, ACCEPTED, CORRECTED, DISCARDED = "sin revisar", "aceptado", "corregido", "descartado"
STATES = (UNREVIEWED, ACCEPTED, CORRECTED, DISCARDED)
REVIEWED = (ACCEPTED, CORRECTED)  # the states that train
DECISIONS = ("aceptar", "corregir", "descartar", "deshacer")

_lock = threading.Lock()  # one review at a time in a process (the studio serves requests in threads)


def progress_path(output: str | Path) -> Path:
    """Where a run keeps the passages already done (hidden: it is not a drafts file)."""
    output = Path(output)
    return output.with_name(f".{output.stem}.progreso.jsonl")


def log_path(output: str | Path) -> Path:
    """The call log beside the drafts file (ids, places, tokens, cost; no text)."""
    output = Path(output)
    return output.with_name(f"{output.stem}{LOG_SUFFIX}")


LOG_SUFFIX = ".registro.jsonl"


def drafts_files(folder: str | Path) -> list[Path]:
    """The drafts files of a folder, newest first: neither a run's progress file nor its call log."""
    folder = Path(folder)
    files = [p for p in folder.glob("*.jsonl") if not p.name.startswith(".") and not p.name.endswith(LOG_SUFFIX)]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def read_drafts(path: str | Path) -> list[dict]:
    """Every draft of the file, in order. B013 when the file is missing or a line is not a draft (the line number
    is named, never its text)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AfinarError("B013", "no existe el archivo de borradores.", where=str(path),
                          hint="créalo con: afinar borradores DOCUMENTOS --profesor URL --modelo NOMBRE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AfinarError("B013", f"no se pudo leer el archivo de borradores ({type(exc).__name__}).",
                          where=str(path)) from None
    drafts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            draft = json.loads(line)
        except ValueError:
            draft = None
        if not (isinstance(draft, dict) and isinstance(draft.get("id"), str) and draft.get("estado") in STATES
                and isinstance(draft.get("pregunta"), str) and isinstance(draft.get("respuesta"), str)):
            raise AfinarError("B013", "la línea no es un borrador (hace falta un objeto JSON con id, estado, pregunta "
                                      "y respuesta).", where=f"{path}:{number}",
                              hint="no edites el archivo a mano; revisa los borradores en el estudio")
        drafts.append(draft)
    return drafts


def write_drafts(path: str | Path, drafts: list[dict]) -> None:
    """The whole file, atomically (temporary sibling + fsync + rename)."""
    with atomic_open(path) as handle:
        for draft in drafts:
            handle.write(json.dumps(draft, ensure_ascii=False) + "\n")


def review(path: str | Path, draft_id: str, decision: Literal["aceptar", "corregir", "descartar", "deshacer"],
           pregunta: str | None = None, respuesta: str | None = None) -> dict:
    """Record a reviewer's decision on one draft and return the draft as saved.

    aceptar: the draft trains as it is ("aceptado"; "corregido" if it had been edited before). corregir: the new
    pregunta and/or respuesta replace the teacher's, which is kept under "original" ("corregido"; back to
    "aceptado" if the text ends up equal to the teacher's). descartar: never trains. deshacer: back to "sin revisar"
    with the teacher's text."""
    if decision not in DECISIONS:
        raise AfinarError("B015", f"decisión desconocida «{decision}»: usa {', '.join(DECISIONS)}.")
    if decision == "corregir":
        if pregunta is None and respuesta is None:
            raise AfinarError("B015", "para corregir un borrador hace falta la pregunta o la respuesta nueva.")
        for name, value in (("pregunta", pregunta), ("respuesta", respuesta)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise AfinarError("B015", f"la {name} corregida no puede quedar vacía: si el borrador no sirve, "
                                          "descártalo.")
    with _lock:
        drafts = read_drafts(path)
        draft = next((d for d in drafts if d["id"] == draft_id), None)
        if draft is None:
            raise AfinarError("B014", f"no hay ningún borrador con el id «{draft_id}».", where=str(path),
                              hint="quizá se volvió a generar el archivo: recarga la lista de borradores")
        original = draft.get("original")
        if decision == "aceptar":
            draft["estado"] = CORRECTED if original else ACCEPTED
        elif decision == "descartar":
            draft["estado"] = DISCARDED
        elif decision == "deshacer":
            if original:
                draft["pregunta"], draft["respuesta"] = original["pregunta"], original["respuesta"]
                del draft["original"]
            draft["estado"] = UNREVIEWED
        else:
            teacher = original or {"pregunta": draft["pregunta"], "respuesta": draft["respuesta"]}
            if pregunta is not None:
                draft["pregunta"] = pregunta.strip()
            if respuesta is not None:
                draft["respuesta"] = respuesta.strip()
            if draft["pregunta"] == teacher["pregunta"] and draft["respuesta"] == teacher["respuesta"]:
                draft.pop("original", None)
                draft["estado"] = ACCEPTED
            else:
                draft["original"] = teacher
                draft["estado"] = CORRECTED
        write_drafts(path, drafts)
        return draft


def counts(path: str | Path) -> dict:
    """Drafts per state (every state present, 0 included) and "total"."""
    out = {state: 0 for state in STATES}
    drafts = read_drafts(path)
    for draft in drafts:
        out[draft["estado"]] += 1
    out["total"] = len(drafts)
    return out


def reviewed_examples(path: str | Path) -> list[dict]:
    """{"pregunta", "respuesta"} of the drafts a person accepted or corrected, in file order."""
    return [{"pregunta": d["pregunta"], "respuesta": d["respuesta"]}
            for d in read_drafts(path) if d["estado"] in REVIEWED]


def write_reviewed(path: str | Path, output: str | Path) -> int:
    """The reviewed drafts of `path` as a training JSONL at `output` ({"pregunta", "respuesta"} per line), written
    atomically; returns how many. Nothing is written when there are none (0)."""
    if Path(output).resolve() == Path(path).resolve():
        raise AfinarError("B012", "la salida no puede ser el mismo archivo de borradores.", where=str(output))
    examples = reviewed_examples(path)
    if not examples:
        return 0
    with atomic_open(output) as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")
    return len(examples)
