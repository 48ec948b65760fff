"""`afinar borradores`: documents → passages → question/answer drafts from a teacher model → a file a person reviews.

Nothing leaves the machine unless the user says so: the teacher must be on this machine (127.0.0.1, localhost)
unless `allow_remote`; with a remote teacher, passages where afinar.data.pii finds personal data are not sent at
all; with a local one they are, and their drafts carry "datos_personales" so the reviewer sees the flag.

Resumable: each passage's result is appended (and fsync'd) to `.<salida>.progreso.jsonl` as it comes; a run cut
short (Ctrl-C, a crash, the server gone) and started again with the same arguments asks only what is missing. The
drafts file is written once, at the end, atomically, merged with the drafts it already had (reviews are never
lost). Every call goes to `<salida>.registro.jsonl`: passage id, place, seconds, requests, tokens and cost; the
documents' text never reaches a log or the terminal.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from afinar.data.pii import KINDS, find_pii
from afinar.drafts.documents import Passage, expand, read_document
from afinar.drafts.store import (
    REVIEWED,
    UNREVIEWED,
    log_path,
    progress_path,
    read_drafts,
    write_drafts,
    write_reviewed,
)
from afinar.errors import AfinarError
from afinar.evaluate.judge import (
    REMOTE_FLAG,
    check_url,
    is_loopback,
    quiet_client_log,
    shown_url,
    url_host,
)

MAX_CONSECUTIVE_FAILURES = 3  # request failures in a row before the run stops (progress kept)
NEXT_STEP = ("revisa los borradores en el estudio: afinar estudio → Datos → Borradores. Solo los aceptados o "
             "corregidos entrenan.")


def check_teacher_url(url: str, allow_remote: bool) -> bool:
    """judge.check_url with the teacher's words (B009 remote without permission, B010 bad URL); True when the
    teacher is on another machine."""
    try:
        check_url(url, allow_remote)
    except AfinarError as exc:
        if exc.code == "J002":
            raise AfinarError("B010", "la URL del profesor no es válida: tiene que ser http:// o https:// con un "
                                      "servidor.", hint=exc.hint) from None
        host = url_host(url)
        raise AfinarError(
            "B009", f"el profesor está en otra máquina ({host}): los pasajes de tus documentos saldrían de este "
                    "equipo, y pueden tener datos de pacientes o de alumnos.",
            hint=f"usa un modelo en este equipo (Ollama: http://127.0.0.1:11434/v1) o, si esos documentos pueden salir "
                 f"hacia ese servidor, autorízalo con {REMOTE_FLAG} (los pasajes con posibles datos personales no se "
                 "envían)") from None
    return _is_remote(url)


def _is_remote(url: str) -> bool:
    return not is_loopback(url_host(url) or "")


def _check_options(per_passage: int, timeout: float, retries: int, price_in: float, price_out: float,
                   max_passages: int | None) -> None:
    problems = []
    if not 1 <= per_passage <= 20:
        problems.append("--por-pasaje tiene que estar entre 1 y 20")
    if timeout <= 0:
        problems.append("--tiempo-limite tiene que ser mayor que 0")
    if retries < 0:
        problems.append("--reintentos no puede ser negativo")
    if price_in < 0 or price_out < 0:
        problems.append("los precios no pueden ser negativos")
    if max_passages is not None and max_passages < 1:
        problems.append("--max-pasajes tiene que ser 1 o más")
    if problems:
        raise AfinarError("B012", "; ".join(problems) + ".")


def _pii_kinds(*texts: str | None) -> list[str]:
    return sorted({kind for text in texts if text for kind in find_pii(text)})


def _place(passage: Passage) -> dict:
    return {"archivo": passage.file, "pagina": passage.page, "seccion": passage.section}


def _make_drafts(passage: Passage, pairs: list[dict], model: str, url: str) -> list[dict]:
    out = []
    for number, pair in enumerate(pairs, start=1):
        draft = {"id": f"{passage.id}-{number}", "estado": UNREVIEWED, "pregunta": pair["pregunta"],
                 "respuesta": pair["respuesta"],
                 "fuente": {**_place(passage), "pasaje": passage.id, "texto": passage.text},
                 "profesor": {"modelo": model, "url": shown_url(url)}}
        kinds = _pii_kinds(passage.text, passage.section, pair["pregunta"], pair["respuesta"])
        if kinds:
            draft["datos_personales"] = kinds
        out.append(draft)
    return out


# --- progress -----------------------------------------------------------------------------------------------------

def _read_progress(path: Path, header: dict) -> dict[str, dict]:
    """Passage id → its entry, from an earlier run of the same command. B017 when it was another model or another
    number of questions per passage. A last line cut by a crash is ignored."""
    if not path.is_file():
        return {}
    entries: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the line being written when the run was cut
        if not isinstance(entry, dict):
            continue
        if "cabecera" in entry:
            saved = entry["cabecera"]
            if saved != header:
                raise AfinarError(
                    "B017", f"hay un progreso a medias de otra orden (modelo {saved.get('modelo')!r}, "
                            f"{saved.get('por_pasaje')} por pasaje; ahora {header['modelo']!r}, "
                            f"{header['por_pasaje']}).", where=str(path),
                    hint="repite la orden con aquel modelo y --por-pasaje para terminarla, o borra ese archivo para "
                         "empezar de cero")
        elif isinstance(entry.get("pasaje"), str):
            entries[entry["pasaje"]] = entry
    return entries


class _ProgressFile:
    """Append-only, one line per finished passage, flushed and fsync'd: what a cut run leaves is whole lines."""

    def __init__(self, path: Path, header: dict):
        new = not path.is_file() or path.stat().st_size == 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", encoding="utf-8")
        if new:
            self.write({"cabecera": header})

    def write(self, entry: dict) -> None:
        self.handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


