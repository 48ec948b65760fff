"""Read training examples into one shape, a list of chat messages: JSONL (alpaca, chat, structured, pregunta) here,
spreadsheets and tables (.csv, .tsv, .xlsx, .ods, .parquet, .json) through `afinar.data.tables`.

Flow: `load_examples` looks at the suffix → a table goes to `tables.table_examples`, anything else is read line by
line (`records.load_jsonl`); both end in `records.parse_record`, so a JSONL and the same rows in a spreadsheet give
identical messages. The types, codes and record parsing live in `afinar.data.records` (re-exported here, where the
rest of afinar imports them from) so that `tables` can use them without importing this module back.

Every problem found is collected (not raised) with file, line (or sheet and row), field and a code, and never with
the row's text: datasets here can hold patient data.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

from afinar.data import tables
from afinar.data.records import (
    CODES,
    DRAFT_SKIPPED,
    DRAFT_USED,
    ROLES,
    SPANISH_KEYS,
    TABLE_SUFFIXES,
    Example,
    Problem,
    _type_name,
    detect_format,
    draft_state,
    drafts_warning,
    is_skipped_draft,
    iter_jsonl,
    jsonl_records,
    load_jsonl,
    parse_keypoints,
    parse_record,
)
from afinar.errors import AfinarError

# Re-exported from afinar.data.records: the rest of afinar (and the studio) imports them from here.
__all__ = [
    "CODES",
    "DRAFT_SKIPPED",
    "DRAFT_USED",
    "ROLES",
    "SPANISH_KEYS",
    "TABLE_SUFFIXES",
    "Example",
    "Problem",
    "attach_keypoints",
    "detect_format",
    "draft_state",
    "drafts_warning",
    "is_skipped_draft",
    "iter_jsonl",
    "jsonl_records",
    "keypoints_file",
    "load_examples",
    "load_jsonl",
    "parse_keypoints",
    "parse_record",
    "shipped_dataset",
]


def shipped_dataset(name: str) -> Path:
    """Datasets that ship inside the package, named with or without `.jsonl`."""
    filename = name if name.endswith(".jsonl") else f"{name}.jsonl"
    path = Path(str(importlib.resources.files("afinar.datasets").joinpath(filename)))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.jsonl"))
        raise AfinarError("D011", f"no hay un dataset incluido llamado '{name}'.", hint=f"incluidos: {', '.join(available)}")
    return path


def load_examples(path: Path, fmt: str = "auto", problems: list | None = None, columnas: dict | None = None,
                  hoja: str | int | None = None) -> list[Example]:
    """Every valid example of a data file; problems (never raised) for the rest.

    A table (`tables.is_table`) is read with its column mapping `columnas` (field → column name; None: detected from
    the header) and its sheet `hoja` (name or 1-based number; None: the first); `fmt` then only applies to a .json
    array of records. Anything else is JSONL, where `columnas`/`hoja` make no sense (D029)."""
    problems = [] if problems is None else problems
    if tables.is_table(path):
        return tables.table_examples(path, columnas, hoja, problems, fmt)
    if columnas or hoja is not None:
        problems.append(Problem(str(path), None, "D029", "'columnas' y 'hoja' solo valen para hojas de cálculo y "
                                f"tablas ({', '.join(TABLE_SUFFIXES)}); quítalas de esta fuente"))
    return load_jsonl(Path(path), fmt, problems)


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
