"""The studio's HTTP side: the page, its JSON API and the live events, behind one guard.

The guard (every request): `Host` must be a loopback name when bound to loopback (DNS rebinding); a browser `Origin`
must be the studio itself; the per-launch token must come with the request (the HttpOnly same-site cookie the page
gets when opened with ?token=…, or the X-Afinar-Token header); a request that changes something (POST) must carry the
header (a cookie alone never does: no cross-site form can); bodies are read up to a limit (uploads have their own,
written to a temporary file beside the final one and renamed: nothing half-written). GET never changes state.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from afinar import __version__
from afinar.atomic import atomic_write_text
from afinar.errors import AfinarError
from afinar.evaluate.judge import check_url
from afinar.evaluate.report import what_it_takes
from afinar.hardware import int8_cpu_features
from afinar.inference.server import LOOPBACK, foreign_origin, request_hostname
from afinar.runs import EVAL_DIR, EXPORT_DIR, EXPORT_SUMMARY, RECIPE, RUN_INFO
from afinar.studio import cards, data_api, review
from afinar.studio.checks import (
    EXPECTED_FORMAT,
    not_jsonl,
    receive_upload,
    shown_name,
    unusable,
    validation,
)
from afinar.studio.data_api import TABLE_UPLOAD_PATH
from afinar.studio.events import job_events
from afinar.studio.jobs import (
    JobConflict,
    JobManager,
    command_line,
    error_of,
    log_lines,
    tail,
)
from afinar.studio.launch import COOKIE_DAYS
from afinar.studio.review import DOCUMENT_UPLOAD_PATH
from afinar.studio.settings import (
    BASES,
    CHECKS,
    EMBEDDED_BASES,
    EXPORT_FORMATS,
    PRESETS,
    SHIPPED_DATASETS,
    build_recipe,
    export_usage,
)
from afinar.studio.workspace import (
    Workspace,
    read_json,
    run_outputs,
    run_summary,
)
from afinar.training import read_metrics

TOKEN_HEADER = "x-afinar-token"
MAX_JSON_BODY = 256 * 1024
UPLOAD_PATH = "/api/datos"
# Raw file bodies (read in chunks up to the upload limit, not the JSON one): JSONL, spreadsheets, documents.
UPLOAD_PATHS = {UPLOAD_PATH, TABLE_UPLOAD_PATH, DOCUMENT_UPLOAD_PATH}
NOT_FOUND_CODES = {"E011", "E012", "E022", "E030", "E033", "E034", *data_api.NOT_FOUND, *review.NOT_FOUND}
FORBIDDEN_CODES = {"E036"}
CONFLICT_CODES = {*data_api.CONFLICT, *review.CONFLICT}


@dataclass
class StudioOptions:
    token: str
    port: int = 7860
    host: str = "127.0.0.1"
    max_upload_bytes: int = 50 * 2**20
    python: str = sys.executable  # the interpreter jobs run with (this one: same install, same afinar)
    job_env: dict = field(default_factory=dict)

    @property
    def cookie(self) -> str:
        return f"afinar_estudio_{self.port}"  # cookies ignore the port: two studios must not share one

    @property
    def allowed_hosts(self) -> set[str] | None:
        return LOOPBACK | {self.host} if self.host in LOOPBACK else None


def _error_body(code: str | None, message: str, where: str | None = None, hint: str | None = None) -> dict:
    return {"error": {"codigo": code, "mensaje": message, "donde": where, "sugerencia": hint}}


def _json(status: int, code: str, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse(_error_body(code, message, hint=hint), status_code=status)


class Guard:
    """Pure ASGI (not BaseHTTPMiddleware): it must not buffer the event stream nor the uploads."""

    def __init__(self, app, options: StudioOptions):
        self.app, self.options = app, options

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        allowed = self.options.allowed_hosts
        refusal = None
        if allowed is not None and request_hostname(host) not in allowed:
            refusal = _json(403, "E002", "nombre de equipo no permitido en la cabecera Host: abre el estudio con la "
                            "dirección que imprimió (http://127.0.0.1:…)")
        elif foreign_origin(headers.get("origin"), host, []):
            refusal = _json(403, "E003", "una página de otro sitio no puede usar el estudio")
        elif not self._authorized(scope, headers):
            if scope["path"] == "/" and scope["method"] == "GET":
                refusal = HTMLResponse(UNAUTHORIZED_PAGE, status_code=401)
            else:
                refusal = _json(401, "E001", "falta el token del estudio o no es válido",
                                "abre la dirección con ?token=… que imprimió «afinar estudio»")
        elif scope["method"] not in ("GET", "HEAD") and not self._token_ok(headers.get(TOKEN_HEADER, "")):
            refusal = _json(403, "E004", "una acción necesita la cabecera X-Afinar-Token (la pone la página)")
        if refusal is not None:
            return await refusal(scope, receive, send)
        if scope["method"] == "POST" and scope["path"] not in UPLOAD_PATHS:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_JSON_BODY:
                return await _json(413, "E005", f"la petición ocupa más de {MAX_JSON_BODY // 1024} KB")(scope, receive, send)
            body, more = bytearray(), True
            while more:  # read only up to the limit, also when the size is not declared (chunked)
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_JSON_BODY:
                    return await _json(413, "E005", f"la petición ocupa más de {MAX_JSON_BODY // 1024} KB")(scope, receive, send)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)

    def _token_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.options.token.encode())

    def _authorized(self, scope, headers: dict) -> bool:
        if self._token_ok(headers.get(TOKEN_HEADER, "")):
            return True
        cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
        if self._token_ok(cookies.get(self.options.cookie, "")):
            return True
        if scope["path"] == "/" and scope["method"] == "GET":  # the link the command printed
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return self._token_ok((query.get("token") or [""])[0])
        return False


UNAUTHORIZED_PAGE = """<!doctype html><html lang=es><meta charset=utf-8><title>afinar estudio</title>
<body style="font:17px/1.5 system-ui;max-width:40em;margin:3em auto"><h1>Este navegador no tiene la llave del estudio</h1>
<p>Por seguridad, el estudio solo se abre en el navegador que recibió su llave (una contraseña larga que el estudio
crea para su carpeta). Para volver a entrar:</p>
<ul><li>Abre el <b>acceso directo «afinar estudio»</b> del escritorio (o vuelve a lanzar <code>afinar estudio</code>):
si el estudio ya está abierto, te trae aquí con la llave, sin cerrar nada ni perder el trabajo en curso.</li>
<li>O usa la dirección completa que el estudio escribió al arrancar (termina en <code>?token=…</code>).</li></ul>
<p>Este navegador la recordará 30 días.</p></body></html>"""

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "frame-src 'self' http://127.0.0.1:*; object-src 'none'; base-uri 'none'; form-action 'self'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'unsafe-inline'"


# --- request bodies (strict: an unknown field is an error, as in recipes) --------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeForm(Strict):
    nombre: str
    datos: str  # an uploaded dataset's id or "afinar:<shipped>"
    base: str = "smollm2-135m"
    plantilla: str = "auto"
    preajuste: Literal["rapido", "equilibrado", "cuidadoso"] = "rapido"
    sistema: str | None = None
    descripcion: str = ""
    comprobaciones: list[str] | None = None
    avanzado: dict[str, Any] = Field(default_factory=dict)  # dotted recipe keys: {"train.lr": 0.001}


class JobForm(Strict):
    tipo: Literal["entrenar", "reanudar", "evaluar", "exportar"]
    ejecucion: str | None = None  # reanudar, evaluar, exportar
    receta: str | None = None  # entrenar
    sobrescribir: bool = False
    formato: str | None = None  # exportar
    preguntas: int = Field(default=5, ge=1, le=50)  # evaluar
    mostrar_preguntas: bool = True  # evaluar: the blind rating needs to show the questions
    juez_url: str | None = Field(default=None, max_length=500)  # evaluar: an OpenAI-compatible judge (optional)
    juez_modelo: str | None = Field(default=None, max_length=200)
    juez_remoto: bool = False  # the person allowed a judge outside this machine (the texts leave it)


class RemoveLinesForm(Strict):
    lineas: list[int] = Field(min_length=1, max_length=10000)


class RatingForm(Strict):
    indice: int
    eleccion: str


class AnswerRatingForm(Strict):
    indice: int
    respuesta: str  # "a"/"b" of the blind pair, or "base"/"afinado" once revealed
    valoracion: str  # correcta, incompleta, incorrecta, peligrosa (checked by cards.rate_answer: E037 in Spanish)
    nota: str = ""


class ServerForm(Strict):
    ejecucion: str | None = None
    encender: bool


class ChatServer:
    """`afinar serve RUN --con-base` in its own process for «Usar» (chat page with base vs tuned side by side) and for
    other programs (OpenAI-compatible /v1)."""

    def __init__(self, workspace: Workspace, python: str):
        self.ws, self.python = workspace, python
        self.process: subprocess.Popen | None = None
        self.run: str | None = None
        self.port: int | None = None

    def start(self, run: str) -> dict:
        self.stop()
        run_dir = self.ws.run_path(run)
        if not (run_dir / RUN_INFO).is_file():
            raise AfinarError("E034", "esta ejecución no tiene un modelo entrenado todavía.", where=run)
        self.port = free_port()
        # Stopped by the studio's shutdown (Ctrl-C). No PR_SET_PDEATHSIG here as `afinar train` does: preexec_fn is
        # not safe in a process with threads (uvicorn's), and a chat server left over holds no data.
        with open(self.ws.jobs / "servidor.log", "wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "afinar", "serve", str(run_dir), "--con-base", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.ws.root,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.run = run
        return self.status()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process, self.run, self.port = None, None, None

    def status(self) -> dict:
        if self.process is None:
            return {"estado": "apagado"}
        base = {"ejecucion": self.run, "puerto": self.port, "url": f"http://127.0.0.1:{self.port}/",
                "api": f"http://127.0.0.1:{self.port}/v1"}
        if self.process.poll() is not None:
            lines = log_lines(tail(self.ws.jobs / "servidor.log"))
            return {**base, "estado": "fallido", "error": error_of(lines) or {"mensaje": (lines or ["?"])[-1]}}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=0.5) as answer:
                ready = answer.status == 200
        except OSError:
            ready = False
        return {**base, "estado": "listo" if ready else "arrancando"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def create_app(workspace: Workspace, options: StudioOptions) -> FastAPI:
    jobs = JobManager(workspace, options.python, options.job_env)
    server = ChatServer(workspace, options.python)
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.stop()  # the chat server is the studio's; jobs are not (they go on and a new studio adopts them)

    app = FastAPI(title="afinar estudio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, options=options)
    app.state.jobs, app.state.server, app.state.workspace = jobs, server, workspace

    @app.exception_handler(AfinarError)
    async def afinar_error(request: Request, exc: AfinarError):
        status = (409 if isinstance(exc, JobConflict) or exc.code in CONFLICT_CODES
                  else 404 if exc.code in NOT_FOUND_CODES else 403 if exc.code in FORBIDDEN_CODES
                  else 413 if exc.code == "E013" else 400)
        return JSONResponse(_error_body(exc.code, exc.message, exc.where, exc.hint), status_code=status)

    @app.exception_handler(RequestValidationError)  # a body the route's model refuses (FastAPI's own 422 is English)
    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, exc: ValidationError):
        first = exc.errors()[0]
        return _json(400, "E006", f"petición no válida: {'.'.join(map(str, first['loc']))}: {first['msg']}")

    # --- the page -----------------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        text = resources.files("afinar.studio.web").joinpath("index.html").read_text(encoding="utf-8")
        response = HTMLResponse(text.replace("{{TOKEN}}", options.token).replace("{{VERSION}}", __version__),
                                headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                                         "Referrer-Policy": "no-referrer"})
        # Persistent (30 days), not a session cookie: closing the browser must not lock the person out. The token is
        # the folder's (launch.folder_token), so the cookie survives a restart of the studio as well.
        response.set_cookie(options.cookie, options.token, httponly=True, samesite="strict", path="/",
                            max_age=COOKIE_DAYS * 86400)
        return response

    @app.get("/static/{name}")
    def static(name: str):
        media = {"studio.js": "text/javascript", "datos.js": "text/javascript", "studio.css": "text/css"}
        if name not in media:  # a fixed list: nothing from the request reaches a path
            return _json(404, "E007", "no existe")
        text = resources.files("afinar.studio.web").joinpath(name).read_text(encoding="utf-8")
        return Response(text, media_type=media[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/estado")
    def state():
        from afinar.data.chat_format import NAMED

        return {"version": __version__, "carpeta": str(workspace.root), "trabajo": jobs.current(), "bases": BASES,
                "servidor": server.status(), "preajustes": PRESETS, "plantillas": ["auto", *NAMED],
                "comprobaciones": CHECKS, "datos_incluidos": SHIPPED_DATASETS, "formatos": EXPORT_FORMATS,
                "max_subida_mb": options.max_upload_bytes // 2**20}

    # --- Datos --------------------------------------------------------------------------------------------------------

    @app.get("/api/datos")
    def datasets():
        return {"subidos": workspace.datasets(), "incluidos": SHIPPED_DATASETS}

    @app.post(UPLOAD_PATH)
    async def upload(request: Request):
        name = shown_name(request, "datos")
        final = workspace.new_dataset_path(name)
        size = await receive_upload(request, final, options.max_upload_bytes)  # E013/E014: nothing kept
        try:
            problem = not_jsonl(final)
            if problem:
                raise AfinarError("E014", problem, where=name, hint=f"sube un archivo .jsonl: {EXPECTED_FORMAT}")
            checked = await run_in_threadpool(validation, final)
            if not checked["ejemplos"]:  # nothing to train on: not kept, so it cannot be chosen nor get a recipe
                raise unusable(checked, name)
        except BaseException:  # nothing of a failed upload stays: not an unchecked file under its name either
            final.unlink(missing_ok=True)
            raise
        return {"id": final.stem, "bytes": size, "validacion": checked}

    @app.post("/api/datos/{dataset}/quitar")
    async def remove_lines(dataset: str, form: RemoveLinesForm):
        """The person's choice for lines the check flagged (personal data): «Quitar» rewrites the uploaded file
        without them (temporary file + rename: never half-written). The other choice, «Mantener», needs no request:
        such a line is trained on, but its text is never shown, answered in the evaluation or saved in a report."""
        if dataset.startswith("afinar:"):
            raise AfinarError("E018", "los conjuntos incluidos no se modifican.", where=dataset)
        path = workspace.dataset_path(dataset)
        await run_in_threadpool(_drop_lines, path, set(form.lineas))
        checked = await run_in_threadpool(validation, path)
        if not checked["ejemplos"]:
            raise unusable(checked, dataset)
        return {**checked, "quitadas": len(form.lineas)}

    @app.get("/api/datos/{dataset}/validacion")
    async def dataset_validation(dataset: str):
        return await run_in_threadpool(validation, _dataset_file(workspace, dataset))

    @app.get("/api/datos/{dataset}/informe")
    async def data_report(dataset: str, base: str = "smollm2-135m", plantilla: str = "auto", max_length: int = 512):
        return await run_in_threadpool(_data_report, _dataset_file(workspace, dataset), base, plantilla, max_length, False)

    @app.get("/api/datos/{dataset}/ejemplos")
    async def data_examples(dataset: str, base: str = "smollm2-135m", plantilla: str = "auto", max_length: int = 512):
        report = await run_in_threadpool(_data_report, _dataset_file(workspace, dataset), base, plantilla, max_length, True)
        return {"ejemplos": report["samples"], "tokens": report["tokens"].get("available")}

    # --- Modelo -------------------------------------------------------------------------------------------------------

    @app.post("/api/recetas")
    async def write_recipe(form: RecipeForm):
        source = _dataset_file(workspace, form.datos)  # E011 for a name that is neither uploaded nor shipped
        if not form.datos.startswith("afinar:"):
            checked = await run_in_threadpool(validation, source)
            if not checked["ejemplos"]:
                raise unusable(checked, form.datos)
            if checked["total_errores"]:  # training would refuse it (D000) with a list of every problem: say it here
                first = checked["errores"][0]
                raise AfinarError("E019", f"tu archivo tiene {checked['total_errores']} línea(s) con errores (la primera, "
                                  f"la {first['linea']}: {first['mensaje']}) y no se entrena con errores.",
                                  where=form.datos, hint="corrígelas en tu archivo y vuelve a subirlo en el paso 1")
        data_path = form.datos if form.datos.startswith("afinar:") else os.path.relpath(source, workspace.recipes)
        recipe, text = build_recipe(form.model_dump(), data_path, workspace)
        path = workspace.recipe_path(recipe.name)
        atomic_write_text(path, text)
        return {"nombre": recipe.name, "ruta": str(path), "yaml": text,
                "comando": f"cd {workspace.root} && {command_line(['train', str(path.relative_to(workspace.root))])}",
                "ejecucion": recipe.name, "existe": (workspace.runs / recipe.name).is_dir()}

    @app.get("/api/recetas/{name}.yaml")
    def recipe_file(name: str):
        path = workspace.recipe_path(name)
        if not path.is_file():
            return _json(404, "E015", "no existe esa receta")
        return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="application/yaml",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'})

    @app.post("/api/recetas/{name}/plan")
    async def plan_card(name: str, medir: bool = False):
        path = workspace.recipe_path(name)
        if not path.is_file():
            return _json(404, "E015", "no existe esa receta")
        if medir:  # measuring steps while a job runs would measure both at half speed
            jobs.check_free("medir ahora daría tiempos falsos.", hint="mide cuando termine")
        return await run_in_threadpool(_plan, path, workspace, options.python, medir)

    @app.get("/api/bases")
    async def bases_catalog(receta: str):
        """The bases this recipe could start from, each with «cabe / no cabe» and its time on this machine
        (`afinar plan RECETA --bases`, estimated: nothing downloaded, nothing measured)."""
        path = workspace.recipe_path(receta)
        if not path.is_file():
            return _json(404, "E015", "no existe esa receta")
        return await run_in_threadpool(_bases, path, workspace, options.python)

    # --- jobs ---------------------------------------------------------------------------------------------------------

    @app.post("/api/trabajos", status_code=202)
    def start_job(form: JobForm):
        jobs.check_free()  # said first: «ya existe, marca Sustituir» would only lead to this same refusal
        if form.tipo == "entrenar":
            if not form.receta:
                raise AfinarError("E026", "falta la receta a entrenar.")
            recipe = workspace.recipe_path(form.receta)
            if not recipe.is_file():
                raise AfinarError("E015", "no existe esa receta: vuelve al paso «Modelo».", where=form.receta)
            run = form.receta
            if (workspace.runs / run).exists() and not form.sobrescribir:
                raise AfinarError("E027", f"ya hay un modelo entrenado con el nombre «{run}»: para no perderlo, el estudio "
                                  "no lo pisa.", hint="cambia el nombre en el paso 2, continúa el que hay («Reanudar») "
                                  "o marca «Sustituir el que ya existe» junto a «Empezar a entrenar»")
            argv = ["train", str(recipe.relative_to(workspace.root))] + (["--sobrescribir"] if form.sobrescribir else [])
        else:
            if not form.ejecucion:
                raise AfinarError("E026", "falta la ejecución.")
            run = form.ejecucion
            run_dir = workspace.run_path(run)
            relative = str(run_dir.relative_to(workspace.root))
            if form.tipo == "reanudar":
                recipe = workspace.recipe_path(run)
                argv = ["train", str(recipe.relative_to(workspace.root)) if recipe.is_file() else f"{relative}/{RECIPE}",
                        "--resume", "--output", relative]
            elif form.tipo == "evaluar":
                argv = ["eval", relative, "--n", str(form.preguntas), "--solo-greedy"]
                argv += ["--mostrar-ejemplos"] if form.mostrar_preguntas else []
                if form.juez_url or form.juez_modelo:
                    if not (form.juez_url and form.juez_modelo):
                        raise AfinarError("J004", "el juez necesita la dirección y el nombre del modelo.")
                    check_url(form.juez_url, form.juez_remoto)  # J001/J002 now, in the page, not in the job's log
                    argv += ["--juez", form.juez_url, "--juez-modelo", form.juez_modelo]
                    argv += ["--permitir-remoto"] if form.juez_remoto else []
            else:
                if form.formato not in EXPORT_FORMATS:
                    raise AfinarError("E028", f"formato desconocido: {form.formato}", hint=", ".join(EXPORT_FORMATS))
                argv = ["export", relative, "--formato", form.formato, "--sobrescribir"]
        return jobs.start(form.tipo, run, argv)

    @app.get("/api/trabajos")
    def job_list():
        return {"actual": jobs.current(), "trabajos": jobs.all()[-50:]}

    @app.get("/api/trabajos/{job_id}")
    def job(job_id: str):
        return jobs.get(job_id)

    @app.post("/api/trabajos/{job_id}/detener")
    def stop(job_id: str):
        return jobs.stop_and_save(job_id)

    @app.post("/api/trabajos/{job_id}/cancelar")
    def cancel(job_id: str):
        return jobs.cancel(job_id)

    @app.get("/api/trabajos/{job_id}/eventos")
    async def events(job_id: str, request: Request):
        jobs.get(job_id)  # 404 before the stream starts
        last = request.headers.get("last-event-id", "") or request.query_params.get("desde", "")
        stream = job_events(jobs, workspace.runs, job_id, int(last) if last.isdigit() else 0, request.is_disconnected)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/trabajos/{job_id}/diagnostico", response_class=PlainTextResponse)
    def diagnostics(job_id: str):
        return _diagnostics(jobs, jobs.get(job_id))

    # --- Ejecuciones, Evaluar, Exportar ----------------------------------------------------------------------------

    @app.get("/api/ejecuciones")
    def runs():
        folders = sorted((p for p in workspace.runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                         reverse=True)
        chains = jobs.training_chains()
        return {"ejecuciones": [run_summary(p, chains.get(p.name)) for p in folders]}

    @app.get("/api/ejecuciones/{name}")
    def run_detail(name: str):
        run_dir = workspace.run_path(name)
        last = jobs.last_for(name)
        metrics = read_metrics(run_dir)
        recipe_text = (run_dir / RECIPE).read_text(encoding="utf-8") if (run_dir / RECIPE).is_file() else None
        return {
            "base_incluida": _recipe_base(recipe_text) in EMBEDDED_BASES,
            **run_summary(run_dir, jobs.training_chains().get(name), metrics),
            "receta": recipe_text,
            "metricas": metrics,
            "salidas": run_outputs(run_dir),
            "ultimo_trabajo": last,
            "registro": log_lines(tail(jobs.log_path(last["id"]), 16384))[-60:] if last else [],
            "evaluacion": _evaluation_summary(run_dir),
            "valoracion": cards.saved_tally(run_dir),
            "exportaciones": _exports(run_dir, workspace),
        }

    @app.get("/api/comparar")
    def compare(a: str, b: str):
        import yaml

        from afinar.training import flatten

        left, right = workspace.run_path(a), workspace.run_path(b)
        recipes = [flatten(yaml.safe_load((d / RECIPE).read_text(encoding="utf-8")) or {}) if (d / RECIPE).is_file()
                   else {} for d in (left, right)]
        keys = sorted(set(recipes[0]) | set(recipes[1]))
        differences = [{"clave": k, "a": recipes[0].get(k), "b": recipes[1].get(k)} for k in keys
                       if recipes[0].get(k) != recipes[1].get(k) and k not in ("name", "output_dir")]
        sides, chains = {}, jobs.training_chains()
        for key, name, folder in (("a", a, left), ("b", b, right)):
            metrics = read_metrics(folder)
            sides[key] = {**run_summary(folder, chains.get(name), metrics),
                          "evaluacion": _evaluation_summary(folder), "metricas": metrics}
        return {**sides, "diferencias": differences}

    @app.get("/api/ejecuciones/{name}/descargar/{key}")
    async def download(name: str, key: str):
        """One export as a file to save: the file itself (GGUF), or its folder as a zip (Ollama: GGUF + Modelfile;
        ONNX: the model folder Transformers.js loads). Only what afinar_export.json lists: no path from the request."""
        run_dir = workspace.run_path(name)
        item = read_json(run_dir / EXPORT_DIR / EXPORT_SUMMARY).get("exports", {}).get(key)
        if not item:
            return _json(404, "E035", "esta ejecución no tiene esa exportación: pulsa su botón en «Exportar» primero.")
        path = (run_dir / EXPORT_DIR / item["ruta"]).resolve()
        if not path.is_relative_to((run_dir / EXPORT_DIR).resolve()) or not path.exists():
            return _json(404, "E035", "el archivo de esa exportación ya no está (¿se borró?): vuelve a exportar.")
        target: Path | list[Path] = path
        if key == "ollama":  # its Modelfile with the GGUF it names (the export recorded which: "from")
            model = path.parent / str(item.get("comprobado", {}).get("from", ""))
            target = [path, model] if model.is_file() else [path]
        if isinstance(target, list) or target.is_dir():
            path = await run_in_threadpool(zipped, target, run_dir / EXPORT_DIR / f".descarga-{key}.zip")
            filename = f"{name}-{key}.zip"
        else:
            path, filename = target, target.name
        return FileResponse(path, filename=filename, media_type="application/octet-stream")

    @app.get("/api/ejecuciones/{name}/informe")
    def eval_report(name: str):
        page_path = workspace.run_path(name) / EVAL_DIR / "index.html"
        if not page_path.is_file():
            return _json(404, "E030", "esta ejecución aún no tiene evaluación")
        return FileResponse(page_path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/api/ejecuciones/{name}/resumen", response_class=HTMLResponse)
    async def printable(name: str):
        run_dir = workspace.run_path(name)
        report = await run_in_threadpool(_run_data_report, run_dir, workspace.root)
        text = await run_in_threadpool(cards.summary_html, run_dir, report)
        return HTMLResponse(text, headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/api/ejecuciones/{name}/valoracion")
    def blind(name: str):
        return cards.blind_pairs(workspace.run_path(name))

    @app.post("/api/ejecuciones/{name}/valoracion")
    def rate(name: str, form: RatingForm):
        return cards.rate(workspace.run_path(name), form.indice, form.eleccion)

    @app.post("/api/ejecuciones/{name}/valoraciones")
    def rate_answer(name: str, form: AnswerRatingForm):
        """Her rating of one answer: saved in RUN/valoraciones.json, counted in the report (metrics.json + page)."""
        run_dir = workspace.run_path(name)
        busy = jobs.current()
        if busy and busy.get("tipo") == "evaluar" and busy.get("ejecucion") == name:  # it rewrites the report
            raise JobConflict("E020", "se está evaluando este modelo: su informe va a cambiar.",
                              hint="valora cuando termine la evaluación")
        return cards.rate_answer(run_dir, form.indice, form.respuesta, form.valoracion, form.nota)

    @app.get("/api/ejecuciones/{name}/respuestas")
    def revealed(name: str):
        return cards.revealed_answers(workspace.run_path(name))

    @app.get("/api/ejecuciones/{name}/valoraciones.jsonl")
    def ratings_export(name: str):
        text = cards.ratings_jsonl(workspace.run_path(name))
        return PlainTextResponse(text, media_type="application/jsonl; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{name}-valoraciones.jsonl"',
                                          "Cache-Control": "no-store"})

    # --- Usar ---------------------------------------------------------------------------------------------------------

    @app.get("/api/servidor")
    def server_state():
        return server.status()

    @app.post("/api/servidor")
    def server_switch(form: ServerForm):
        if not form.encender:
            server.stop()
            return server.status()
        if not form.ejecucion:
            raise AfinarError("E026", "falta la ejecución a servir.")
        return server.start(form.ejecucion)

    # --- Datos: spreadsheets, the table editor, drafts from documents and their review (their own modules) ---------
    data_api.register(app, workspace, options)
    review.register(app, workspace, options, jobs)
    return app


# --- helpers (run in a thread: they read files and may load a tokenizer) --------------------------------------------


def _dataset_file(workspace: Workspace, dataset: str) -> Path:
    if dataset.startswith("afinar:"):
        from afinar.data.formats import shipped_dataset

        name = dataset.removeprefix("afinar:")
        if name not in SHIPPED_DATASETS:
            raise AfinarError("E011", "no hay un dataset incluido con ese nombre.", where=dataset)
        return shipped_dataset(name)
    return workspace.dataset_path(dataset)


def _drop_lines(path: Path, lines: set[int]) -> None:
    """The file without those (1-based) lines, written beside it and renamed over it."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        kept = [text for number, text in enumerate(handle, 1) if number not in lines]
    atomic_write_text(path, "".join(kept))


