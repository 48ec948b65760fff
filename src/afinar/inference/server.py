"""`afinar serve`: an OpenAI-compatible API (FastAPI) and a chat page over one engine with one or more personalities.

Imported only by `afinar serve` (cli.py imports lazily), so FastAPI stays off the path of every other command.
Safe by default: binds 127.0.0.1; another host needs an API key (compared in constant time); on loopback only the
loopback names are accepted in `Host` (DNS rebinding), and a browser `Origin` must be this server or a listed CORS
origin; request bodies are capped while they are read (a chunked body is cut off at the limit, 413), prompt tokens and
max_tokens too; each request has a time limit; the log never holds message content unless asked (`--log-contenido`).
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from afinar.data.templates import with_system
from afinar.errors import AfinarError
from afinar.inference.engines import Engine, Reply, Sampling, load_engine

log = logging.getLogger("afinar.serve")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Limits:
    max_body_bytes: int = 256 * 1024
    max_prompt_tokens: int = 2048
    max_tokens: int = 1024
    timeout_s: float = 120.0


@dataclass
class ServeOptions:
    api_key: str | None = None
    cors: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    log_content: bool = False
    # Host names a request may be addressed to (None: any). Bound to loopback, `serve` allows only the loopback
    # names: a web page whose domain an attacker re-points to 127.0.0.1 (DNS rebinding) sends its own Host.
    allowed_hosts: set[str] | None = None


def request_hostname(host_header: str) -> str:
    """'127.0.0.1:8000' → '127.0.0.1', '[::1]:8000' → '::1', 'LocalHost' → 'localhost'."""
    from urllib.parse import urlsplit

    try:
        return urlsplit("//" + host_header).hostname or ""
    except ValueError:
        return ""


def foreign_origin(origin: str | None, host_header: str, allowed: list[str]) -> bool:
    """A browser's Origin that is neither this server (same scheme-less host:port as the Host header) nor listed
    for CORS: its page must not drive the model (no CSRF with a text/plain POST)."""
    from urllib.parse import urlsplit

    if origin is None or origin in allowed:
        return False
    try:
        return urlsplit(origin).netloc.lower() != host_header.lower()
    except ValueError:
        return True


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The OpenAI chat request; unknown fields are ignored, as OpenAI clients send many."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    n: int = 1


def check_bind(host: str, api_key: str | None) -> None:
    if host not in LOOPBACK and not api_key:
        raise AfinarError("S001", f"escuchar en {host} expone el modelo a la red: hace falta una clave.",
                          hint="usa --api-key o la variable AFINAR_API_KEY, o deja --host 127.0.0.1")


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def create_app(engine: Engine, options: ServeOptions | None = None) -> FastAPI:
    options = options or ServeOptions()
    limits = options.limits
    if "*" in options.cors:
        raise AfinarError("S002", "CORS con comodín (*) no está permitido: nombra los orígenes.")
    app = FastAPI(title="afinar", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        host = request.headers.get("host", "")
        if options.allowed_hosts is not None and request_hostname(host) not in options.allowed_hosts:
            return _error(403, "nombre de equipo no permitido en la cabecera Host (solo se atiende a "
                          f"{', '.join(sorted(options.allowed_hosts))})", "permission_error", "host_not_allowed")
        if foreign_origin(request.headers.get("origin"), host, options.cors):
            return _error(403, "origen no permitido: una página de otro sitio no puede usar este servidor "
                          "(añádelo con --cors si es tuyo)", "permission_error", "origin_not_allowed")
        if request.url.path.startswith("/v1/") and options.api_key and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), options.api_key.encode()):
                return _error(401, "falta la clave o no es válida (cabecera Authorization: Bearer …)",
                              "authentication_error", "invalid_api_key")
        if request.method == "POST":
            too_big = _error(413, f"la petición ocupa más de {limits.max_body_bytes // 1024} KB", code="body_too_large")
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limits.max_body_bytes:  # refused unread
                return too_big
            # Otherwise read only up to the limit: a chunked body (no declared size) or one that lies about its size
            # is cut off as soon as it passes it, never held whole in memory.
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    return too_big
            request._body = bytes(body)  # starlette hands it to the route (BaseHTTPMiddleware replays `_body`)
        response = await call_next(request)
        log.info("%s %s → %s (%.0f ms)", request.method, request.url.path, response.status_code,
                 1000 * (time.perf_counter() - started))
        return response

    if options.cors:  # added last = outermost: browsers' preflight requests carry no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=options.cors, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.get("/health")
    def health():
        return {"status": "ok", "engine": engine.name, "models": list(engine.personalities)}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": p, "object": "model", "created": 0, "owned_by": "afinar"}
                                           for p in engine.personalities]}

    @app.get("/api/personalidades")
    def personalities():
        return [{"id": p.id, "system_prompt": p.system_prompt, "temperature": p.generation.temperature,
                 "top_p": p.generation.top_p, "max_tokens": p.generation.max_new_tokens,
                 "informe": f"/informe/{p.id}" if p.report else None, "motor": engine.name, "es_base": p.is_base}
                for p in engine.personalities.values()]

    @app.get("/informe/{model_id}")
    def report(model_id: str):
        personality = engine.personalities.get(model_id)
        if not personality or not personality.report:
            return _error(404, "esta personalidad no tiene informe de evaluación", code="not_found")
        return FileResponse(personality.report, media_type="text/html")

    @app.get("/", response_class=HTMLResponse)
    def page():
        return resources.files("afinar.inference.web").joinpath("index.html").read_text(encoding="utf-8")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = ChatRequest.model_validate_json(await request.body())
        except ValueError as exc:
            return _error(400, f"petición no válida: {_first_error(exc)}")
        if body.n != 1:
            return _error(400, "solo se admite n=1")
        if body.model not in engine.personalities:
            return _error(404, f"modelo desconocido: {body.model!r}; disponibles: {', '.join(engine.personalities)}",
                          code="model_not_found")
        personality = engine.personalities[body.model]
        wanted = body.max_completion_tokens or body.max_tokens or personality.generation.max_new_tokens
        if wanted > limits.max_tokens:
            return _error(400, f"max_tokens={wanted} supera el límite del servidor ({limits.max_tokens})", code="max_tokens")
        messages = with_system([m.model_dump() for m in body.messages], personality.system_prompt)
        prompt_tokens = await run_in_threadpool(engine.prompt_tokens, body.model, messages)
        if prompt_tokens > limits.max_prompt_tokens:
            return _error(400, f"la conversación ocupa {prompt_tokens} tokens y el límite es {limits.max_prompt_tokens}",
                          code="context_length_exceeded")
        sampling = Sampling.from_generation(
            personality.generation, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
            repetition_penalty=body.repetition_penalty, seed=body.seed, timeout_s=limits.timeout_s)
        sampling.max_tokens = wanted
        if options.log_content:
            log.info("petición %s: %s", body.model, json.dumps(messages, ensure_ascii=False))
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not body.stream:
            reply: Reply = await run_in_threadpool(engine.complete, body.model, messages, sampling)
            _log_reply(body.model, reply, options.log_content)
            return {
                "id": ident, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": "stop" if reply.stopped else "length"}],
                "usage": _usage(reply),
            }

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
            data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                data["usage"] = usage
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            async for item in iterate_in_threadpool(engine.stream(body.model, messages, sampling)):
                if isinstance(item, Reply):
                    _log_reply(body.model, item, options.log_content)
                    yield chunk({}, "stop" if item.stopped else "length")
                    if include_usage:
                        yield chunk({}, usage=_usage(item))
                else:
                    yield chunk({"content": item})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _usage(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def _log_reply(model: str, reply: Reply, content: bool) -> None:
    log.info("respuesta %s: %d+%d tokens, %s", model, reply.prompt_tokens, reply.completion_tokens,
             "terminó sola" if reply.stopped else "cortada")
    if content:
        log.info("respuesta %s: %s", model, reply.text)


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
    return "JSON mal formado"


def serve(sources: list[str], host: str = "127.0.0.1", port: int = 8000, engine: str = "auto",
          api_key: str | None = None, cors: list[str] | None = None, limits: Limits | None = None,
          log_content: bool = False, with_base: bool = False) -> None:
    """`with_base` (`--con-base`): the base model the runs were trained from is one more personality (`base`), for
    the chat page's side-by-side comparison."""
    import os

    import uvicorn

    api_key = api_key or os.environ.get("AFINAR_API_KEY") or None
    check_bind(host, api_key)
    loaded = load_engine(sources, engine, with_base=with_base)
    allowed_hosts = LOOPBACK | {host} if host in LOOPBACK else None  # on loopback: DNS rebinding refused
    app = create_app(loaded, ServeOptions(api_key, list(cors or []), limits or Limits(), log_content, allowed_hosts))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = ", ".join(f"{p.id} (modelo base)" if p.is_base else p.id for p in loaded.personalities.values())
    print(f"Sirviendo {names} con {loaded.name} en http://{host}:{port}/ (API: http://{host}:{port}/v1)"
          + (" — con clave" if api_key else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning")


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="RUN|EXPORT",
                   help="ejecuciones sobre la misma base (cada una, una personalidad), "
                        "o un modelo fusionado o exportado")
    p.add_argument("--host", help="otra dirección que 127.0.0.1 exige --api-key")
    p.add_argument("--port", type=int)
    p.add_argument("--motor", dest="engine", choices=["auto", "transformers", "llama.cpp", "onnxruntime"])
    p.add_argument("--api-key",
                   help="clave Bearer exigida en /v1 (o la variable AFINAR_API_KEY)")
    p.add_argument("--cors", nargs="+", metavar="ORIGEN",
                   help="orígenes web permitidos (sin comodín)")
    p.add_argument("--max-body-kb", type=int, dest="limits", action=_Limit, field="max_body_bytes", scale=1024,
                   help="tamaño máximo de una petición (413 si se pasa)")
    p.add_argument("--max-prompt-tokens", type=int, dest="limits", action=_Limit, field="max_prompt_tokens",
                   help="tokens máximos de la conversación (400)")
    p.add_argument("--max-tokens", type=int, dest="limits", action=_Limit, field="max_tokens",
                   help="max_tokens máximo por petición (400)")
    p.add_argument("--timeout", type=float, dest="limits", action=_Limit, field="timeout_s",
                   help="segundos máximos generando por petición")
    p.add_argument("--log-contenido", dest="log_content", action="store_true",
                   help="escribe los mensajes en el registro (por defecto no)")
    p.add_argument("--con-base", dest="with_base", action="store_true",
                   help="sirve también el modelo base como personalidad 'base', para comparar lado a lado "
                        "(no con exportaciones GGUF/ONNX)")


class _Limit(argparse.Action):
    """An option that sets one field of the `limits` passed to serve, from Limits' defaults: `--max-tokens 512` →
    Limits(max_tokens=512); `scale` converts units (--max-body-kb 256 → max_body_bytes=262144)."""

    def __init__(self, option_strings, dest, field: str, scale: int = 1, default=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, default=default, **kwargs)
        self.field, self.scale = field, scale

    def __call__(self, parser, namespace, values, option_string=None):
        limits = getattr(namespace, self.dest, None) or Limits()
        setattr(namespace, self.dest, replace(limits, **{self.field: values * self.scale}))
