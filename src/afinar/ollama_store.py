"""Bases from the local Ollama store (`--base ollama:NOMBRE[:etiqueta]`), read without running Ollama.

The store, as Ollama lays it out (ollama/ollama: envconfig `Models()`, server/manifest.go, server/modelpath.go
`GetBlobsPath`, types/model/name.go):

- where: `OLLAMA_MODELS`, else `~/.ollama/models` (`%USERPROFILE%\\.ollama\\models` on Windows); the Linux service
  install keeps its own in /usr/share/ollama/.ollama/models (looked at too when the user's is missing).
- `manifests/<host>/<namespace>/<model>/<tag>`: a JSON manifest (schemaVersion 2) whose layers name blobs by digest;
  a name is `[host/][namespace/]model[:tag]`, filled with `registry.ollama.ai`, `library` and `latest`.
- `blobs/sha256-<hex>`: each layer's content. The `application/vnd.ollama.image.model` layer is the GGUF; `.template`
  (a Go template), `.params` (JSON: stop, temperature, num_ctx…) and `.system` are small texts; `.adapter` (a LoRA
  applied on top) and `.projector` (a vision model's image encoder) are what afinar cannot train from.

`list_models()` is cheap (manifests, a few small blobs and `stat`s: no hashing, no GGUF reading); `find_model()` also
checks the model blob's size and its GGUF magic; `verify_digest()` hashes a blob (slow on big models: on request).
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from afinar.atomic import file_sha256
from afinar.errors import AfinarError

PREFIX = "ollama:"
ENV = "OLLAMA_MODELS"
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
SERVICE_STORE = Path("/usr/share/ollama/.ollama/models")  # Linux install script: the `ollama` user's home

MEDIA = "application/vnd.ollama.image."
MODEL, TEMPLATE, PARAMS, SYSTEM = MEDIA + "model", MEDIA + "template", MEDIA + "params", MEDIA + "system"
ADAPTER, PROJECTOR = MEDIA + "adapter", MEDIA + "projector"
_REFUSED = {
    ADAPTER: "lleva un adaptador LoRA encima del GGUF (capa adapter)",
    PROJECTOR: "es un modelo de visión (capa projector: codificador de imágenes)",
}
_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")  # server/modelpath.go accepts only these (no paths in it)
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MAX_NAME = 128  # types/model/name.go MaxNamePartLen
_LISTED = 10


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return self.host, self.namespace, self.model, self.tag

    def __str__(self) -> str:
        """As `ollama list` shows it: host and namespace only when not the defaults, the tag always."""
        if self.host.casefold() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.casefold() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def tuned(self) -> str:
        """The name suggested for the fine-tuned model: `llama3.2-afinado:1b`, `qwen2.5-afinado`."""
        return f"{self.model}-afinado" + ("" if self.tag == DEFAULT_TAG else f":{self.tag}")


@dataclass(frozen=True)
class OllamaModel:
    name: str  # as `ollama list` shows it
    gguf: Path  # the model layer's blob
    template: str | None  # the TEMPLATE (Go text/template), if the manifest has one
    params: dict  # the PARAMETERs (stop, temperature, num_ctx…)
    size: int  # bytes of the GGUF, as the manifest says (and the blob has)
    system: str | None = None
    digest: str = ""  # sha256 hex of the GGUF (its blob's name)
    manifest: Path | None = field(default=None, compare=False)


def is_ollama_spec(spec: str | None) -> bool:
    """`ollama:NOMBRE[:etiqueta]`: a base from the local Ollama store (any case, spaces around)."""
    return bool(spec) and spec.strip().lower().startswith(PREFIX)


def _strip_prefix(spec: str) -> str:
    spec = spec.strip()
    return spec[len(PREFIX):].strip() if is_ollama_spec(spec) else spec


def parse_name(text: str) -> OllamaName:
    """`[host/][namespace/]model[:tag]` as Ollama's ParseName reads it (http:// or https:// dropped), with its
    defaults; M021 for anything Ollama would not accept either (builds `+x` and digests `@sha256-…` included)."""
    raw = _strip_prefix(text)
    s = raw.removeprefix("http://") if raw.startswith("http://") else raw.removeprefix("https://")
    slash, colon = s.rfind("/"), s.rfind(":")
    rest, tag = (s[:colon], s[colon + 1:]) if colon > slash else (s, DEFAULT_TAG)
    pieces = rest.split("/")
    ok = 0 < len(s) <= _MAX_NAME and len(pieces) <= 3 and all(_PART.match(p) and ".." not in p for p in [*pieces, tag])
    if len(pieces) >= 2 and "." in pieces[-2]:
        ok = False  # namespaces have no dots (a host does: hf.co/…)
    if not ok:
        raise AfinarError("M021", f"'{raw}' no es un nombre de modelo de Ollama válido.", where=f"{PREFIX}{raw}",
                          hint="la forma es ollama:NOMBRE[:etiqueta] (p. ej. ollama:qwen2.5:0.5b, "
                               "ollama:usuario/modelo:etiqueta u ollama:hf.co/usuario/repo:Q4_K_M); `ollama list` "
                               "muestra los que tienes")
    host = pieces[-3] if len(pieces) == 3 else DEFAULT_HOST
    namespace = pieces[-2] if len(pieces) >= 2 else DEFAULT_NAMESPACE
    return OllamaName(host, namespace, pieces[-1], tag)


def store_candidates() -> list[Path]:
    """Where Ollama's store may be, in the order it is looked for: OLLAMA_MODELS alone when set (quotes and spaces
    around it dropped, like Ollama's envconfig.Var), else the user's, then the Linux service's."""
    value = os.environ.get(ENV, "").strip().strip("\"'")
    if value:
        return [Path(value).expanduser()]
    found = [Path.home() / ".ollama" / "models"]
    if sys.platform.startswith("linux"):
        found.append(SERVICE_STORE)
    return found