def zipped(source: Path | list[Path], target: Path) -> Path:
    """A zip (stored: weights barely compress) of a folder or of some files, rebuilt only when a file is newer."""
    import zipfile

    files = ([(f, f.name) for f in source] if isinstance(source, list)
             else [(f, str(f.relative_to(source))) for f in sorted(source.rglob("*")) if f.is_file()])
    if target.is_file() and all(f.stat().st_mtime <= target.stat().st_mtime for f, _ in files):
        return target
    partial = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for file, name in files:
            archive.write(file, name)
    os.replace(partial, target)
    return target


def _data_report(path: Path, base: str, template: str, max_length: int, show_examples: bool) -> dict:
    from afinar.config import DataSection, DataSource
    from afinar.data.preflight import _summary_lines, build_report
    from afinar.data.validate import try_tokenizer

    data = DataSection(sources=[DataSource(path=str(path))], max_length=max_length, template=template)
    tokenizer, reason = try_tokenizer(base, template)
    report = build_report(data, tokenizer, f"no se pudo cargar el tokenizador de '{base}' ({reason})" if reason else "",
                          show_examples=show_examples, progress=False)
    report["tokens"].pop("_lengths", None)
    report["resumen"] = _summary_lines(report)
    return report


def _run_data_report(run_dir: Path, root: Path) -> dict:
    """The pre-flight counts of the run's own data (personal data, duplicates, leakage, language: no tokenizer needed)
    for the data card, or {"no_revisado": why}: a check that did not run is never shown as a clean result.

    The saved recipe's data paths are as the training resolved them, relative to the folder it ran in: for the
    studio's jobs, the studio's folder (not this process's working folder)."""
    from afinar.data.preflight import build_report
    from afinar.runs import read_recipe

    try:
        recipe = read_recipe(run_dir)
        if recipe is None:
            return {"no_revisado": "la ejecución no tiene receta guardada"}
        for source in recipe.data.sources:
            if not Path(source.path).is_absolute():
                source.path = str(root / source.path)
        missing = [Path(s.path).name for s in recipe.data.sources if not Path(s.path).is_file()]
        if missing:
            return {"no_revisado": f"no se encuentra el archivo de datos {', '.join(missing)} (¿se borró o se movió?)"}
        return build_report(recipe.data, None, "", progress=False)
    except (AfinarError, OSError) as exc:
        return {"no_revisado": getattr(exc, "message", None) or str(exc)}


