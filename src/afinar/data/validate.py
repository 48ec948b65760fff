"""Check a recipe's data in one pass (every problem, by file:line:code) and prepare it for training."""
from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from afinar.config import DataSection
from afinar.data import split as splitting
from afinar.data.formats import Example, Problem, load_examples
from afinar.data.repeated import describe, find_repeated
from afinar.errors import AfinarError


@dataclass
class PreparedData:
    train: list[Example]
    val: list[Example]
    problems: list[Problem]
    per_source: dict[str, int]
    train_encoded: list = field(default_factory=list)
    val_encoded: list = field(default_factory=list)
    length_stats: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]


def _content_key(example: Example) -> str:
    return json.dumps(example.messages, ensure_ascii=False, sort_keys=True)


def gather(data: DataSection) -> PreparedData:
    """Load every source, collect all problems, drop exact duplicates, split, report leakage."""
    problems: list[Problem] = []
    examples: list[Example] = []
    per_source: dict[str, int] = {}
    for source in data.sources:
        before = len(problems)
        loaded = load_examples(Path(source.path), source.format, problems, columnas=source.columnas, hoja=source.hoja)
        # A file that could not be read at all (missing, a damaged spreadsheet, columns not found) already says why.
        whole_file = any(p.line is None and p.severity == "error" for p in problems[before:])
        if not loaded and not whole_file:
            problems.append(Problem(source.path, None, "D012", "el archivo no contiene ningún ejemplo válido"))
        per_source[source.path] = len(loaded)
        examples.extend(loaded)

    first_seen: dict[str, Example] = {}
    unique = []
    for example in examples:
        key = _content_key(example)
        if key in first_seen:
            problems.append(
                Problem(example.source, example.line, "D009", f"duplicado exacto de {first_seen[key].where}; se ignora", "warning")
            )
            continue
        first_seen[key] = example
        unique.append(example)
    for path in per_source:
        per_source[path] = sum(1 for e in unique if e.source == path)

    if data.val_file:
        val = load_examples(Path(data.val_file), "auto", problems)
        train = unique
    else:
        train, val = splitting.split(unique, data.val_fraction, data.split_seed)
    if unique and not train:
        problems.append(Problem(data.sources[0].path, None, "D015", "no queda ningún ejemplo para entrenar"))
    problems.extend(splitting.leakage(train, val))
    return PreparedData(train, val, problems, per_source)


def last_answers(examples: list[Example]) -> list[str]:
    """The last assistant turn of each example: the text the model learns to write."""
    return [next((m["content"] for m in reversed(e.messages) if m["role"] == "assistant"), "") for e in examples]


def repeated(prepared: PreparedData) -> list[dict]:
    """Sentences that many training answers repeat (`afinar.data.repeated`); each is also added to
    `prepared.problems` as a D016 warning (the repeated words and counts, never an answer)."""
    found = find_repeated(last_answers(prepared.train))
    for item, holders in found:
        sources = ", ".join(dict.fromkeys(prepared.train[i].source for i in holders))
        prepared.problems.append(Problem(sources, None, "D016", describe(item, len(prepared.train)), "warning"))
    return [item for item, _ in found]


def encode(prepared: PreparedData, tokenizer, data: DataSection) -> PreparedData:
    from afinar.data.templates import encode_examples

    prepared.train_encoded, p_train, s_train = encode_examples(
        tokenizer, prepared.train, data.system_prompt, data.max_length, data.overlength
    )
    prepared.val_encoded, p_val, s_val = encode_examples(
        tokenizer, prepared.val, data.system_prompt, data.max_length, data.overlength
    )
    prepared.problems.extend(p_train + p_val)
    prepared.length_stats = {"train": s_train, "val": s_val}
    if prepared.train and not prepared.train_encoded:
        where = data.sources[0].path
        prepared.problems.append(
            Problem(where, None, "D015", f"ningún ejemplo de entrenamiento cabe en max_length={data.max_length}")
        )
    return prepared


def fingerprint(prepared: PreparedData, data: DataSection) -> dict:
    """What the model was trained on, without the text: file hashes, counts and the split."""
    files = {}
    for source in data.sources:
        digest = hashlib.sha256(Path(source.path).read_bytes()).hexdigest()
        files[source.path] = {"sha256": digest, "examples": prepared.per_source.get(source.path, 0), "weight": source.weight}
    split_hash = hashlib.sha256("\n".join(e.where for e in prepared.val).encode()).hexdigest()
    return {
        "files": files,
        "train_examples": len(prepared.train),
        "val_examples": len(prepared.val),
        "train_sequences": len(prepared.train_encoded),
        "val_sequences": len(prepared.val_encoded),
        "val_split_sha256": split_hash,
        "formats": dict(Counter(e.format for e in prepared.train + prepared.val)),
        "length": prepared.length_stats,
    }


def report(prepared: PreparedData, out=print, max_lines: int = 200) -> None:
    """Print problems (never row text) and a summary, in Spanish."""
    report_summary(prepared.problems, prepared.per_source, len(prepared.train), len(prepared.val),
                   prepared.length_stats, out=out, max_lines=max_lines)


