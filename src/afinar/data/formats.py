"""Read JSONL examples (alpaca, chat, structured) into one shape: a list of chat messages.

Every problem found is collected (not raised) with file, line, field and a code, and never with the
row's text: datasets here can hold patient data.
"""
from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from afinar.data.keypoints import matches_everything
from afinar.errors import AfinarError

ROLES = ("system", "user", "assistant")

# Error codes (documented in the README). Severity "error" stops training; "warning" is reported.
CODES = {
    "D001": "JSON inválido",
    "D002": "la línea no es un objeto JSON",
    "D003": "formato no reconocido",
    "D004": "falta un campo obligatorio",
    "D005": "campo vacío",
    "D006": "tipo de dato incorrecto",
    "D007": "rol desconocido",
    "D008": "orden de roles incorrecto",
    "D009": "ejemplo duplicado",
    "D010": "la respuesta no cabe en max_length",
    "D011": "archivo no encontrado",
    "D012": "archivo sin ejemplos",
    "D013": "el archivo no está en UTF-8",
    "D014": "fuga entre entrenamiento y validación",
    "D015": "la partición deja un conjunto vacío",
    "D016": "frase repetida en muchas respuestas",
    # Key points and dangers of an evaluation example (afinar.data.keypoints).
    "K001": "claves o peligros con un tipo incorrecto",
    "K002": "alternativa vacía en claves o peligros",
    "K003": "un peligro o una clave que coincide con casi cualquier texto",
    "K004": "el archivo de claves nombra una línea que no existe",
}