# --- the command --------------------------------------------------------------------------------------------------

def drafts(documents: list[str], teacher: str, model: str, output: str, *, per_passage: int = 3,
           allow_remote: bool = False, timeout: float = 120.0, retries: int = 3, price_in: float = 0.0,
           price_out: float = 0.0, max_passages: int | None = None, progress: bool = True) -> dict:
    """Write question/answer drafts of `documents` (files or folders) asked of `model` at `teacher` (an
    OpenAI-compatible URL, with or without /v1) to `output`, and return the summary (see print_summary).

    Raises AfinarError before asking anything for a document that cannot be read (B001–B008), a remote teacher
    without `allow_remote` (B009), a bad URL (B010), bad options (B012), a broken drafts file at `output` (B013) or
    another command's progress (B017); B016 when the teacher stops answering (what was done is kept)."""
    from tqdm.auto import tqdm

    from afinar.drafts.teacher import Teacher

    _check_options(per_passage, timeout, retries, price_in, price_out, max_passages)
    remote = check_teacher_url(teacher, allow_remote)
    output = Path(output)
    paths = expand(documents)
    if output.suffix.lower() != ".jsonl":
        raise AfinarError("B012", "la salida tiene que ser un archivo .jsonl.", where=str(output))
    if any(p.resolve() == output.resolve() for p in paths):
        raise AfinarError("B012", "la salida no puede ser uno de los documentos.", where=str(output))
    existing = read_drafts(output) if output.exists() else []
    started = time.monotonic()

    # 1. Every document read before anything is sent: a bad one stops the run here.
    summary: dict = {"documents": [], "pages_without_text": [], "passages": 0, "already_done": 0, "sent": 0,
                     "skipped_pii": [], "flagged_pii": 0, "skipped_no_pairs": [], "errors": [], "new_drafts": 0, "kept_drafts": 0,
                     "kept_reviewed": 0, "total_drafts": 0, "prompt_tokens": 0, "completion_tokens": 0, "requests": 0,
                     "cost": 0.0, "seconds": 0.0, "remote": remote, "priced": bool(price_in or price_out),
                     "output": str(output), "log": str(log_path(output)), "progress_kept": None}
    passages: list[Passage] = []
    seen: set[str] = set()
    for path in paths:
        document = read_document(path)
        summary["documents"].append(document.file)
        if document.pages_without_text:
            summary["pages_without_text"].append({"archivo": document.file, "paginas": document.pages_without_text})
        for passage in document.passages:
            if passage.id not in seen:  # the same document named twice
                seen.add(passage.id)
                passages.append(passage)
    if max_passages is not None:
        passages = passages[:max_passages]
    summary["passages"] = len(passages)

    # 2. What was done before: drafts already in the output, and the progress of a run that was cut.
    header = {"modelo": model, "por_pasaje": per_passage}
    progress_file = progress_path(output)
    done = _read_progress(progress_file, header)
    in_output = {d["fuente"].get("pasaje") for d in existing if isinstance(d.get("fuente"), dict)}

    # 3. Personal data: a remote teacher never gets a passage that may hold it.
    to_ask: list[Passage] = []
    for passage in passages:
        if passage.id in in_output or passage.id in done:
            summary["already_done"] += 1
            continue
        kinds = _pii_kinds(passage.text, passage.section)
        if remote and kinds:
            summary["skipped_pii"].append({**_place(passage), "tipos": kinds})
            continue
        summary["flagged_pii"] += bool(kinds)  # sent to a teacher on this machine; its drafts carry the flag
        to_ask.append(passage)

    # 4. Ask, one passage at a time, each result saved as it comes.
    client = Teacher(teacher, model, timeout=timeout, retries=retries) if to_ask else None  # B011 before any file
    writer = _ProgressFile(progress_file, header) if to_ask else None
    bar = tqdm(total=len(to_ask), desc="Borradores: preguntando al profesor", unit="pasaje", disable=not progress,
               dynamic_ncols=True)
    in_a_row = 0
    with quiet_client_log():  # the openai client must not log the documents' text (some versions do, at DEBUG)
        try:
            with open(log_path(output), "a", encoding="utf-8") if to_ask else _Nothing() as call_log:
                for passage in to_ask:
                    reply = client.ask(passage.text, per_passage, passage.section)
                    prompt_tokens, completion_tokens = reply.prompt_tokens or 0, reply.completion_tokens or 0
                    cost = (prompt_tokens * price_in + completion_tokens * price_out) / 1e6
                    summary["sent"] += 1
                    summary["requests"] += reply.requests
                    summary["prompt_tokens"] += prompt_tokens
                    summary["completion_tokens"] += completion_tokens
                    summary["cost"] += cost
                    call_log.write(json.dumps({
                        "fecha": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pasaje": passage.id,
                        "archivo": passage.file, "pagina": passage.page, "modelo": model,
                        "segundos": round(reply.seconds, 3), "peticiones": reply.requests,
                        "tokens_entrada": reply.prompt_tokens, "tokens_salida": reply.completion_tokens,
                        "coste": round(cost, 6), "resultado": reply.kind or "ok", "borradores": len(reply.pairs),
                    }, ensure_ascii=False) + "\n")
                    call_log.flush()
                    if reply.failed:
                        summary["errors"].append({**_place(passage), "motivo": reply.reason})
                        in_a_row += 1
                        if in_a_row >= MAX_CONSECUTIVE_FAILURES:
                            raise AfinarError(
                                "B016",
                                f"el profesor falló {in_a_row} veces seguidas ({reply.reason}); se para aquí. Lo hecho "
                                f"queda guardado ({summary['sent'] - in_a_row} pasajes en esta vuelta).",
                                where=shown_url(teacher),
                                hint="comprueba que el servidor está en marcha y el nombre del modelo, y vuelve a "
                                     "lanzar la misma orden: seguirá donde se quedó")
                        bar.update(1)
                        continue
                    in_a_row = 0
                    if reply.pairs:
                        entry = {"pasaje": passage.id, "estado": "hecho",
                                 "borradores": _make_drafts(passage, reply.pairs, model, teacher)}
                    else:
                        entry = {"pasaje": passage.id, "estado": "sin_pares", "motivo": reply.reason}
                        summary["skipped_no_pairs"].append({**_place(passage), "motivo": reply.reason})
                    writer.write(entry)
                    done[passage.id] = entry
                    bar.update(1)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if client is not None:
                client.close()

    # 5. The drafts file, once, atomically: what it had (read again: a review may have happened meanwhile) + new.
    current = read_drafts(output) if output.exists() else []
    have = {d["id"] for d in current}
    new = [d for entry in done.values() for d in entry.get("borradores", []) if d["id"] not in have]
    if current or new:
        write_drafts(output, current + new)
    if summary["errors"]:
        summary["progress_kept"] = str(progress_file)  # the failed passages are asked again next time
    else:
        progress_file.unlink(missing_ok=True)
    summary["new_drafts"] = len(new)
    summary["kept_drafts"] = len(current)
    summary["kept_reviewed"] = sum(d["estado"] in REVIEWED for d in current)
    summary["total_drafts"] = len(current) + len(new)
    summary["cost"] = round(summary["cost"], 6)
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def drafts_command(documents: list[str] | None = None, teacher: str | None = None, model: str | None = None,
                   output: str | None = None, reviewed: str | None = None, **options) -> int:
    """`afinar borradores DOCUMENTOS… --profesor URL --modelo NOMBRE` (drafts; the other options are its parameters,
    the drafts go to borradores.jsonl unless `output`), or `afinar borradores --exportar-revisados BORRADORES
    --salida DATOS.jsonl`: the accepted or corrected drafts of `reviewed` as training examples (exit 1: none yet)."""
    if reviewed:
        if documents or not output:
            raise AfinarError("B012", "para exportar los revisados: afinar borradores --exportar-revisados "
                                      "BORRADORES.jsonl --salida DATOS.jsonl (sin documentos)")
        count = write_reviewed(reviewed, output)
        if not count:
            print("No hay borradores revisados todavía (aceptados o corregidos): revísalos en el estudio "
                  "(afinar estudio → Datos → Borradores). No se escribió nada.")
            return 1
        print(f"✓ {count} ejemplos revisados en {output} (pregunta/respuesta): ya puedes entrenar con ellos")
        return 0
    if not documents or not teacher or not model:
        raise AfinarError("B012", "indica los documentos, el profesor y su modelo: afinar borradores DOCUMENTOS… "
                                  "--profesor URL --modelo NOMBRE",
                          hint="por ejemplo, con Ollama: --profesor http://127.0.0.1:11434/v1 --modelo qwen2.5:7b")
    try:
        summary = drafts(documents, teacher, model, output or "borradores.jsonl", **options)
    except KeyboardInterrupt:
        print("\ninterrumpido: lo hecho queda guardado; vuelve a lanzar la misma orden para continuar", file=sys.stderr)
        return 130
    print_summary(summary)
    return 0


