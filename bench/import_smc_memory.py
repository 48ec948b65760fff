"""Peak memory of `afinar import smc` as the corpus grows: streaming means it should stay flat.

    .venv/bin/python bench/import_smc_memory.py [--rows 20000 200000 2000000]

Each size runs in a fresh process (peak RSS from /usr/bin/time's kernel counter, via resource) on a parquet with
SMC's schema made here. Prints peak RSS per size and the ratio to the smallest, measured in the same run.
The real SMC has 2,136,490 rows. Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.smc_data import write_smc_parquet


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.time()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN keeps the maximum over all children: runs go smallest first, so growth shows.
    return max(before, after) / 1024, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    args = parser.parse_args()
    afinar = str(Path(sys.executable).with_name("afinar"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.rows):
            src = write_smc_parquet(Path(tmp) / f"smc_{n}.parquet", n)
            out = Path(tmp) / f"out_{n}.jsonl"
            rss, seconds = peak_rss_mb([afinar, "import", "smc", "--entrada", str(src), "--salida", str(out), "--sin-progreso"])
            results.append((n, rss, seconds))
            print(f"{n:>10,} filas: pico RSS {rss:7.1f} MB · {seconds:6.1f} s · {n / seconds:,.0f} filas/s", flush=True)
    base = results[0][1]
    for n, rss, _ in results[1:]:
        print(f"pico RSS con {n:,} filas / con {results[0][0]:,} filas: {rss / base:.2f}×")


if __name__ == "__main__":
    main()