def _plan(recipe: Path, workspace: Workspace, python: str, measure: bool = False) -> dict:
    """`afinar plan RECETA --no-calibrar --json` (seconds, from the formula) or `--calibrar` (loads the model and times
    a few real steps on this machine: a minute or so), in a process of its own (the studio stays light: no torch)."""
    argv = ["plan", str(recipe.relative_to(workspace.root)), "--calibrar" if measure else "--no-calibrar", "--json"]
    return _plan_process(argv, workspace, python)


def _bases(recipe: Path, workspace: Workspace, python: str) -> dict:
    """`afinar plan RECETA --no-calibrar --json --bases` in a process of its own: the catalog (afinar/bases.py)."""
    answer = _plan_process(["plan", str(recipe.relative_to(workspace.root)), "--no-calibrar", "--json", "--bases"],
                           workspace, python)
    return {"bases": answer["plan"].get("bases") or [], "comando": answer["comando"]}


def _plan_process(argv: list[str], workspace: Workspace, python: str) -> dict:
    try:
        done = subprocess.run([python, "-m", "afinar", *argv], capture_output=True, text=True, cwd=workspace.root,
                              timeout=600, check=False, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    except subprocess.TimeoutExpired:
        raise AfinarError("E040", "el plan tardó más de 10 minutos.") from None
    if done.returncode != 0:
        error = error_of(log_lines(done.stderr)) or {"codigo": "E041", "mensaje": done.stderr.strip()[-500:]}
        raise AfinarError(error["codigo"] or "E041", error["mensaje"], where=error.get("donde"), hint=error.get("sugerencia"))
    return {"plan": json.loads(done.stdout), "comando": command_line(argv)}


def _recipe_base(text: str | None) -> str | None:
    import yaml

    try:
        return ((yaml.safe_load(text or "") or {}).get("model") or {}).get("base")
    except yaml.YAMLError:
        return None


def _evaluation_summary(run_dir: Path) -> dict | None:
    metrics = read_json(run_dir / EVAL_DIR / "metrics.json")
    if not metrics:
        return None
    generation = metrics.get("generation", {})
    greedy = generation.get("greedy") or next(iter(generation.values()), {})
    return {"perdida": metrics.get("loss"), "generacion": greedy, "comprobaciones": metrics.get("checks_detail"),
            "olvido": metrics.get("forgetting"), "preguntas": metrics.get("generated"),
            "pedidas": metrics.get("requested"), "apartadas": metrics.get("examples"),
            "con_datos_personales": metrics.get("withheld_personal", 0),
            # Are the answers right: key points and dangers (None: the examples have none), the verdict they decide,
            # a judge model's agreement if one was asked, and her own ratings of this evaluation's answers.
            "correccion": metrics.get("correctness"), "veredicto": metrics.get("verdict"), "juez": metrics.get("judge"),
            "valoraciones": cards.human_summary(run_dir, metrics), "muestra_textos": bool(metrics.get("shows_prompts")),
            # Can these answers be used, and (embedded base) what base and time usable ones need on this machine.
            "que_hace_falta": [line for line in what_it_takes(metrics.get("correctness"),
                                                              read_json(run_dir / RUN_INFO)) if line]}


def _exports(run_dir: Path, workspace: Workspace) -> dict:
    summary = read_json(run_dir / EXPORT_DIR / EXPORT_SUMMARY)
    exports = {}
    for key, item in summary.get("exports", {}).items():
        path = run_dir / EXPORT_DIR / item["ruta"]
        exports[key] = {**item, "uso": export_usage(key, path, run_dir, workspace.root)}
    return {"exportaciones": exports, "no_escritos": summary.get("no_escritos", {})}


def _diagnostics(jobs: JobManager, record: dict) -> str:
    """What to paste when asking for help: versions, machine, the command, how it ended and the log's end (the log holds
    counts and codes, never a row of the data)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def v(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "no instalado"

    cpu = int8_cpu_features()["procesador"]  # the model name on Linux, platform.processor() elsewhere
    lines = log_lines(tail(jobs.log_path(record["id"]), 32768))
    readable = [line for line in lines if line.strip()][-40:]
    parts = [
        f"afinar {__version__} · Python {platform.python_version()} · {platform.platform()}",
        f"CPU: {cpu} ({os.cpu_count()} núcleos) · torch {v('torch')} · transformers {v('transformers')} · peft {v('peft')}",
        f"Orden: {record.get('comando')}",
        (f"Trabajo: {record.get('tipo')} de «{record.get('ejecucion')}», estado {record.get('estado')}, código de salida "
         f"{record.get('codigo_salida')}, inicio "
         f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.get('inicio', 0)))}"),
    ]
    if record.get("error"):
        error = record["error"]
        parts.append(f"Error: {error.get('codigo')}: {error.get('mensaje')}"
                     + (f" — sugerencia: {error['sugerencia']}" if error.get("sugerencia") else ""))
    parts.append("Últimas líneas del registro:")
    parts.extend("  " + line for line in readable)
    return "\n".join(parts) + "\n"

