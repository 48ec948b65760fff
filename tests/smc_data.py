"""Files with the schema of the Spanish Medical Corpus (somosnlp/SMC), made locally: tests run offline."""
from __future__ import annotations

from pathlib import Path

COLUMNS = ("raw_text", "topic", "speciallity", "raw_text_type", "topic_type", "source", "country", "document_id")
KINDS = ("question", "clinic_case", "open_text")
SPECIALITIES = ("cardiología", "neumología", "pediatría", "")
TOPIC_TYPES = {"question": "answer", "clinic_case": "medical_diagnostic", "open_text": "medical_topic"}


def smc_row(i: int) -> dict:
    """Row i: kinds cycle every 3 rows, specialities every 4; every 10th row has an empty topic."""
    kind = KINDS[i % 3]
    return {
        "raw_text": f"Texto médico número {i} " + "con contenido " * (i % 7),
        "topic": "" if i % 10 == 0 else f"Respuesta o diagnóstico {i}",
        "speciallity": SPECIALITIES[i % 4],
        "raw_text_type": kind,
        "topic_type": TOPIC_TYPES[kind],
        "source": "generado",
        "country": "es",
        "document_id": str(i),
    }


def expected_counts(n: int) -> dict:
    rows = [smc_row(i) for i in range(n)]
    usable = [r for r in rows if r["raw_text_type"] != "open_text" and r["topic"]]
    return {
        "question": sum(r["raw_text_type"] == "question" for r in usable),
        "clinic_case": sum(r["raw_text_type"] == "clinic_case" for r in usable),
        "open_text": sum(r["raw_text_type"] == "open_text" for r in rows),
        "no_target": sum(r["raw_text_type"] != "open_text" and not r["topic"] for r in rows),
    }


def write_smc_parquet(path: Path, n: int, columns: tuple = COLUMNS, chunk: int = 50_000) -> Path:
    """Written in chunks so a 2M-row file does not need 2M rows in memory here either."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in columns])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, chunk):
            rows = [smc_row(i) for i in range(start, min(n, start + chunk))]
            writer.write_table(pa.table({c: [r[c] for r in rows] for c in columns}, schema=schema))
    return path
