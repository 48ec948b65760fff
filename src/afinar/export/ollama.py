"""An Ollama `Modelfile` beside the GGUF, whose TEMPLATE renders exactly what the model was trained on.

The tuned model's Jinja chat template is translated to Ollama's Go template (ChatML for now: SmolLM2, Qwen2.5,
TinyLlama-chat use it). The translation is checked at export time by rendering a known conversation both ways:
with the tokenizer's own template, and with the Modelfile the way Ollama does it (SYSTEM prepended as a system message
when the chat has none, consecutive turns of one role merged, then the Go template).
"""
from __future__ import annotations

import re
from pathlib import Path

from afinar.atomic import atomic_write_text
from afinar.config import GenerationSection
from afinar.errors import AfinarError

CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")
# Used to check the translation: two user turns in a row (Ollama merges them), an answer, a follow-up.
KNOWN_CONVERSATION = [
    {"role": "user", "content": "Hola."},
    {"role": "user", "content": "¿Qué hago ante una quemadura?"},
    {"role": "assistant", "content": "Enfríala con agua corriente 20 minutos.\nNo uses hielo."},
    {"role": "user", "content": "¿Y si sale ampolla?"},
]


def is_chatml(template: str | None) -> bool:
    return bool(template) and "<|im_start|>" in template and "<|im_end|>" in template


def default_system(tokenizer) -> str | None:
    """The system prompt the template inserts by itself when a chat has none (SmolLM2 does), if any."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", text, flags=re.DOTALL)
    return m.group(1) if m else None


def _quote(value: str, what: str) -> str:
    if '"""' in value:
        raise AfinarError("X040", f"el {what} contiene comillas triples, que un Modelfile no puede llevar.")
    return f'"""{value}"""'


def modelfile_text(gguf_name: str, system: str | None, gen: GenerationSection) -> str:
    lines = [
        "# Generado por afinar. Crear el modelo: ollama create NOMBRE -f Modelfile",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quote(CHATML_GO, 'plantilla')}",
    ]
    lines += [f'PARAMETER stop "{stop}"' for stop in CHATML_STOPS]
    lines += [
        f"PARAMETER temperature {gen.temperature:g}",
        f"PARAMETER top_p {gen.top_p:g}",
        f"PARAMETER repeat_penalty {gen.repetition_penalty:g}",
        f"PARAMETER num_predict {gen.max_new_tokens}",
    ]
    if system:
        lines.append(f"SYSTEM {_quote(system, 'mensaje de sistema')}")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """TEMPLATE, SYSTEM, FROM and PARAMETERs of a Modelfile (the subset afinar writes)."""
    out: dict = {"parameters": []}
    for m in re.finditer(r'^(TEMPLATE|SYSTEM)\s+"""(.*?)"""', text, flags=re.DOTALL | re.MULTILINE):
        out[m.group(1).lower()] = m.group(2)
    for m in re.finditer(r"^(FROM|PARAMETER)\s+(.+)$", text, flags=re.MULTILINE):
        if m.group(1) == "FROM":
            out["from"] = m.group(2).strip()
        else:
            out["parameters"].append(m.group(2).strip())
    return out


def _merge_same_role(messages: list[dict]) -> list[dict]:
    """Consecutive turns of one role become one, joined by a blank line (Ollama's `collate`)."""
    merged: list[dict] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + message["content"]}
        else:
            merged.append(dict(message))
    return merged


def ollama_prompt(modelfile: str, messages: list[dict]) -> str:
    """The prompt Ollama's chat endpoint builds from a Modelfile and a conversation."""
    parsed = parse_modelfile(modelfile)
    if parsed.get("system") and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": parsed["system"]}, *messages]
    collated = [{"Role": m["role"], "Content": m["content"]} for m in _merge_same_role(messages)]
    system = "\n\n".join(m["Content"] for m in collated if m["Role"] == "system")
    return render_go_template(parsed.get("template", "{{ .Prompt }}"), {"Messages": collated, "System": system})


def check_modelfile(modelfile: str, tokenizer, system: str | None) -> None:
    from afinar.data.templates import with_system

    expected = tokenizer.apply_chat_template(with_system(_merge_same_role(KNOWN_CONVERSATION), system), tokenize=False,
                                             add_generation_prompt=True)
    got = ollama_prompt(modelfile, KNOWN_CONVERSATION)
    if got != expected:
        raise AfinarError("X041", "la plantilla del Modelfile no reproduce la del modelo afinado; no se escribe.")


def require_chatml(tokenizer) -> None:
    if not is_chatml(tokenizer.chat_template):
        raise AfinarError("X040", "solo sé traducir a Ollama plantillas ChatML (<|im_start|>…<|im_end|>); esta no lo es.",
                          hint="usa el GGUF directamente con llama.cpp (lleva la plantilla dentro) o escribe el TEMPLATE a mano")


def write_modelfile(folder: Path, gguf_name: str, tokenizer, system: str | None, gen: GenerationSection) -> Path:
    require_chatml(tokenizer)
    system = system if system is not None else default_system(tokenizer)
    text = modelfile_text(gguf_name, system, gen)
    check_modelfile(text, tokenizer, system)
    return atomic_write_text(folder / "Modelfile", text)


# --- A small Go text/template interpreter: the subset Ollama's chat templates use -----------------------------------

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", flags=re.DOTALL)


def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", a)], with Go's `{{- ` / ` -}}` trimming applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = template[pos:]
    out.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list, int, str | None]:
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(" ", 1)[0]
        if word in stop:
            return nodes, i, word
        if word in ("if", "range"):
            body, i, ended = _parse(tokens, i, ("else", "end"))
            other: list = []
            if ended == "else":
                other, i, ended = _parse(tokens, i, ("end",))
            if ended != "end":
                raise ValueError(f"falta {{{{ end }}}} para {{{{ {value} }}}}")
            nodes.append((word, value.split(" ", 1)[1].strip(), body, other))
        elif word.startswith((".", "$.")):
            nodes.append(("field", word))
        else:
            raise ValueError(f"acción de plantilla no admitida: {{{{ {value} }}}}")
    if stop:
        raise ValueError("plantilla sin cerrar")
    return nodes, i, None


def _lookup(name: str, dot, root):
    scope, path = (root, name[2:]) if name.startswith("$.") else (dot, name[1:])
    for part in [p for p in path.split(".") if p]:
        scope = scope.get(part) if isinstance(scope, dict) else None
    return scope


def _run(nodes: list, dot, root, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            value = _lookup(node[1], dot, root)
            out.append("" if value is None else str(value))
        elif node[0] == "if":
            _run(node[2] if _lookup(node[1], dot, root) else node[3], dot, root, out)
        elif node[0] == "range":
            items = _lookup(node[1], dot, root) or []
            for item in items:
                _run(node[2], item, root, out)
            if not items:
                _run(node[3], dot, root, out)


def render_go_template(template: str, data: dict) -> str:
    nodes, _, _ = _parse(_tokens(template))
    out: list[str] = []
    _run(nodes, data, data, out)
    return "".join(out)
