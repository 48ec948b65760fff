"""`afinar import smc`: the Spanish Medical Corpus (somosnlp/SMC, ~2.1M rows) as chat examples.

In SMC each row is one text: `raw_text` is a question, a clinical case or open text (`raw_text_type`), and
`topic` holds what goes with it (`topic_type`: the answer to a question, the diagnosis of a case…).
Questions become user → answer; clinical cases get a clinical-case system prompt and ask for the
diagnosis; open text has no target and is skipped. Rows are streamed (parquet record batches, JSONL
lines, or the Hub in streaming mode) and written to a temporary file renamed at the end, so memory stays
flat at 2M rows and an interrupted import leaves nothing behind.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from afinar.atomic import atomic_open
from afinar.errors import AfinarError

HUB_ID = "somosnlp/SMC"
COLUMNS = ("raw_text", "topic", "speciallity", "raw_text_type", "topic_type", "source", "country", "document_id")
NEEDED = ("raw_text", "topic", "speciallity", "raw_text_type", "topic_type")
TYPES = ("question", "clinic_case")
BATCH_ROWS = 8192

CLINICAL_CASE_SYSTEM = (
    "Eres un asistente médico. Lees el caso clínico que te presentan y respondes en español con el "
    "diagnóstico más probable, de forma breve y precisa."
)
QUESTION_SYSTEM = (
    "Eres un asistente médico. Respondes en español a preguntas de salud de forma clara y precisa, y "
    "recomiendas consultar a un profesional cuando corresponde."
)
CLINICAL_CASE_PROMPT = "Caso clínico:\n{case}\n\n¿Cuál es el diagnóstico más probable?"

# Why rows were not converted (Spanish labels for the summary).
SKIP_REASONS = {
    "type": "tipo de texto sin respuesta (p. ej. open_text)",
    "type_filter": "tipo excluido con --tipo",
    "speciality": "especialidad excluida con --especialidad",
    "empty_text": "raw_text vacío",
    "no_target": "sin respuesta o diagnóstico en 'topic'",
}


@dataclass
class ImportSummary:
    read: int = 0
    written: int = 0
    by_type: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)


def _check_columns(found, where: str) -> None:
    missing = [c for c in NEEDED if c not in found]
    if missing:
        raise AfinarError(
            "I002",
            f"faltan columnas del esquema de SMC: {', '.join(missing)}",
            where=where,
            hint=f"se esperan las columnas {', '.join(COLUMNS)}",
        )


def _parquet_rows(path: Path) -> tuple[int | None, Iterator[dict]]:
    import pyarrow.parquet as pq

    try:
        # pre_buffer=False: read one row group at a time instead of prefetching ranges (flat memory at 2M rows).
        reader = pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # pyarrow raises several types for a damaged or non-parquet file
        raise AfinarError("I001", f"no se puede leer como parquet ({type(exc).__name__}).", where=str(path)) from exc
    _check_columns(reader.schema_arrow.names, str(path))

    def rows():
        try:
            for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=list(NEEDED)):
                yield from batch.to_pylist()
        except AfinarError:
            raise
        except Exception as exc:
            raise AfinarError("I001", f"parquet dañado a mitad de lectura ({type(exc).__name__}).", where=str(path)) from exc

    return reader.metadata.num_rows, rows()


def _jsonl_rows(path: Path) -> tuple[None, Iterator[dict]]:
    def rows():
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AfinarError("I001", f"JSON inválido (columna {exc.colno}).", where=f"{path}:{number}") from exc
                if not isinstance(row, dict):
                    raise AfinarError("I001", "la línea no es un objeto JSON.", where=f"{path}:{number}")
                _check_columns(row, f"{path}:{number}")
                yield row

    return None, rows()


def _hub_rows(repo: str) -> tuple[int | None, Iterator[dict]]:
    try:
        from datasets import load_dataset

        stream = load_dataset(repo, split="train", streaming=True)
    except Exception as exc:
        raise AfinarError(
            "I004",
            f"no se pudo abrir '{repo}' en el Hub de Hugging Face ({type(exc).__name__}).",
            hint="sin conexión, descarga los archivos parquet de SMC y usa --entrada ARCHIVO.parquet",
        ) from exc
    columns = getattr(stream, "column_names", None)
    if columns:
        _check_columns(columns, repo)
    return 2_136_490 if repo == HUB_ID else None, iter(stream)


def open_rows(inputs: list[str] | None, repo: str = HUB_ID) -> list[tuple[str, int | None, Iterator[dict]]]:
    """(name, row count if known, row iterator) per source; local files when given, else the Hub."""
    if not inputs:
        return [(repo, *_hub_rows(repo))]
    sources = []
    for raw in inputs:
        path = Path(raw)
        if not path.is_file():
            raise AfinarError("I001", "no existe el archivo.", where=str(path))
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            sources.append((str(path), *_parquet_rows(path)))
        elif suffix in (".jsonl", ".json"):
            sources.append((str(path), *_jsonl_rows(path)))
        else:
            raise AfinarError("I001", "formato no admitido: usa .parquet o .jsonl.", where=str(path))
    return sources


def convert_row(row: dict, types: tuple[str, ...], specialities: set[str] | None) -> tuple[dict | None, str]:
    """(chat example or None, kind or skip reason)."""
    kind = (row.get("raw_text_type") or "").strip()
    if kind not in TYPES:
        return None, "type"
    if kind not in types:
        return None, "type_filter"
    if specialities is not None and (row.get("speciallity") or "").strip().lower() not in specialities:
        return None, "speciality"
    text = (row.get("raw_text") or "").strip()
    if not text:
        return None, "empty_text"
    target = (row.get("topic") or "").strip()
    if not target:
        return None, "no_target"
    if kind == "question":
        messages = [
            {"role": "system", "content": QUESTION_SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": target},
        ]
    else:
        messages = [
            {"role": "system", "content": CLINICAL_CASE_SYSTEM},
            {"role": "user", "content": CLINICAL_CASE_PROMPT.format(case=text)},
            {"role": "assistant", "content": target},
        ]
    return {"messages": messages}, kind


def import_smc(
    output: str | Path,
    inputs: list[str] | None = None,
    specialities: list[str] | None = None,
    types: list[str] | None = None,
    max_examples: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportSummary:
    """Convert SMC rows into chat JSONL at `output` (atomically). Raises AfinarError on bad input."""
    from tqdm.auto import tqdm

    output = Path(output)
    if output.exists() and not overwrite:
        raise AfinarError("I005", "el archivo de salida ya existe.", where=str(output), hint="usa --sobrescribir")
    wanted_types = tuple(types or TYPES)
    unknown = [t for t in wanted_types if t not in TYPES]
    if unknown:
        raise AfinarError("I006", f"tipo desconocido: {', '.join(unknown)}", hint=f"tipos: {', '.join(TYPES)}")
    wanted_specialities = {s.strip().lower() for s in specialities} if specialities else None

    sources = open_rows(inputs)
    summary = ImportSummary()
    # Temp file + rename: an interrupted import, or one with zero usable rows, leaves nothing behind.
    with atomic_open(output) as handle:
        for name, total, rows in sources:
            bar = tqdm(rows, total=total, desc=f"Importando {Path(name).name}", unit="filas",
                       disable=not progress, dynamic_ncols=True, mininterval=0.5)
            for row in bar:
                if max_examples is not None and summary.written >= max_examples:
                    break  # stop reading: on the Hub the rest would be downloaded for nothing
                summary.read += 1
                example, label = convert_row(row, wanted_types, wanted_specialities)
                if example is None:
                    summary.skipped[label] += 1
                    continue
                handle.write(json.dumps(example, ensure_ascii=False) + "\n")
                summary.written += 1
                summary.by_type[label] += 1
            bar.close()
        if summary.written == 0:
            raise AfinarError(
                "I003",
                f"ninguna de las {summary.read} filas leídas se pudo convertir; no se escribe nada.",
                hint="revisa los filtros --tipo y --especialidad (resumen: "
                + (", ".join(f"{SKIP_REASONS[k]}: {v}" for k, v in summary.skipped.items()) or "sin filas") + ")",
            )
    return summary


def print_summary(summary: ImportSummary, output: str | Path, out=print) -> None:
    out(f"Filas leídas: {summary.read:,} · ejemplos escritos: {summary.written:,} en {output}")
    for kind, n in sorted(summary.by_type.items()):
        out(f"  {kind}: {n:,}")
    for reason, n in sorted(summary.skipped.items(), key=lambda kv: -kv[1]):
        out(f"  omitidas ({SKIP_REASONS[reason]}): {n:,}")
    out(f"Siguiente paso: afinar inspect {output}")


def import_smc_command(output: str, **options) -> int:
    """`afinar import smc --salida ARCHIVO`: import_smc (the other options are its parameters), then its summary."""
    print_summary(import_smc(output, **options), output)
    return 0


def import_smc_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--salida", dest="output", required=True, help="archivo .jsonl a escribir")
    p.add_argument("--entrada", dest="inputs", nargs="+",
                   help="archivos .parquet o .jsonl locales con el esquema de SMC (sin esto, lee del Hub)")
    p.add_argument("--especialidad", dest="specialities", nargs="+",
                   help="solo estas especialidades (columna speciallity)")
    p.add_argument("--tipo", dest="types", nargs="+", choices=["question", "clinic_case"],
                   help="solo estos tipos (por defecto ambos)")
    p.add_argument("--max-ejemplos", dest="max_examples", type=int,
                   help="para de leer al llegar a N ejemplos")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true")
    p.add_argument("--sin-progreso", dest="progress", action="store_false")