def drafts_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("documents", nargs="*", metavar="DOCUMENTOS",
                   help="archivos .pdf, .docx, .txt, .md o carpetas")
    p.add_argument("--profesor", dest="teacher", metavar="URL",
                   help="servidor compatible con OpenAI que escribe los borradores "
                   "(Ollama: http://127.0.0.1:11434/v1, llama.cpp, afinar serve)")
    p.add_argument("--modelo", dest="model", metavar="NOMBRE",
                   help="modelo del profesor (p. ej. qwen2.5:7b en Ollama)")
    p.add_argument("--salida", dest="output",
                   help="archivo de borradores (por defecto borradores.jsonl); con --exportar-revisados, "
                   "el JSONL de entrenamiento")
    p.add_argument("--por-pasaje", dest="per_passage", type=int,
                   help="preguntas por pasaje (por defecto 3)")
    p.add_argument("--permitir-remoto", dest="allow_remote", action="store_true",
                   help="deja usar un profesor que no está en este equipo: los pasajes SALEN del equipo (los que "
                   "tienen posibles datos personales no se envían)")
    p.add_argument("--tiempo-limite", dest="timeout", type=float,
                   help="segundos máximos por llamada (por defecto 120)")
    p.add_argument("--reintentos", dest="retries", type=int,
                   help="reintentos de una llamada fallida (por defecto 3)")
    p.add_argument("--precio-entrada", dest="price_in", type=float,
                   help="precio por millón de tokens de entrada (coste)")
    p.add_argument("--precio-salida", dest="price_out", type=float,
                   help="precio por millón de tokens de salida (coste)")
    p.add_argument("--max-pasajes", dest="max_passages", type=int,
                   help="solo los N primeros pasajes (para probar)")
    p.add_argument("--exportar-revisados", dest="reviewed", metavar="BORRADORES",
                   help="escribe en --salida los borradores aceptados o corregidos como ejemplos pregunta/respuesta "
                   "para entrenar")
    p.add_argument("--sin-progreso", dest="progress", action="store_false",
                   help="sin barra de progreso")