def _state(folder: Path) -> str:
    """"ok", "missing" or "denied" (exists but cannot be read: the service's store without the `ollama` group)."""
    try:
        if not (folder / "manifests").is_dir():
            return "missing"
        os.listdir(folder / "manifests")
    except PermissionError:
        return "denied"
    except OSError:
        return "missing"
    return "ok"


def store_dir() -> Path:
    """The Ollama store's folder (the one holding manifests/ and blobs/), or M020 saying where it looked."""
    candidates = store_candidates()
    states = [(c, _state(c)) for c in candidates]
    for folder, state in states:
        if state == "ok":
            return folder
    looked = ", ".join(f"{c}{' (sin permiso de lectura)' if s == 'denied' else ''}" for c, s in states)
    denied = [c for c, s in states if s == "denied"]
    if denied:
        hint = (f"la carpeta de modelos de Ollama es del usuario del servicio: añade el tuyo a su grupo (sudo usermod "
                f"-a -G ollama $USER, y vuelve a entrar) o indica otra con {ENV}=/ruta/a/models")
    elif os.environ.get(ENV, "").strip():
        hint = f"{ENV} apunta a una carpeta sin manifests/: corrígela (la misma que usa Ollama) o quítala"
    else:
        hint = (f"si Ollama guarda los modelos en otro sitio, indícalo con {ENV}=/ruta/a/models (la misma variable "
                "que usa Ollama); si no tienes ninguno, descárgalo antes con `ollama pull NOMBRE`")
    raise AfinarError("M020", f"no se encuentra la carpeta de modelos de Ollama; se buscó en: {looked}.", hint=hint)


def _manifest_files(store: Path) -> list[Path]:
    """manifests/<host>/<namespace>/<model>/<tag> files (server/manifest.go globs the same four levels)."""
    root = store / "manifests"
    try:
        return sorted(p for p in root.glob("*/*/*/*") if p.is_file())
    except OSError:
        return []


def _name_of(store: Path, manifest: Path) -> OllamaName:
    return OllamaName(*manifest.relative_to(store / "manifests").parts)


def _find_manifest(store: Path, name: OllamaName) -> Path | None:
    exact = store.joinpath("manifests", *name.parts)
    if exact.is_file():
        return exact
    wanted = tuple(p.casefold() for p in name.parts)  # Ollama compares names case-insensitively (EqualFold)
    return next((m for m in _manifest_files(store) if tuple(p.casefold() for p in _name_of(store, m).parts) == wanted),
                None)


def blob_path(store: Path, digest: str) -> Path:
    """blobs/sha256-<hex> for a layer's digest; M023 for a digest Ollama would not accept either."""
    m = _DIGEST.match(str(digest or ""))
    if not m:
        raise AfinarError("M023", f"el manifiesto de Ollama tiene un digest no válido ({str(digest)[:80]!r}).",
                          hint="vuelve a descargarlo con `ollama pull`")
    return store / "blobs" / f"sha256-{m.group(1).lower()}"


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AfinarError("M023", f"el manifiesto de Ollama no es JSON legible ({type(exc).__name__}).", where=str(path),
                          hint="vuelve a descargar el modelo con `ollama pull NOMBRE`") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise AfinarError("M023", "el manifiesto de Ollama no tiene la forma esperada (schemaVersion 2 con layers).",
                          where=str(path), hint="vuelve a descargar el modelo con `ollama pull NOMBRE`")
    return data


def _small_text(store: Path, layer: dict | None) -> str | None:
    if layer is None:
        return None
    try:
        return blob_path(store, layer.get("digest")).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, AfinarError):
        return None