def report_summary(problems: list[Problem], per_source: dict, n_train: int, n_val: int, length_stats: dict,
                   out=print, max_lines: int = 200) -> None:
    """The report from counts alone, so a run that reads its data from the tokenized cache prints the same."""
    errors = [p for p in problems if p.severity == "error"]
    shown = errors + [p for p in problems if p.severity != "error"]
    for problem in shown[:max_lines]:
        out(problem.render())
    if len(shown) > max_lines:
        out(f"... y {len(shown) - max_lines} problemas más")
    codes = Counter(p.code for p in shown)
    for path, count in per_source.items():
        out(f"  {path}: {count} ejemplos válidos")
    out(f"  entrenamiento: {n_train} · validación: {n_val}")
    for name, stats in length_stats.items():
        if stats:
            out(
                f"  tokens ({name}): máximo {stats['max_tokens']}; demasiado largos {stats['too_long']} "
                f"(descartados {stats['dropped']}, truncados {stats['truncated']})"
            )
    if codes:
        out("  resumen: " + ", ".join(f"{code}×{n}" for code, n in sorted(codes.items())))
    out(f"{len(errors)} errores, {len(shown) - len(errors)} avisos.")


def raise_if_errors(prepared: PreparedData) -> None:
    if prepared.errors:
        first = prepared.errors[:20]
        more = f"\n  ... y {len(prepared.errors) - 20} más" if len(prepared.errors) > 20 else ""
        raise AfinarError(
            "D000",
            f"los datos tienen {len(prepared.errors)} errores:\n  " + "\n  ".join(p.render() for p in first) + more,
            hint="corrígelos y comprueba con: afinar validate RECETA",
        )


def data_of(path: Path, max_length: int | None = None, columnas: dict | None = None, hoja: str | int | None = None):
    """(data section, recipe or None): a recipe's data, or a section made for one bare data file, a JSONL or a table
    with its `columnas`/`hoja` (max_length or 512)."""
    from afinar.config import DataSource, load_recipe
    from afinar.data.tables import is_table

    if path.suffix.lower() in (".yaml", ".yml"):
        if columnas or hoja is not None:
            raise AfinarError("D029", "--columnas y --hoja van con un archivo de datos; en una receta se escriben en "
                              "su fuente (columnas: {…}, hoja: …).", where=str(path))
        recipe = load_recipe(path)
        return recipe.data, recipe
    if (columnas or hoja is not None) and not is_table(path):
        raise AfinarError("D029", "--columnas y --hoja solo valen para hojas de cálculo y tablas "
                          "(.csv, .tsv, .xlsx, .ods, .parquet, .json).", where=str(path))
    source = DataSource(path=str(path), columnas=columnas, hoja=hoja)
    return DataSection(sources=[source], max_length=max_length or 512), None


def try_tokenizer(base: str, template: str = "auto"):
    """(tokenizer with the recipe's chat format, "") or (None, "CODE: why"): checks that need no tokenizer still run
    without one (e.g. offline, or a base model whose recipe names no template)."""
    from afinar.data.chat_format import recipe_tokenizer
    from afinar.models import resolve_base

    try:
        return recipe_tokenizer(resolve_base(base), template)[0], ""
    except AfinarError as exc:
        return None, f"{exc.code}: {exc.message}"


def validate(path: str | Path, base: str | None = None, max_length: int | None = None, columnas: dict | None = None,
             hoja: str | int | None = None) -> int:
    """`afinar validate RECIPE_OR_DATA`: check recipe and data (JSONL or a table, with its `columnas`/`hoja`) without
    training; returns the exit code."""
    path = Path(path)
    data, recipe = data_of(path, max_length, columnas, hoja)
    if recipe is not None:
        print(f"Receta {path}: válida (nombre '{recipe.name}', base '{recipe.model.base}').")
        base = base or recipe.model.base
    prepared = gather(data)
    repeated(prepared)
    if base and not prepared.errors:
        tokenizer, reason = try_tokenizer(base, data.template)
        if tokenizer is None:
            print(f"aviso: sin tokenizador no se comprueba la longitud en tokens ({reason})")
        else:
            encode(prepared, tokenizer, data)
    elif not base:
        print("(sin --base no se comprueba la longitud en tokens)")
    report(prepared)
    return 1 if prepared.errors else 0


def validate_arguments(p: argparse.ArgumentParser) -> None:
    from afinar.data.tables import parse_columnas

    p.add_argument("path", help="receta .yaml, datos .jsonl o una tabla (.csv, .tsv, .xlsx, .ods, .parquet, .json)")
    p.add_argument("--base",
                   help="modelo cuyo tokenizador mide las longitudes (con un archivo de datos)")
    p.add_argument("--max-length", type=int,
                   help="longitud máxima en tokens (con un archivo de datos)")
    p.add_argument("--columnas", type=parse_columnas, metavar="CAMPO=COLUMNA,…",
                   help="con una tabla: qué columna es cada campo, p. ej. "
                   '"pregunta=Consulta del paciente,respuesta=Respuesta" (por defecto se reconocen por su nombre)')
    p.add_argument("--hoja", metavar="NOMBRE",
                   help="con un .xlsx/.ods: la hoja, por nombre o número (por defecto la primera)")