class _Nothing:
    """A stand-in for the call log when there is nothing to ask."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- the summary --------------------------------------------------------------------------------------------------

def _where(item: dict) -> str:
    return item["archivo"] + (f", pág. {item['pagina']}" if item.get("pagina") is not None else "") + (
        f", «{item['seccion']}»" if item.get("seccion") else "")


def _listed(items: list[dict], extra, limit: int = 10) -> list[str]:
    lines = [f"    - {_where(item)}{extra(item)}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    … y {len(items) - limit} más")
    return lines


def _n(number: float, decimals: int = 0) -> str:
    """Spanish digits: 7.141 tokens, 4,9 s."""
    return f"{number:,.{decimals}f}".replace(",", " ").replace(".", ",").replace(" ", ".")


def summary_lines(summary: dict) -> list[str]:
    """The summary in Spanish, for the terminal: counts and places, never the documents' text."""
    lines = [f"Documentos: {len(summary['documents'])} ({', '.join(summary['documents'])})"]
    for item in summary["pages_without_text"]:
        pages = ", ".join(map(str, item["paginas"]))
        lines.append(f"  {item['archivo']}: páginas sin texto (¿escaneadas?), no se usan: {pages}")
    lines.append(f"Pasajes: {summary['passages']} · ya hechos antes: {summary['already_done']} · "
                 f"enviados al profesor: {summary['sent']}")
    if summary["skipped_pii"]:
        lines.append(f"No enviados por posibles datos personales (el profesor está en otra máquina): "
                     f"{len(summary['skipped_pii'])}")
        lines += _listed(summary["skipped_pii"], lambda i: " — " + ", ".join(KINDS.get(k, k) for k in i["tipos"]))
    if summary["flagged_pii"]:
        lines.append(f"Con posibles datos personales: {summary['flagged_pii']} pasajes (enviados al profesor de este "
                     "equipo; sus borradores llevan la marca «datos_personales» para la revisión)")
    if summary["skipped_no_pairs"]:
        lines.append(f"Sin preguntas (el profesor no devolvió preguntas y respuestas): {len(summary['skipped_no_pairs'])}")
        lines += _listed(summary["skipped_no_pairs"], lambda i: f" — {i['motivo']}")
        if not summary["new_drafts"] and not summary["kept_drafts"]:
            lines.append("  El profesor no escribió preguntas en ningún pasaje: prueba con un modelo mayor "
                         "(por ejemplo qwen2.5:7b en Ollama).")
    if summary["errors"]:
        lines.append(f"Con error (se reintentan al volver a lanzar la misma orden): {len(summary['errors'])}")
        lines += _listed(summary["errors"], lambda i: f" — {i['motivo']}")
    kept = ""
    if summary["kept_drafts"]:
        kept = (f" (se conservan los {summary['kept_drafts']} que ya había, {summary['kept_reviewed']} de ellos "
                "revisados; solo se añaden los nuevos)")
    lines.append(f"Borradores nuevos: {summary['new_drafts']} · en total: {summary['total_drafts']}{kept}")
    tokens = summary["prompt_tokens"] + summary["completion_tokens"]
    if summary["priced"]:
        cost = f"{summary['cost']:.4f} (según los precios indicados)"
    elif summary["remote"]:
        cost = "sin calcular (indica --precio-entrada y --precio-salida, por millón de tokens)"
    else:
        cost = "0 (local: sin coste)"
    lines.append(f"Tokens: {_n(tokens)} ({_n(summary['prompt_tokens'])} de entrada, {_n(summary['completion_tokens'])} "
                 f"de salida) · peticiones: {summary['requests']} · {_n(summary['seconds'], 1)} s · coste: {cost}")
    lines.append(f"Archivo: {summary['output']} · registro de llamadas: {summary['log']}")
    if summary["progress_kept"]:
        lines.append(f"Progreso guardado en {summary['progress_kept']}: vuelve a lanzar la misma orden para los "
                     "pasajes con error.")
    if summary["total_drafts"]:
        lines.append("Siguiente paso: " + NEXT_STEP)
    return lines


def print_summary(summary: dict) -> None:
    print("\n".join(summary_lines(summary)))