@dataclass(frozen=True)
class Problem:
    source: str
    line: int | None
    code: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def render(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        label = "" if self.severity == "error" else " (aviso)"
        return f"{where}: {self.code}{label}: {self.message}"


@dataclass
class Example:
    source: str
    line: int
    format: str
    messages: list[dict] = field(default_factory=list)
    claves: list[list[str]] | None = None  # key points of a correct answer (each: alternatives)
    peligros: list[str] | None = None  # advice that must never appear unnegated

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def shipped_dataset(name: str) -> Path:
    """Datasets that ship inside the package, named with or without `.jsonl`."""
    filename = name if name.endswith(".jsonl") else f"{name}.jsonl"
    path = Path(str(importlib.resources.files("afinar.datasets").joinpath(filename)))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.jsonl"))
        raise AfinarError("D011", f"no hay un dataset incluido llamado '{name}'.", hint=f"incluidos: {', '.join(available)}")
    return path


# The same three fields with the Spanish names a nurse or a teacher writes by hand (or exports from a spreadsheet).
SPANISH_KEYS = {"instruction": "pregunta", "input": "contexto", "output": "respuesta"}


def detect_format(obj: dict) -> str | None:
    if "messages" in obj:
        return "chat"
    if "instruction" in obj or "output" in obj:
        return "structured" if isinstance(obj.get("input"), (dict, list)) else "alpaca"
    if "pregunta" in obj or "respuesta" in obj:
        return "pregunta"
    return None


def _type_name(value) -> str:
    return {dict: "objeto", list: "lista", str: "texto", int: "número", float: "número", bool: "booleano"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _text_field(obj: dict, key: str, problems: list, src: str, line: int, required: bool = True) -> str | None:
    if key not in obj:
        if required:
            problems.append(Problem(src, line, "D004", f"falta el campo '{key}'"))
        return None
    value = obj[key]
    if not isinstance(value, str):
        problems.append(Problem(src, line, "D006", f"el campo '{key}' debe ser texto, no {_type_name(value)}"))
        return None
    if required and not value.strip():
        problems.append(Problem(src, line, "D005", f"el campo '{key}' está vacío"))
        return None
    return value


def _from_instruction(obj: dict, fmt: str, src: str, line: int, problems: list) -> list[dict] | None:
    before = len(problems)
    key = SPANISH_KEYS if fmt == "pregunta" else {k: k for k in SPANISH_KEYS}
    instruction = _text_field(obj, key["instruction"], problems, src, line)
    output = _text_field(obj, key["output"], problems, src, line)
    raw_input = obj.get(key["input"])
    if fmt == "structured":
        if raw_input is None:
            problems.append(Problem(src, line, "D004", "falta el campo 'input' (objeto con los datos del caso)"))
        elif not isinstance(raw_input, (dict, list)):
            problems.append(Problem(src, line, "D006", f"el campo 'input' debe ser un objeto, no {_type_name(raw_input)}"))
        elif not raw_input:
            problems.append(Problem(src, line, "D005", "el campo 'input' está vacío"))
        # Compact JSON, as the epicrisis guide serialises the case: fewer tokens, same content.
        extra = json.dumps(raw_input, ensure_ascii=False, separators=(",", ":")) if raw_input else ""
    else:
        extra = _text_field(obj, key["input"], problems, src, line, required=False) or ""
    if len(problems) > before:
        return None
    user = instruction.strip() + ("\n" + extra.strip() if extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}]


def _from_messages(obj: dict, src: str, line: int, problems: list) -> list[dict] | None:
    before = len(problems)
    messages = obj["messages"]
    if not isinstance(messages, list):
        problems.append(Problem(src, line, "D006", f"el campo 'messages' debe ser una lista, no {_type_name(messages)}"))
        return None
    if not messages:
        problems.append(Problem(src, line, "D005", "el campo 'messages' está vacío"))
        return None
    clean = []
    for i, message in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(Problem(src, line, "D006", f"'{name}' debe ser un objeto, no {_type_name(message)}"))
            continue
        role, content = message.get("role"), message.get("content")
        if role is None:
            problems.append(Problem(src, line, "D004", f"falta '{name}.role'"))
        elif role not in ROLES:
            problems.append(Problem(src, line, "D007", f"'{name}.role' no es un rol válido ({', '.join(ROLES)})"))
        if content is None:
            problems.append(Problem(src, line, "D004", f"falta '{name}.content'"))
        elif not isinstance(content, str):
            problems.append(Problem(src, line, "D006", f"'{name}.content' debe ser texto, no {_type_name(content)}"))
        elif not content.strip():
            problems.append(Problem(src, line, "D005", f"'{name}.content' está vacío"))
        clean.append({"role": role, "content": content.strip() if isinstance(content, str) else content})
    if len(problems) > before:
        return None
    # Order: optional system first, then user/assistant alternating, ending with the assistant.
    turns = clean[1:] if clean[0]["role"] == "system" else clean
    expected = "user"
    for i, message in enumerate(turns):
        index = i + (len(clean) - len(turns))
        if message["role"] != expected:
            problems.append(
                Problem(src, line, "D008", f"'messages[{index}]' es '{message['role']}' y se esperaba '{expected}'")
            )
            return None
        expected = "assistant" if expected == "user" else "user"
    if not turns or turns[-1]["role"] != "assistant":
        problems.append(Problem(src, line, "D008", "la conversación debe terminar con un mensaje de 'assistant'"))
        return None
    return clean


def parse_record(obj, fmt: str, src: str, line: int, problems: list) -> Example | None:
    if not isinstance(obj, dict):
        problems.append(Problem(src, line, "D002", f"la línea es {_type_name(obj)}, se esperaba un objeto {{...}}"))
        return None
    detected = detect_format(obj)
    chosen = detected if fmt == "auto" else fmt
    if chosen is None:
        # Field names help diagnose a format, but only identifier-like ones: a key can hold text too.
        shown = sorted(k for k in obj if re.fullmatch(r"[A-Za-z_][\w-]{0,30}", k))[:6]
        hidden = len(obj) - len(shown)
        keys = (", ".join(shown) + (f" y {hidden} más" if hidden else "")) or "ninguna"
        problems.append(
            Problem(src, line, "D003", f"no se reconoce el formato (claves: {keys}); se espera 'messages', 'instruction'+'output' o 'pregunta'+'respuesta'")
        )
        return None
    if chosen == "chat":
        if "messages" not in obj:
            problems.append(Problem(src, line, "D004", "falta el campo 'messages' (formato chat)"))
            return None
        messages = _from_messages(obj, src, line, problems)
    else:
        if chosen == "alpaca" and isinstance(obj.get("input"), (dict, list)):
            problems.append(
                Problem(src, line, "D006", "el campo 'input' es un objeto: usa format: structured (o auto)")
            )
            return None
        messages = _from_instruction(obj, chosen, src, line, problems)
    if messages is None:
        return None
    keypoints = parse_keypoints(obj, src, line, problems)
    if keypoints is None:
        return None
    return Example(src, line, chosen, messages, *keypoints)


def parse_keypoints(obj: dict, src: str, line: int, problems: list) -> tuple[list | None, list | None] | None:
    """(claves, peligros) of a line, each None when absent; None (and problems) when they are malformed.

    `claves`: a list of key points, each a list of alternatives (a plain string is taken as one alternative);
    `peligros`: a list of strings. A pattern with no content word ("el", "de la") would match almost any text."""
    before = len(problems)
    claves, peligros = obj.get("claves"), obj.get("peligros")
    if claves is not None:
        if not isinstance(claves, list):
            problems.append(Problem(src, line, "K001", f"'claves' debe ser una lista de listas de texto, no {_type_name(claves)}"))
            claves = None
        else:
            claves = [[c] if isinstance(c, str) else c for c in claves]
            for i, alternatives in enumerate(claves):
                if not isinstance(alternatives, list) or not alternatives:
                    problems.append(Problem(src, line, "K001", f"'claves[{i}]' debe ser una lista no vacía de textos "
                                            f"(alternativas), no {_type_name(alternatives)}"))
                    continue
                for j, alternative in enumerate(alternatives):
                    _check_pattern(alternative, f"claves[{i}][{j}]", src, line, problems)
    if peligros is not None:
        if not isinstance(peligros, list):
            problems.append(Problem(src, line, "K001", f"'peligros' debe ser una lista de textos, no {_type_name(peligros)}"))
        else:
            for i, danger in enumerate(peligros):
                _check_pattern(danger, f"peligros[{i}]", src, line, problems)
    if len(problems) > before:
        return None
    return (claves or None), (peligros or None)


def _check_pattern(value, name: str, src: str, line: int, problems: list) -> None:
    if not isinstance(value, str):
        problems.append(Problem(src, line, "K001", f"'{name}' debe ser texto, no {_type_name(value)}"))
    elif not value.strip():
        problems.append(Problem(src, line, "K002", f"'{name}' está vacío"))
    elif reason := matches_everything(value):
        problems.append(Problem(src, line, "K003", f"'{name}' {reason}: escribe la acción o el dato concreto"))


def iter_jsonl(path: Path, problems: list) -> Iterator[tuple[int, object]]:
    """(line number, decoded JSON) for every non-blank line; problems for the rest."""
    src = str(path)
    if not path.is_file():
        problems.append(Problem(src, None, "D011", "no existe el archivo"))
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problems.append(Problem(src, number, "D013", f"byte no UTF-8 en la columna {exc.start + 1}"))
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(Problem(src, number, "D001", f"JSON inválido: {_json_reason(exc)} (columna {exc.colno})"))


def _json_reason(exc: json.JSONDecodeError) -> str:
    reasons = {
        "Expecting value": "se esperaba un valor",
        "Expecting property name enclosed in double quotes": "los nombres de campo van entre comillas dobles",
        "Expecting ',' delimiter": "falta una coma",
        "Expecting ':' delimiter": "faltan dos puntos",
        "Unterminated string starting at": "texto sin cerrar",
        "Extra data": "hay datos después del objeto (¿dos objetos en una línea?)",
        "Invalid control character at": "carácter de control sin escapar (¿salto de línea dentro del texto?)",
    }
    return reasons.get(exc.msg, exc.msg)


def load_examples(path: Path, fmt: str = "auto", problems: list | None = None) -> list[Example]:
    problems = [] if problems is None else problems
    examples = []
    for number, obj in iter_jsonl(Path(path), problems):
        example = parse_record(obj, fmt, str(path), number, problems)
        if example is not None:
            examples.append(example)
    return examples


def keypoints_file(data: Path) -> Path:
    """Where the key points of a data file may live apart from it: datos.jsonl → datos.claves.jsonl."""
    return Path(data).with_suffix(".claves.jsonl")


def attach_keypoints(examples: list[Example], path: Path, problems: list) -> None:
    """Key points and dangers from a side file (`{"linea": N, "claves": [...], "peligros": [...]}` per line) onto the
    examples of line N of the data file. A line of the side file that names no example is an error (K004): a key point
    that silently lands nowhere would leave an answer unmeasured."""
    src = str(path)
    by_line = {e.line: e for e in examples}
    for number, obj in iter_jsonl(Path(path), problems):
        if not isinstance(obj, dict):
            problems.append(Problem(src, number, "D002", f"la línea es {_type_name(obj)}, se esperaba un objeto {{...}}"))
            continue
        target = obj.get("linea")
        if not isinstance(target, int) or isinstance(target, bool):
            problems.append(Problem(src, number, "K004", f"'linea' debe ser el número de una línea del archivo de datos, "
                                    f"no {_type_name(target)}"))
            continue
        if target not in by_line:
            problems.append(Problem(src, number, "K004", f"'linea' {target} no es ningún ejemplo del archivo de datos"))
            continue
        keypoints = parse_keypoints(obj, src, number, problems)
        if keypoints is not None:
            example = by_line[target]
            example.claves = keypoints[0] or example.claves
            example.peligros = keypoints[1] or example.peligros
