"""`afinar export RUN --formato ...`: each export is checked by actually running what was written.

- safetensors: merged model reloaded with plain transformers, logits compared with base + adapter.
- gguf (+ ollama): llama.cpp's converter and quantiser, loaded back in llama-cpp-python (see export/gguf.py);
  the Modelfile's template is rendered against a known conversation (export/ollama.py).
- onnx: optimum-onnx + onnxruntime INT8 in the Transformers.js layout, run in onnxruntime (export/onnx.py).
- zip: the safetensors folder with a SHA-256 manifest, re-hashed after writing (export/archive.py).

GGUF and ONNX start from an fp32 merge (one rounding, not two) that lives in a hidden folder for the command's
duration; the reference they are compared with is that fp32 model greedy in transformers (export/reference.py).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from afinar.errors import AfinarError
from afinar.export.weights import parameter_count

FORMATS = ("safetensors", "gguf", "ollama", "onnx", "zip")
ALL = "todo"


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(path: Path) -> str:
    return f"{size_of(path) / 1e6:,.1f} MB"


def export(run: str | Path, formats: list[str], output: str | Path | None = None, dtype: str = "fp16",
           quants: list[str] | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Path]:
    """Export a run folder; returns {format: path}. Prints what was written and how it was verified."""
    from afinar.export.gguf import check_quants
    from afinar.merge import merge
    from afinar.runs import open_ref

    formats = list(FORMATS) if ALL in formats else list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise AfinarError("X001", f"formato no disponible: {', '.join(unknown)}",
                          hint=f"formatos: {', '.join(FORMATS)} o {ALL}")
    quants = check_quants(quants or ["q8_0"])
    ref = open_ref(run)
    if ref.kind != "run":
        raise AfinarError("X002", "la carpeta no es una ejecución con adaptador LoRA.", where=str(run),
                          hint="exporta desde runs/<nombre> (el adaptador se fusiona y se comprueba)")
    root = Path(output) if output else ref.path / "export"
    name = ref.recipe.name if ref.recipe else ref.path.name
    targets = {
        "safetensors": root / f"safetensors-{dtype}",
        "gguf": root / "gguf" / f"{name}-f16.gguf",
        "ollama": root / "gguf" / "Modelfile",
        "onnx": root / "onnx",
        "zip": root / f"{name}-{dtype}.zip",
    }
    planned = [targets[f] for f in formats]
    if "gguf" in formats or "ollama" in formats:
        planned += [root / "gguf" / f"{name}-{q}.gguf" for q in quants]
    if not overwrite and (taken := sorted({str(p) for p in planned if p.exists()})):
        raise AfinarError("X003", "ya existe lo que se iba a escribir: " + ", ".join(taken), hint="usa --sobrescribir u --output")
    _preflight(ref, formats)

    written: dict[str, Path] = {}
    checks: dict[str, dict] = {}
    failed: dict[str, AfinarError] = {}

    def attempt(key: str, work, *needs: str) -> None:
        """Run one format; a failure is recorded and the formats that do not depend on it go on."""
        missing = [n for n in needs if n in failed]
        if missing:
            failed[key] = AfinarError("X005", f"no se hizo: depende de {', '.join(missing)}, que falló.")
            return
        try:
            work()
        except AfinarError as exc:
            failed[key] = exc
            print(f"✗ {key}: no se escribió — {exc.render()}")

    if "safetensors" in formats or "zip" in formats:
        attempt("safetensors", lambda: _safetensors(ref, targets["safetensors"], dtype, overwrite, written, checks))
    if "zip" in formats:
        attempt("zip", lambda: _zip(written["safetensors"], targets["zip"], progress, written, checks), "safetensors")
    if {"gguf", "ollama", "onnx"} & set(formats):
        # GGUF, Ollama and ONNX share the fp32 merge and the reference; each is tried even if another failed.
        attempt("fp32", lambda: _from_fp32(ref, root, dtype, formats, targets, name, quants, overwrite, written, checks,
                                           failed, attempt, progress))
    if "fp32" in failed:
        for key in [f for f in formats if f in ("gguf", "ollama", "onnx")]:
            failed[key] = failed["fp32"]
        del failed["fp32"]
    _write_summary(root, ref, written, checks, failed)
    if failed:
        _raise_failures(failed, written, root)
    return written


def _raise_failures(failed: dict[str, AfinarError], written: dict[str, Path], root: Path) -> None:
    kept = f"se escribió y comprobó: {', '.join(written)}; " if written else ""
    hint = f"{kept}detalle en {root / 'afinar_export.json'}"
    if len(failed) == 1:
        (key, exc), = failed.items()
        raise AfinarError(exc.code, f"{key}: {exc.message}", where=exc.where,
                          hint=f"{exc.hint}; {hint}" if exc.hint else hint)
    listed = "; ".join(f"{key} ({exc.code})" for key, exc in failed.items())
    raise AfinarError("X005", f"{len(failed)} exportaciones fallaron: {listed}.", hint=hint)


def _safetensors(ref, merged: Path, dtype: str, overwrite: bool, written: dict, checks: dict) -> None:
    from afinar.merge import merge

    merge(ref.path, output=merged, dtype=dtype, overwrite=overwrite)
    check = json.loads((merged / "afinar_merge.json").read_text(encoding="utf-8"))["check"]
    gen = json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
    written["safetensors"] = merged
    checks["safetensors"] = {**check, "eos_token_id": gen.get("eos_token_id"), "plantilla_en_tokenizer_config": True}
    print(f"safetensors: {merged} ({_mb(merged)}) — recargado con transformers: máx |Δlogits| "
          f"{check['max_abs']:.2e}, top-1 igual en {check['top1']:.0%}; eos en generation_config = {gen.get('eos_token_id')}")


def _from_fp32(ref, root: Path, dtype: str, formats: list[str], targets: dict, name: str, quants: list[str],
               overwrite: bool, written: dict, checks: dict, failed: dict, attempt, progress: bool) -> None:
    with _fp32_merge(ref, root, written.get("safetensors") if dtype == "fp32" else None) as fp32:
        from afinar.export.reference import greedy_reference

        gen = ref.generation
        reference = greedy_reference(fp32, ref.system_prompt, gen.repetition_penalty, min(gen.max_new_tokens, 256))
        print(f"Referencia: el modelo fusionado en transformers (fp32, voraz, repetition_penalty "
              f"{gen.repetition_penalty:g}) responde {len(reference.answer)} tokens "
              f"{'y termina solo' if reference.stopped else 'SIN llegar al fin de turno'}.")
        if not reference.stopped:
            print("  aviso: el modelo no termina sus respuestas ni en transformers: es cosa del entrenamiento, no de la "
                  "exportación (revisa `afinar eval`). Se comprueba que cada formato haga lo mismo.")
        if "gguf" in formats or "ollama" in formats:
            folder, results = targets["gguf"].parent, {}
            # Asked for Ollama alone, the GGUF files are still made: the Modelfile points at one.
            attempt("gguf" if "gguf" in formats else "ollama", lambda: results.update(
                _gguf(fp32, folder, name, quants, reference, written, checks, failed, progress)))
            if "ollama" in formats and "ollama" not in failed:
                attempt("ollama", lambda: _ollama(fp32, folder, name, quants, results, ref, written, checks), "gguf")
        if "onnx" in formats:
            attempt("onnx", lambda: _onnx(fp32, targets["onnx"], reference, overwrite, written, checks, failed,
                                          progress))


def _preflight(ref, formats: list[str]) -> None:
    """Everything that can be refused is refused before the first file is written."""
    from afinar.models import load_tokenizer

    tokenizer = load_tokenizer(ref.path)  # M008 without tokenizer files, M005 without a chat template
    if "gguf" in formats or "ollama" in formats:
        from afinar.export.gguf import converter_dir

        converter_dir()  # llama-cpp-python installed, converter cached or fetched now
    if "ollama" in formats:
        from afinar.export.ollama import require_chatml

        require_chatml(tokenizer)
    if "onnx" in formats:
        from afinar.export.onnx import require_optimum

        require_optimum()


@contextlib.contextmanager
def _fp32_merge(ref, root: Path, existing: Path | None):
    """The fp32 merged model GGUF and ONNX start from: reuse the safetensors export when it is fp32."""
    from afinar.merge import merge

    if existing is not None:
        yield existing
        return
    scratch = root / ".merged-fp32"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        merge(ref.path, output=scratch, dtype="fp32", overwrite=True)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _zip(folder: Path, target: Path, progress: bool, written: dict, checks: dict) -> None:
    from afinar.export.archive import create_zip, verify_zip

    manifest = create_zip(folder, target, progress=progress)
    verify_zip(target, progress=False)
    written["zip"], checks["zip"] = target, {"archivos": len(manifest["files"]), "sha256_verificado": True}
    print(f"zip: {target} ({_mb(target)}, {len(manifest['files'])} archivos) — manifiesto SHA-256 dentro, verificado tras "
          f"escribirlo (afinar export --verificar {target.name})")


def _gguf(fp32: Path, folder: Path, name: str, quants: list[str], reference, written: dict, checks: dict,
          failed: dict, progress: bool) -> dict[str, dict]:
    from afinar.export.gguf import export_gguf

    results, quant_failures = export_gguf(fp32, folder, name, quants, reference, progress=progress)
    for kind, exc in quant_failures.items():
        failed[f"gguf-{kind}"] = exc
        print(f"✗ gguf {kind}: no se escribió — {exc.render()}")
    for kind, result in results.items():
        written[f"gguf-{kind}"] = result["path"]
        checks[f"gguf-{kind}"] = {k: v for k, v in result.items() if k != "path"}
        ties = f", {result['casi_empates']} por casi empate" if result["casi_empates"] else ""
        same = (f"primeros {result['primeros_tokens_iguales']}/{result['comparados']} tokens voraces = transformers{ties} "
                f"(máx |Δlogits| {result['max_abs_logits']:.2f}); " if kind == "f16" else "") + \
            f"respuesta igual a la de transformers hasta el token {result['respuesta_igual_hasta']}; "
        print(f"gguf {kind}: {result['path']} ({_mb(result['path'])}) — cargado en llama-cpp-python: plantilla y eos "
              f"({result['eos']}) del modelo afinado, prompt tokenizado igual; {same}"
              f"{'termina solo' if result['se_detiene'] else 'no termina'} en {result['tokens_generados']} tokens "
              f"({result['tokens_por_s']} tok/s)")
    return results


def _ollama(fp32: Path, folder: Path, name: str, quants: list[str], results: dict, ref, written: dict,
            checks: dict) -> None:
    from transformers import AutoTokenizer

    from afinar.export.ollama import write_modelfile

    # Ollama gets the first quantisation asked for (q8_0 by default): on small models q4_k_m drifts early.
    chosen = quants[0] if quants[0] in results else "f16"
    tokenizer = AutoTokenizer.from_pretrained(fp32)
    modelfile = write_modelfile(folder, results[chosen]["path"].name, tokenizer, ref.system_prompt, ref.generation)
    written["ollama"] = modelfile
    checks["ollama"] = {"from": results[chosen]["path"].name, "plantilla_renderizada_igual": True}
    print(f"ollama: {modelfile} (FROM {results[chosen]['path'].name}) — la plantilla Go, renderizada como Ollama con "
          f"una conversación conocida, da el mismo texto que la plantilla del modelo. Crear: cd {folder} && "
          f"ollama create {name} -f Modelfile")


def _onnx(fp32: Path, target: Path, reference, overwrite: bool, written: dict, checks: dict, failed: dict,
          progress: bool) -> None:
    from afinar.errors import AfinarError
    from afinar.export.onnx import QUANTIZED, export_onnx

    report = export_onnx(fp32, target, reference, parameter_count(fp32), overwrite=overwrite, progress=progress)
    written["onnx"], checks["onnx"] = target, report
    int8 = report["int8"]
    fp32_line = (f"onnx: {target} — onnx/model.onnx ({_mb(target / 'onnx' / 'model.onnx')}) para Transformers.js "
                 f"(dtype fp32); onnxruntime: máx |Δlogits| vs torch {report['fp32']['max_abs']:.1e}")
    if int8["escrito"]:
        print(f"{fp32_line}; onnx/{QUANTIZED} ({_mb(target / 'onnx' / QUANTIZED)}, dtype q8, {int8['variante']}): "
              f"primer token igual, "
              f"{'termina solo' if int8['se_detiene'] else 'no termina'} en {int8['tokens_generados']} tokens en esta CPU "
              f"({'con' if report['cpu']['vnni'] else 'sin'} VNNI)")
    else:
        print(fp32_line)
        failed["onnx-int8"] = AfinarError(int8["codigo"], int8["motivo"], where=str(target / "onnx" / QUANTIZED))
        print(f"✗ onnx int8: no se escribió — {int8['codigo']}: {int8['motivo']}")


def _write_summary(root: Path, ref, written: dict[str, Path], checks: dict, failed: dict[str, AfinarError]) -> None:
    """`afinar_export.json` beside the exports: what was written, its size and how it was checked (read by push),
    and what this command could not write and why."""
    from afinar.atomic import atomic_write_text

    previous = {}
    summary_path = root / "afinar_export.json"
    if summary_path.is_file():
        previous = json.loads(summary_path.read_text(encoding="utf-8")).get("exports", {})
    exports = {**previous}
    for key, path in written.items():
        exports[key] = {"ruta": str(path.relative_to(root)), "bytes": size_of(path), "comprobado": checks.get(key, {})}
    not_written = {key: {"codigo": exc.code, "motivo": exc.message, **({"donde": exc.where} if exc.where else {})}
                   for key, exc in failed.items()}
    data = {"schema": "afinar.export/2", "run": str(ref.path), "base": ref.base_path,
            "receta": ref.recipe.name if ref.recipe else None, "ok": not failed, "exports": exports,
            "no_escritos": not_written}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(summary_path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
