"""The tokenizer files of a Hugging Face folder: saving a tokenizer with its chat template in both places tools read it.

A leaf module (it imports only afinar.errors and afinar.atomic), so that models.py, gguf_import.py, merge.py, train.py
and the exporters can all use it without importing each other."""
from __future__ import annotations

import os
from pathlib import Path

from afinar.errors import AfinarError

TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
EXTRA_TEMPLATES_DIR = "additional_chat_templates"


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
