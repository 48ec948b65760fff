"""Drafts from documents, in the Datos step: documents uploaded to <carpeta>/documentos/, `afinar borradores …` run as
a job (the same command the page shows; one job at a time, progress from its bar, cancel), and the review queue of a
drafts file in <carpeta>/borradores/: accept, correct, discard, undo, with the source passage beside each draft. Only
the reviewed ones (aceptado, corregido) become a dataset, written by afinar.drafts.store and checked as an upload.

Error codes: E049 (not a document afinar reads), E051 (no such document), E052 (the teacher's address is not valid),
E053 (a teacher outside this machine without her permission), E054 (no such drafts file), E055 (the job's form is
incomplete), E056 (the drafts are being written now: review when the job ends), E057 (nothing reviewed to use yet),
E058 (a correction without its question or answer). afinar.drafts.store's own B013 (not a drafts file), B014 (no
draft with that id: 404) and B015 (a decision it refuses) come through as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from afinar.drafts.documents import DOCUMENT_SUFFIXES
from afinar.errors import AfinarError
from afinar.evaluate.judge import is_loopback, url_host
from afinar.studio.checks import receive_named_upload, unusable, validation
from afinar.studio.jobs import JobManager
from afinar.studio.workspace import Workspace, checked_name, slug

DOCUMENT_UPLOAD_PATH = "/api/documentos"
DEFAULT_TEACHER = "http://127.0.0.1:11434/v1"  # Ollama on this machine
NOT_FOUND = {"E051", "E054", "B014"}  # B014: afinar.drafts.store, no draft with that id
CONFLICT = {"E056"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DraftJobForm(Strict):
    documentos: list[str] = Field(min_length=1, max_length=200)
    profesor_url: str = Field(default=DEFAULT_TEACHER, max_length=500)
    modelo: str = Field(max_length=200)
    permitir_remoto: bool = False  # she allowed a teacher outside this machine (the passages leave it)
    por_pasaje: int = Field(default=3, ge=1, le=10)
    max_pasajes: int | None = Field(default=None, ge=1, le=100_000)
    nombre: str | None = Field(default=None, max_length=64)


class ReviewForm(Strict):
    borrador: str = Field(max_length=200)
    decision: Literal["aceptar", "corregir", "descartar", "deshacer"]
    pregunta: str | None = Field(default=None, max_length=100_000)
    respuesta: str | None = Field(default=None, max_length=100_000)


def register(app: FastAPI, workspace: Workspace, options, jobs: JobManager) -> None:
    documents, drafts = workspace.documents, workspace.drafts

    @app.post(DOCUMENT_UPLOAD_PATH)
    async def upload_document(request: Request):
        final, name, size = await receive_named_upload(request, documents, "documento.txt", options.max_upload_bytes,
                                                       DOCUMENT_SUFFIXES, _not_a_document)
        try:
            passages = await run_in_threadpool(_passages, final)
        except BaseException:
            final.unlink(missing_ok=True)  # unreadable (a scanned PDF, a damaged file…): not kept
            raise
        return {"id": final.name, "nombre": name, "bytes": size, "pasajes": passages}

    @app.get("/api/documentos")
    def document_list():
        files = sorted((p for p in documents.glob("*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime, reverse=True) if documents.is_dir() else []
        return {"documentos": [{"id": p.name, "bytes": p.stat().st_size} for p in files]}

    @app.post("/api/borradores/trabajo", status_code=202)
    def start_drafts(form: DraftJobForm):
        jobs.check_free()
        name, argv = drafts_argv(workspace, form)
        return jobs.start("borradores", name, argv)

    @app.get("/api/borradores")
    async def draft_files():
        from afinar.drafts.store import counts, drafts_files

        files = drafts_files(drafts) if drafts.is_dir() else []
        listed = []
        for path in files:
            try:
                recount = await run_in_threadpool(counts, path)
            except AfinarError:
                recount = None
            listed.append({"id": path.stem, "recuento": recount, "escribiendose": _being_written(jobs, path.stem)})
        return {"borradores": listed, "profesor": DEFAULT_TEACHER}

    @app.get("/api/borradores/{name}")
    async def draft_queue(name: str):
        from afinar.drafts.store import counts, read_drafts

        path = _drafts_path(workspace, name)
        items = await run_in_threadpool(read_drafts, path)
        return {"id": name, "borradores": items, "recuento": await run_in_threadpool(counts, path),
                "escribiendose": _being_written(jobs, name)}

    @app.post("/api/borradores/{name}/revisar")
    async def review_draft(name: str, form: ReviewForm):
        from afinar.drafts.store import counts, review

        path = _drafts_path(workspace, name)
        _not_while_written(jobs, name)
        if form.decision == "corregir" and not ((form.pregunta or "").strip() and (form.respuesta or "").strip()):
            raise AfinarError("E058", "una corrección necesita la pregunta y la respuesta.",
                              hint="escribe las dos o pulsa «Aceptar» si el borrador ya está bien")
        texts = {"pregunta": form.pregunta, "respuesta": form.respuesta} if form.decision == "corregir" else {}
        draft = await run_in_threadpool(lambda: review(path, form.borrador, form.decision, **texts))
        return {"borrador": draft, "recuento": await run_in_threadpool(counts, path)}

    @app.post("/api/borradores/{name}/usar")
    async def use_reviewed(name: str):
        path = _drafts_path(workspace, name)
        _not_while_written(jobs, name)
        return await run_in_threadpool(_use_reviewed, path, workspace)


def _not_a_document(name: str) -> AfinarError:
    return AfinarError("E049", f"«{name}» no es un documento que afinar lea.",
                       hint="sube un PDF, un documento de Word (.docx), un .txt o un .md")


def _passages(path: Path) -> int:
    from afinar.drafts.documents import read_passages

    return sum(1 for _ in read_passages(path))


def _drafts_path(workspace: Workspace, name: str) -> Path:
    path = workspace.drafts / f"{checked_name(name, 'borradores')}.jsonl"
    if not path.is_file():
        raise AfinarError("E054", "no existe ese archivo de borradores en el estudio.", where=name)
    return path


def _being_written(jobs: JobManager, name: str) -> bool:
    busy = jobs.current()
    return bool(busy and busy.get("tipo") == "borradores" and busy.get("ejecucion") == name)


def _not_while_written(jobs: JobManager, name: str) -> None:
    if _being_written(jobs, name):
        raise AfinarError("E056", "se están escribiendo borradores en este archivo ahora mismo.",
                          hint="revísalos cuando termine la tarea (o cancélala en el panel de arriba)")


def check_teacher(url: str, allowed: bool) -> None:
    """The teacher model's address: http(s) with a server; outside this machine only with her permission (the
    passages of her documents are sent to it; those with personal data never are)."""
    host = url_host(url)  # the same rules as `afinar borradores` (and the judge): http(s), a server, a valid port
    if not host:
        raise AfinarError("E052", "la dirección del modelo profesor no es válida: tiene que empezar por http:// o "
                          "https:// y nombrar un servidor.",
                          hint=f"por ejemplo {DEFAULT_TEACHER} (Ollama en este equipo)")
    if not allowed and not is_loopback(host):
        raise AfinarError("E053", f"el modelo profesor está en otra máquina ({host}): los pasajes de tus documentos "
                          "saldrían de este equipo.",
                          hint="usa un modelo de este equipo (127.0.0.1, localhost) o, si esos textos pueden salir, "
                               "marca «Permitir un servidor fuera de este equipo»")


def drafts_argv(workspace: Workspace, form: DraftJobForm) -> tuple[str, list[str]]:
    """(the drafts file's name, `afinar borradores DOCUMENTOS… --profesor URL --modelo M --salida borradores/N.jsonl
    --por-pasaje K [--max-pasajes N] [--permitir-remoto]`), paths relative to the studio's folder. A name that exists
    already continues that file (the command resumes where it stopped)."""
    if not form.modelo.strip():
        raise AfinarError("E055", "falta el nombre del modelo profesor.", hint="por ejemplo qwen2.5:7b en Ollama")
    check_teacher(form.profesor_url, form.permitir_remoto)
    paths = []
    for document in form.documentos:
        path = workspace.documents / checked_name(document, "documento")
        if not path.is_file():
            raise AfinarError("E051", "ese documento ya no está en el estudio: vuelve a subirlo.", where=document)
        paths.append(str(path.relative_to(workspace.root)))
    name = checked_name(form.nombre, "borradores") if form.nombre else \
        slug(Path(form.documentos[0]).stem.rsplit("-", 1)[0], "borradores")
    argv = ["borradores", *paths, "--profesor", form.profesor_url.strip(), "--modelo", form.modelo.strip(),
            "--salida", str((workspace.drafts / f"{name}.jsonl").relative_to(workspace.root)),
            "--por-pasaje", str(form.por_pasaje)]
    if form.max_pasajes:
        argv += ["--max-pasajes", str(form.max_pasajes)]
    if form.permitir_remoto:
        argv.append("--permitir-remoto")
    workspace.drafts.mkdir(parents=True, exist_ok=True)
    return name, argv


def _use_reviewed(path: Path, workspace: Workspace) -> dict:
    """The accepted and corrected drafts → a new workspace dataset (written beside it and renamed), checked like an
    upload. Drafts not reviewed, or discarded, never go in."""
    import os

    from afinar.drafts.store import counts, write_reviewed

    final = workspace.new_dataset_path(f"{path.stem}-revisados")
    partial = final.with_name(f".{final.name}.escribiendo")  # not *.jsonl: never listed
    try:
        written = write_reviewed(path, partial)
        if not written:
            raise AfinarError("E057", "todavía no has aceptado ni corregido ningún borrador: no hay nada que usar.",
                              hint="revisa los borradores (Aceptar o Corregir) y vuelve a pulsar")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    checked = validation(final)
    if not checked["ejemplos"]:
        final.unlink(missing_ok=True)
        raise unusable(checked, path.stem)
    return {"id": final.stem, "ejemplos": written, "recuento": counts(path), "validacion": checked}
