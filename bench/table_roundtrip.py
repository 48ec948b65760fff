"""The spreadsheet round trip on the shipped first-aid sets: JSONL → table (`afinar convertir`) → JSONL, and whether
training would see exactly the same thing.

    .venv/bin/python bench/table_roundtrip.py [--sets primeros_auxilios primeros_auxilios_evaluacion] [--json fila.json]

For each set and each table kind (.xlsx; .csv with ";" in cp1252, as Excel in Spanish saves it; .ods; .parquet):
`tables.convert` writes the table, then converts it back to JSONL; `load_examples` on the original, on the table
itself and on the JSONL that came back are compared example by example (messages, claves, peligros). One line per
kind: examples, identical/different (table read directly and back as JSONL), file sizes and seconds for each step.
Nothing in the output is dataset text.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from afinar.data.formats import load_examples, shipped_dataset
from afinar.data.tables import convert

KINDS = {"xlsx": (".xlsx", {}), "csv-cp1252": (".csv", {"sep": ";", "encoding": "cp1252"}), "ods": (".ods", {}),
         "parquet": (".parquet", {})}


def _same(a, b) -> tuple[int, int]:
    """(identical, different) example by example; a missing or extra example counts as different."""
    identical = sum((x.messages, x.claves, x.peligros) == (y.messages, y.claves, y.peligros) for x, y in zip(a, b))
    return identical, max(len(a), len(b)) - identical


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def run(name: str, folder: Path) -> list[dict]:
    source = shipped_dataset(name)
    original = load_examples(source)
    rows = []
    for kind, (suffix, options) in KINDS.items():
        table, back = folder / f"{name}{suffix}", folder / f"{name}.{kind}.jsonl"
        code_out, t_write = _timed(convert, source, table, overwrite=True, out=lambda *_: None, **options)
        direct, t_read = _timed(load_examples, table)
        code_back, t_back = _timed(convert, table, back, overwrite=True, out=lambda *_: None)
        again = load_examples(back)
        rows.append({
            "set": name, "kind": kind, "examples": len(original), "ok": code_out == code_back == 0,
            "direct_identical_different": _same(original, direct), "back_identical_different": _same(original, again),
            "bytes": {"jsonl": source.stat().st_size, "table": table.stat().st_size, "back": back.stat().st_size},
            "seconds": {"write_table": round(t_write, 3), "read_table": round(t_read, 3),
                        "table_to_jsonl": round(t_back, 3)},
            "back_bytes_equal_original": back.read_bytes() == source.read_bytes(),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["primeros_auxilios", "primeros_auxilios_evaluacion"])
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.sets:
            rows += run(name, Path(folder))
    print(f"{'set':30} {'kind':11} {'ex':>4} {'direct =/≠':>11} {'back =/≠':>9} {'jsonl KB':>9} {'table KB':>9} "
          f"{'write s':>8} {'read s':>7} {'back s':>7}")
    for r in rows:
        d, b, kb, s = r["direct_identical_different"], r["back_identical_different"], r["bytes"], r["seconds"]
        print(f"{r['set']:30} {r['kind']:11} {r['examples']:>4} {f'{d[0]}/{d[1]}':>11} {f'{b[0]}/{b[1]}':>9} "
              f"{kb['jsonl'] / 1024:>9.1f} {kb['table'] / 1024:>9.1f} "
              f"{s['write_table']:>8.3f} {s['read_table']:>7.3f} {s['table_to_jsonl']:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
