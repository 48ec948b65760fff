"""The studio's folder and what each run folder in it says about itself.

    <carpeta>/datos/        uploaded JSONL files, named by the studio (never by the client)
    <carpeta>/recetas/      the recipes the Modelo step writes (plain afinar recipes: `afinar train` runs them)
    <carpeta>/ejecuciones/  the run folders (each recipe's output_dir)
    <carpeta>/trabajos/     one JSON + one log per job the studio started
    <carpeta>/datos/tablas/ uploaded spreadsheets waiting for the person to say which column is which
    <carpeta>/documentos/   uploaded documents (PDF, DOCX, TXT, MD) that `afinar borradores` writes drafts from
    <carpeta>/borradores/   the drafts files (JSONL) and their review (only reviewed drafts become datos/)

No path sent by the browser reaches the file system: names are checked against a strict pattern and resolved inside
these folders. Cheap to import (no torch).
"""
from __future__ import annotations

import json
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from afinar.errors import AfinarError
from afinar.runs import (
    CHECKPOINTS,
    EVAL_DIR,
    EXPORT_DIR,
    EXPORT_SUMMARY,
    RECIPE,
    RUN_INFO,
)
from afinar.training import read_metrics

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RATINGS = "valoracion_ciega.json"  # the expert's blind A/B choices, saved with the run


def checked_name(value: str, what: str) -> str:
    """A run, recipe or dataset name from the browser: letters, digits, '_', '.', '-' (no '/', no '..')."""
    if not isinstance(value, str) or not NAME.match(value) or ".." in value:
        raise AfinarError("E010", f"nombre de {what} no válido: usa letras sin tilde, números, '_', '.' o '-' "
                          "(hasta 64, sin espacios)", where=what)
    return value


def slug(text: str, fallback: str = "datos") -> str:
    """A file-system-safe name from what the user typed or the uploaded file's name (shown, never trusted)."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    plain = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "-", plain)).strip("-._")[:40].strip("-._")
    return plain or fallback  # starts with a letter or digit and has no '..': checked_name accepts it


def unique_path(folder: Path, filename: str, fallback: str, suffix: str) -> Path:
    """FOLDER/<her file's name, as a slug>-<8 random hex><suffix>: never an existing file, never her text as a path."""
    return folder / f"{slug(Path(filename or fallback).stem, fallback)}-{secrets.token_hex(4)}{suffix}"


@dataclass
class Workspace:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        for folder in (self.data, self.recipes, self.runs, self.jobs):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def data(self) -> Path:
        return self.root / "datos"

    @property
    def recipes(self) -> Path:
        return self.root / "recetas"

    @property
    def runs(self) -> Path:
        return self.root / "ejecuciones"

    @property
    def jobs(self) -> Path:
        return self.root / "trabajos"

    @property
    def documents(self) -> Path:  # created by the first upload
        return self.root / "documentos"

    @property
    def drafts(self) -> Path:  # created by the first drafts job
        return self.root / "borradores"

    # --- names → paths, always inside the workspace -----------------------------------------------------------------

    def dataset_path(self, dataset_id: str) -> Path:
        path = self.data / f"{checked_name(dataset_id, 'datos')}.jsonl"
        if not path.is_file():
            raise AfinarError("E011", "no existe ese archivo de datos en el estudio (¿se borró?).", where=dataset_id)
        return path

    def new_dataset_path(self, filename: str) -> Path:
        return unique_path(self.data, filename, "datos", ".jsonl")

    def recipe_path(self, name: str) -> Path:
        return self.recipes / f"{checked_name(name, 'receta')}.yaml"

    def run_path(self, name: str, must_exist: bool = True) -> Path:
        path = self.runs / checked_name(name, "ejecución")
        if must_exist and not path.is_dir():
            raise AfinarError("E012", "la carpeta de esta ejecución ya no existe (¿se borró o se movió?).",
                              where=name, hint="elige otra en «Ejecuciones» o vuelve a entrenar")
        return path

    def datasets(self) -> list[dict]:
        files = sorted(self.data.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [{"id": p.stem, "bytes": p.stat().st_size, "fecha": p.stat().st_mtime} for p in files]


# --- what a run folder says about itself ----------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def sparkline(values: list[float], points: int = 40) -> list[float]:
    """At most `points` values, evenly taken (the last one always kept: the final loss)."""
    if len(values) <= points:
        return [round(v, 4) for v in values]
    picked = [values[round(i * (len(values) - 1) / (points - 1))] for i in range(points)]
    return [round(v, 4) for v in picked]


def run_status(run_dir: Path, job: dict | None) -> str:
    """en_curso | terminada | detenida (stopped and saved: resumable) | incompleta (checkpoints, no result) |
    fallida | cancelada | nueva."""
    if job and job.get("estado") == "en_curso" and job.get("tipo") in ("entrenar", "reanudar"):
        return "en_curso"
    info = read_json(run_dir / RUN_INFO)
    if info:
        return "detenida" if info.get("stopped") else "terminada"
    if job and job.get("tipo") in ("entrenar", "reanudar") and job.get("estado") in ("fallido", "cancelado", "interrumpido"):
        return {"fallido": "fallida", "cancelado": "cancelada", "interrumpido": "incompleta"}[job["estado"]]
    if (run_dir / CHECKPOINTS).is_dir() and any((run_dir / CHECKPOINTS).glob("step-*")):
        return "incompleta"
    return "nueva"


def run_summary(run_dir: Path, chain: list[dict] | None = None, metrics: list[dict] | None = None) -> dict:
    """One row of «Ejecuciones» (and GET /api/ejecuciones): status, date, duration, final loss, sparkline. `chain`:
    the run's training jobs since its fresh start (JobManager.training_chains): the date is the first one's and the
    duration the sum of all (a stopped and resumed run is one run)."""
    chain = chain or []
    job = chain[-1] if chain else None
    info = read_json(run_dir / RUN_INFO)
    metrics = read_metrics(run_dir) if metrics is None else metrics
    losses = [m["loss"] for m in metrics if "loss" in m]
    evaluation = read_json(run_dir / EVAL_DIR / "metrics.json")
    exports = read_json(run_dir / EXPORT_DIR / EXPORT_SUMMARY).get("exports", {})
    started = (chain[0].get("inicio") if chain else None) or _mtime(run_dir / RECIPE) or _mtime(run_dir)
    seconds = [_job_seconds(j) for j in chain]
    return {
        "nombre": run_dir.name,
        "estado": run_status(run_dir, job),
        "fecha": started,
        "duracion_s": round(sum(x for x in seconds if x), 1) if any(seconds) else info.get("train_seconds"),
        "tramos": len(chain),
        "pasos": info.get("steps") or (metrics[-1]["step"] if metrics else 0),
        "perdida_final": info.get("final_train_loss") if info else (losses[-1] if losses else None),
        "perdida_validacion": info.get("final_eval_loss"),
        "chispa": sparkline(losses),
        "base": info.get("base_path") or info.get("base"),
        "evaluada": bool(evaluation),
        "exportada": sorted(exports),
        "valorada": (run_dir / RATINGS).is_file(),
    }


def _job_seconds(job: dict | None) -> float | None:
    if not job or not job.get("inicio"):
        return None
    return round((job.get("fin") or time.time()) - job["inicio"], 1)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def run_outputs(run_dir: Path) -> list[dict]:
    """The files a run folder holds (the first two levels), with sizes: what «Ejecuciones» lists as outputs."""
    items = []
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith("."):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        items.append({"nombre": path.name + ("/" if path.is_dir() else ""), "bytes": size})
    return items
