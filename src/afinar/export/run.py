"""`afinar export RUN --formato ...`: each export is checked by actually loading what was written.

Formats available now: safetensors (merged model, reloaded with plain transformers and compared with
base + adapter) and zip (that folder with a SHA-256 manifest, re-hashed after writing).
"""
from __future__ import annotations

import json
from pathlib import Path

from afinar.errors import AfinarError

FORMATS = ("safetensors", "zip")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export(run: str | Path, formats: list[str], output: str | Path | None = None, dtype: str = "fp16",
           overwrite: bool = False, progress: bool = True) -> dict[str, Path]:
    """Export a run folder; returns {format: path}. Prints what was written and how it was verified."""
    from afinar.export.archive import create_zip, verify_zip
    from afinar.merge import merge
    from afinar.runs import open_ref

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise AfinarError("X001", f"formato no disponible: {', '.join(unknown)}", hint=f"formatos: {', '.join(FORMATS)}")
    ref = open_ref(run)
    if ref.kind != "run":
        raise AfinarError("X002", "la carpeta no es una ejecución con adaptador LoRA.", where=str(run),
                          hint="exporta desde runs/<nombre> (el adaptador se fusiona y se comprueba)")
    root = Path(output) if output else ref.path / "export"
    written: dict[str, Path] = {}
    merged = root / f"safetensors-{dtype}"
    if "safetensors" in formats or "zip" in formats:
        merge(ref.path, output=merged, dtype=dtype, overwrite=overwrite)
        check = json.loads((merged / "afinar_merge.json").read_text(encoding="utf-8"))["check"]
        gen = json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
        written["safetensors"] = merged
        print(f"safetensors: {merged} ({_size(merged) / 1e6:,.1f} MB) — recargado con transformers: máx |Δlogits| "
              f"{check['max_abs']:.2e}, top-1 igual en {check['top1']:.0%}; eos en generation_config = {gen.get('eos_token_id')}")
    if "zip" in formats:
        target = root / f"{ref.recipe.name if ref.recipe else ref.path.name}-{dtype}.zip"
        if target.exists() and not overwrite:
            raise AfinarError("X003", "el zip ya existe.", where=str(target), hint="usa --sobrescribir")
        manifest = create_zip(merged, target, progress=progress)
        verify_zip(target, progress=False)
        written["zip"] = target
        print(f"zip: {target} ({_size(target) / 1e6:,.1f} MB, {len(manifest['files'])} archivos) — manifiesto SHA-256 "
              f"dentro, verificado tras escribirlo (afinar export --verificar {target.name})")
    return written