def _model(store: Path, manifest: Path, name: OllamaName, strict: bool) -> OllamaModel:
    """The OllamaModel a manifest describes; M023–M026 for what cannot be trained from (strict: also the magic)."""
    data = _read_manifest(manifest)
    layers = data["layers"]
    pull = f"vuelve a descargarlo: ollama pull {name}"
    for layer in layers:
        if (kind := layer.get("mediaType")) in _REFUSED:
            raise AfinarError("M025", f"el modelo de Ollama {name} {_REFUSED[kind]}; afinar solo parte de un GGUF de "
                                      "texto sin nada encima.", where=str(manifest),
                              hint="elige su modelo base de texto (p. ej. el que nombra su FROM en `ollama show "
                                   f"--modelfile {name}`)")
    models = [x for x in layers if x.get("mediaType") == MODEL]
    if not models:
        kinds = ", ".join(sorted({str(x.get("mediaType", "?")).removeprefix(MEDIA) for x in layers})) or "ninguna"
        raise AfinarError("M025", f"el modelo de Ollama {name} no tiene capa GGUF (capas: {kinds}).", where=str(manifest),
                          hint="afinar parte de modelos GGUF de texto; elige otro de `ollama list`")
    layer = models[0]
    gguf = blob_path(store, layer.get("digest"))
    expected = layer.get("size")
    try:
        actual = gguf.stat().st_size
    except OSError:
        raise AfinarError("M024", f"falta el archivo del modelo {name} en el almacén de Ollama (el manifiesto lo nombra "
                                  "pero no está).", where=str(gguf), hint=pull) from None
    if not isinstance(expected, int):
        raise AfinarError("M023", f"el manifiesto de {name} no dice el tamaño del GGUF.", where=str(manifest), hint=pull)
    if actual != expected:
        raise AfinarError("M024", f"el archivo del modelo {name} está incompleto o dañado: mide {actual:,} bytes y el "
                                  f"manifiesto dice {expected:,}.", where=str(gguf), hint=pull)
    if strict:
        with open(gguf, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise AfinarError("M026", f"la capa de modelo de {name} no es un archivo GGUF.", where=str(gguf),
                                  hint=f"{pull}; o usa un modelo GGUF de texto de `ollama list`")
    by_kind = {x.get("mediaType"): x for x in layers}
    params_text = _small_text(store, by_kind.get(PARAMS))
    try:
        params = json.loads(params_text) if params_text else {}
    except json.JSONDecodeError:
        params = {}
    return OllamaModel(str(name), gguf, _small_text(store, by_kind.get(TEMPLATE)),
                       params if isinstance(params, dict) else {}, actual, _small_text(store, by_kind.get(SYSTEM)),
                       gguf.name.removeprefix("sha256-"), manifest)


def list_names(store: Path | None = None) -> list[str]:
    """Every name the store has a manifest for, as `ollama list` writes it (nothing else is read)."""
    store = store or store_dir()
    return sorted(str(_name_of(store, m)) for m in _manifest_files(store))


def list_models(store: Path | None = None) -> list[OllamaModel]:
    """The store's models afinar can start from (a GGUF of the manifest's size, no adapter or projector), sorted by
    name. Cheap: no hashing, no GGUF reading; the others are left out silently (`find_model` says why). Without a
    store, []."""
    if store is None:
        try:
            store = store_dir()
        except AfinarError:
            return []
    found = []
    for manifest in _manifest_files(store):
        try:
            found.append(_model(store, manifest, _name_of(store, manifest), strict=False))
        except AfinarError:
            continue
    return sorted(found, key=lambda m: m.name)


def find_model(spec: str, store: Path | None = None) -> OllamaModel:
    """`ollama:NOMBRE[:etiqueta]` (or the bare name) → its GGUF blob, template, parameters and system prompt."""
    name = parse_name(spec)
    store = store or store_dir()
    manifest = _find_manifest(store, name)
    if manifest is None:
        names = list_names(store)
        shown = ", ".join(names[:_LISTED]) + (f" (y {len(names) - _LISTED} más)" if len(names) > _LISTED else "")
        there = f"Hay: {shown}." if names else "El almacén está vacío."
        raise AfinarError("M022", f"el modelo {name} no está en el almacén de Ollama ({store}). {there}",
                          where=f"{PREFIX}{_strip_prefix(spec)}",
                          hint=f"descárgalo con `ollama pull {name}` (o elige uno de `ollama list`)")
    return _model(store, manifest, _name_of(store, manifest), strict=True)


def verify_digest(model: OllamaModel) -> None:
    """Hash the GGUF blob and compare with its name (the manifest's digest); M024 if they differ. Slow on big models."""
    actual = file_sha256(model.gguf)
    if actual != model.digest.lower():
        raise AfinarError("M024", f"el archivo del modelo {model.name} está dañado: su SHA-256 no es el del manifiesto.",
                          where=str(model.gguf), hint=f"vuelve a descargarlo: ollama pull {model.name}")
