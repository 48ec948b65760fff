"""One record (a JSONL line, a JSON array item or a spreadsheet row) → one example: a list of chat messages.

The shared layer under `formats` (JSONL files and the dispatch to tables) and `tables` (spreadsheets): the types
`Problem` and `Example`, the error codes, `parse_record` and the JSONL line reader. It imports neither of them, so
`formats` can call `tables` and `tables` can read JSONL without an import cycle.

Every problem found is collected (not raised) with file, line (or sheet and row), field and a code, and never with
the row's text: datasets here can hold patient data.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from afinar.data.keypoints import matches_everything

# Files read as tables (afinar.data.tables); a problem in one of them is placed by row ("fila"), not by line.
TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".ods", ".parquet", ".json")

# Drafts written by `afinar borradores` carry an "estado": only reviewed ones are trained on.
DRAFT_USED = ("aceptado", "corregido")
DRAFT_SKIPPED = ("sin revisar", "descartado")

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
    "D017": "borradores sin revisar o descartados: no se usan para entrenar",
    # Spreadsheets and tables (afinar.data.tables) and `afinar convertir`.
    "D020": "no se puede leer la hoja de cálculo (dañada o no es del formato de su extensión)",
    "D021": "hoja de cálculo protegida con contraseña",
    "D022": "CSV mal formado (comillas sin cerrar)",
    "D023": "celdas con fórmulas sin valores guardados",
    "D024": "la hoja no existe",
    "D025": "no se encuentra la fila de encabezados",
    "D026": "faltan las columnas de la pregunta o la respuesta",
    "D027": "dos columnas para el mismo campo",
    "D028": "'columnas' nombra una columna que no existe",
    "D029": "'columnas' u 'hoja' en un archivo que no es una tabla",
    "D030": "un carácter que la codificación elegida no puede guardar",
    "D031": "el archivo de salida ya existe",
    "D032": "tipo de archivo no admitido",
    "D033": "el .json no es una lista de objetos",
    "D034": "conversación de varios turnos: no cabe en una fila",
    "D035": "'estado' de borrador desconocido",
    # Key points and dangers of an evaluation example (afinar.data.keypoints).
    "K001": "claves o peligros con un tipo incorrecto",
    "K002": "alternativa vacía en claves o peligros",
    "K003": "un peligro o una clave que coincide con casi cualquier texto",
    "K004": "el archivo de claves nombra una línea que no existe",
}


@dataclass(frozen=True)
class Problem:
    source: str
    line: int | None  # the JSONL line, or the row as the spreadsheet app shows it (the item of a .json array)
    code: str
    message: str
    severity: str = "error"  # "error" | "warning"
    sheet: str | None = None  # the sheet of a spreadsheet source

    def place(self) -> str:
        """`datos.jsonl:5` for a JSONL; `datos.xlsx, hoja «Casos», fila 5` for a table: a spreadsheet user looks
        for a sheet and a row number."""
        if self.sheet is None and not self.source.lower().endswith(TABLE_SUFFIXES):
            return f"{self.source}:{self.line}" if self.line else self.source
        row = "elemento" if self.source.lower().endswith(".json") else "fila"
        sheet = [f"hoja «{self.sheet}»"] if self.sheet else []
        return ", ".join([self.source, *sheet] + ([f"{row} {self.line}"] if self.line else []))

    def render(self) -> str:
        label = "" if self.severity == "error" else " (aviso)"
        return f"{self.place()}: {self.code}{label}: {self.message}"


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


def draft_state(obj) -> str | None:
    """The review state of a draft line (lowercase, trimmed: a spreadsheet may say «Aceptado »); None if not a
    draft."""
    if not isinstance(obj, dict) or "estado" not in obj:
        return None
    value = obj["estado"]
    return value.strip().lower() if isinstance(value, str) else _type_name(value)


def is_skipped_draft(obj) -> bool:
    """A draft nobody accepted yet (or one that was discarded): never trained on, counted in one D017 per file."""
    return draft_state(obj) in DRAFT_SKIPPED


def drafts_warning(src: str, count: int, sheet: str | None = None) -> Problem:
    return Problem(src, None, "D017", f"{count} borradores sin revisar o descartados no se usan: revísalos en el "
                   "estudio (Datos → Borradores)", "warning", sheet)


def parse_record(obj, fmt: str, src: str, line: int, problems: list) -> Example | None:
    if not isinstance(obj, dict):
        problems.append(Problem(src, line, "D002", f"la línea es {_type_name(obj)}, se esperaba un objeto {{...}}"))
        return None
    state = draft_state(obj)
    if state is not None and state not in DRAFT_USED:
        # Unreviewed or discarded drafts are skipped without a problem of their own (the loader counts them);
        # any other state is a typo that must not silently train (or silently drop) a line.
        if state not in DRAFT_SKIPPED:
            problems.append(Problem(src, line, "D035", "'estado' no es válido; se espera "
                                    + ", ".join(f"'{s}'" for s in DRAFT_USED + DRAFT_SKIPPED)))
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


def jsonl_records(path: Path, fmt: str = "auto", problems: list | None = None) -> list[tuple[Example, dict]]:
    """(example, its line's object) for every valid line of a JSONL file; problems for the rest, plus one D017
    warning for the drafts skipped (unreviewed or discarded)."""
    problems = [] if problems is None else problems
    return numbered_records(iter_jsonl(Path(path), problems), str(path), fmt, problems)


def numbered_records(items, source: str, fmt: str, problems: list) -> list[tuple[Example, dict]]:
    """(example, its object) for each (line or element number, object) that parses; problems for the rest, plus one
    D017 warning for the drafts skipped. A JSONL's lines and a .json array's elements both go through here."""
    pairs, skipped = [], 0
    for number, obj in items:
        skipped += is_skipped_draft(obj)
        example = parse_record(obj, fmt, source, number, problems)
        if example is not None:
            pairs.append((example, obj))
    if skipped:
        problems.append(drafts_warning(source, skipped))
    return pairs


def load_jsonl(path: Path, fmt: str = "auto", problems: list | None = None) -> list[Example]:
    """Every valid example of a JSONL file (see `jsonl_records`)."""
    return [example for example, _ in jsonl_records(path, fmt, problems)]
