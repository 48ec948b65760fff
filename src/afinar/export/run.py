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

import argparse
import contextlib
import json
import shutil
from pathlib import Path

from afinar import extras
from afinar.atomic import atomic_write_text
from afinar.data.chat_format import folder_format
from afinar.errors import AfinarError
from afinar.export.archive import create_zip, verify_zip
from afinar.export.gguf import QUANTS, check_quants, converter_dir, export_gguf
from afinar.export.ollama import (
    create_command,
    create_in_ollama,
    ollama_model_name,
    require_family,
    require_ollama,
    write_modelfile,
)
from afinar.export.onnx import QUANTIZED, export_onnx
from afinar.export.reference import greedy_reference
from afinar.export.weights import parameter_count
from afinar.merge import merge
from afinar.models import load_tokenizer, template_in_config
from afinar.ollama_store import is_ollama_spec
from afinar.runs import (
    EXPORT_DIR,
    EXPORT_SUMMARY,
    MERGE_SUMMARY,
    open_ref,
    read_export_summary,
)

FORMATS = ("safetensors", "gguf", "ollama", "onnx", "zip")
ALL = "todo"


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(path: Path) -> str:
    return f"{size_of(path) / 1e6:,.1f} MB"


def export(run: str | Path, formats: list[str], output: str | Path | None = None, dtype: str = "fp16",
           quants: list[str] | None = None, overwrite: bool = False, progress: bool = True,
           ollama_name: str | None = None) -> dict[str, Path]:
    """Export a run folder; returns {export: path}. Prints what was written and how it was verified.
    `ollama_name`: also run `ollama create NAME -f Modelfile` (implies the ollama format; X042 without `ollama`).

    A format that fails does not discard the others: what was written and checked stays, the formats that do not
    depend on the failed one go on, `afinar_export.json` says what is missing and why, and then the error is raised."""
    formats = list(FORMATS) if ALL in formats else list(dict.fromkeys(formats))
    if ollama_name and "ollama" not in formats:
        formats.append("ollama")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise AfinarError("X001", f"formato no disponible: {', '.join(unknown)}",
                          hint=f"formatos: {', '.join(FORMATS)} o {ALL}")
    quants = check_quants(quants or ["q8_0"])
    ref = open_ref(run)
    if not ref.is_run:
        raise AfinarError("X002", "la carpeta no es una ejecución de afinar (adaptador LoRA o ajuste completo).", where=str(run),
                          hint="exporta desde runs/<nombre> (el adaptador se fusiona y se comprueba)")
    job = _Job(ref, Path(output) if output else ref.path / EXPORT_DIR, formats, dtype, quants, overwrite, progress)
    job.ollama_name = ollama_name
    planned = [job.targets[f] for f in formats]
    if "gguf" in formats or "ollama" in formats:
        planned += [job.root / "gguf" / f"{job.name}-{q}.gguf" for q in quants]
    if not overwrite and (taken := sorted({str(p) for p in planned if p.exists()})):
        raise AfinarError("X003", "ya existe lo que se iba a escribir: " + ", ".join(taken), hint="usa --sobrescribir u --output")
    _preflight(ref, formats)
    if ollama_name:
        require_ollama(ollama_name)

    if "safetensors" in formats or "zip" in formats:
        job.attempt("safetensors", job.safetensors)
    if "zip" in formats:
        job.attempt("zip", job.zip, needs="safetensors")
    if {"gguf", "ollama", "onnx"} & set(formats):
        job.from_fp32_merge()
    _write_summary(job)
    if job.failed:
        job.raise_failures()
    return job.written


def export_command(run: str | None = None, formats: list[str] | None = None, verify: str | None = None,
                   ollama_name: str | None = None, progress: bool = True, **options) -> int:
    """`afinar export RUN --formato …` (export; the other options are its parameters), or `afinar export
    --verificar ZIP`: checks an exported zip against its SHA-256 manifest."""
    if verify:
        manifest = verify_zip(verify, progress=progress)
        print(f"✓ {verify}: {len(manifest['files'])} archivos coinciden con su SHA-256 del manifiesto")
        return 0
    if not run or not (formats or ollama_name):
        raise AfinarError("X004", "indica la ejecución y el formato: "
                                  "afinar export RUN --formato gguf|onnx|safetensors|zip|ollama|todo")
    export(run, formats or [], progress=progress, ollama_name=ollama_name, **options)
    return 0


def export_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="carpeta de la ejecución (runs/<nombre>)")
    p.add_argument("--formato", dest="formats", nargs="+",
                   choices=["safetensors", "gguf", "ollama", "onnx", "zip", "todo"],
                   help="uno o varios formatos; todo = todos")
    p.add_argument("--output", help="carpeta destino (por defecto RUN/export)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="precisión del safetensors exportado")
    p.add_argument("--cuantizacion", dest="quants", nargs="+", choices=QUANTS,
                   help="GGUF además del f16 (por defecto q8_0; q4_k_m para modelos de 1B o más)")
    p.add_argument("--verificar", dest="verify", metavar="ZIP",
                   help="comprueba un zip exportado contra su manifiesto SHA-256")
    p.add_argument("--ollama-crear", dest="ollama_name", metavar="NOMBRE",
                   help="además crea el modelo en Ollama (ollama create NOMBRE -f Modelfile; "
                        "incluye --formato ollama)")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true")
    p.add_argument("--sin-progreso", dest="progress", action="store_false")


class _Job:
    """One `afinar export`: where each format goes, what was written and checked, and what failed and why."""

    def __init__(self, ref, root: Path, formats: list[str], dtype: str, quants: list[str], overwrite: bool,
                 progress: bool):
        self.ref, self.root, self.formats, self.dtype, self.quants = ref, root, formats, dtype, quants
        self.overwrite, self.progress = overwrite, progress
        self.name = ref.recipe.name if ref.recipe else ref.path.name
        self.targets = {
            "safetensors": root / f"safetensors-{dtype}",
            "gguf": root / "gguf" / f"{self.name}-f16.gguf",
            "ollama": root / "gguf" / "Modelfile",
            "onnx": root / "onnx",
            "zip": root / f"{self.name}-{dtype}.zip",
        }
        self.written: dict[str, Path] = {}
        self.checks: dict[str, dict] = {}
        self.failed: dict[str, AfinarError] = {}
        self.ollama_name: str | None = None  # `--ollama-crear NAME`: run `ollama create` after writing the Modelfile

    def attempt(self, key: str, work, needs: str | None = None) -> None:
        """Run one format; a failure is recorded and the formats that do not depend on it go on."""
        if needs in self.failed:
            self.failed[key] = AfinarError("X005", f"no se hizo: depende de {needs}, que falló.")
            return
        try:
            work()
        except AfinarError as exc:
            self.fail(key, exc)

    def fail(self, key: str, exc: AfinarError) -> None:
        self.failed[key] = exc
        print(f"✗ {key}: no se escribió — {exc.render()}")

    def done(self, key: str, path: Path, check: dict) -> None:
        self.written[key], self.checks[key] = path, check

    def raise_failures(self) -> None:
        kept = f"se escribió y comprobó: {', '.join(self.written)}; " if self.written else ""
        hint = f"{kept}detalle en {self.root / EXPORT_SUMMARY}"
        if len(self.failed) == 1:
            (key, exc), = self.failed.items()
            raise AfinarError(exc.code, f"{key}: {exc.message}", where=exc.where,
                              hint=f"{exc.hint}; {hint}" if exc.hint else hint)
        listed = "; ".join(f"{key} ({exc.code})" for key, exc in self.failed.items())
        raise AfinarError("X005", f"{len(self.failed)} exportaciones fallaron: {listed}.", hint=hint)

    # --- the formats --------------------------------------------------------------------------------------------

    def safetensors(self) -> None:
        merged = self.targets["safetensors"]
        merge(self.ref.path, output=merged, dtype=self.dtype, overwrite=self.overwrite)
        check = json.loads((merged / MERGE_SUMMARY).read_text(encoding="utf-8"))["check"]
        gen = json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
        self.done("safetensors", merged, {**check, "eos_token_id": gen.get("eos_token_id"),
                                          "plantilla_en_tokenizer_config": template_in_config(merged)})
        print(f"safetensors: {merged} ({_mb(merged)}) — recargado con transformers: máx |Δlogits| "
              f"{check['max_abs']:.2e}, top-1 igual en {check['top1']:.0%}; eos en generation_config = "
              f"{gen.get('eos_token_id')}")

    def zip(self) -> None:
        target = self.targets["zip"]
        manifest = create_zip(self.written["safetensors"], target, progress=self.progress)
        verify_zip(target, progress=False)
        self.done("zip", target, {"archivos": len(manifest["files"]), "sha256_verificado": True})
        print(f"zip: {target} ({_mb(target)}, {len(manifest['files'])} archivos) — manifiesto SHA-256 dentro, verificado "
              f"tras escribirlo (afinar export --verificar {target.name})")

    def from_fp32_merge(self) -> None:
        """GGUF, Ollama and ONNX share one fp32 merge and one reference; each is tried even if another failed."""
        try:
            with _fp32_merge(self.ref, self.root, self.written.get("safetensors") if self.dtype == "fp32" else None) as fp32:
                reference = self.reference(fp32)
                if "gguf" in self.formats or "ollama" in self.formats:
                    results: dict[str, dict] = {}
                    # Asked for Ollama alone, the GGUF files are still made: the Modelfile points at one.
                    gguf_key = "gguf" if "gguf" in self.formats else "ollama"
                    self.attempt(gguf_key, lambda: results.update(self.gguf(fp32, reference)))
                    if "ollama" in self.formats and "ollama" not in self.failed:
                        self.attempt("ollama", lambda: self.ollama(fp32, results), needs="gguf")
                if "onnx" in self.formats:
                    self.attempt("onnx", lambda: self.onnx(fp32, reference))
        except AfinarError as exc:  # the merge or the reference failed: none of the three can be made
            for key in [f for f in self.formats if f in ("gguf", "ollama", "onnx")]:
                self.fail(key, exc)

    def reference(self, fp32: Path):
        gen = self.ref.generation
        reference = greedy_reference(fp32, self.ref.system_prompt, gen.repetition_penalty, min(gen.max_new_tokens, 256))
        print(f"Referencia: el modelo fusionado en transformers (fp32, voraz, repetition_penalty "
              f"{gen.repetition_penalty:g}) responde {len(reference.answer)} tokens "
              f"{'y termina solo' if reference.stopped else 'SIN llegar al fin de turno'}.")
        if not reference.stopped:
            print("  aviso: el modelo no termina sus respuestas ni en transformers: es cosa del entrenamiento, no de la "
                  "exportación (revisa `afinar eval`). Se comprueba que cada formato haga lo mismo.")
        return reference

    def gguf(self, fp32: Path, reference) -> dict[str, dict]:
        folder = self.targets["gguf"].parent
        results, quant_failures = export_gguf(fp32, folder, self.name, self.quants, reference, progress=self.progress)
        for kind, exc in quant_failures.items():
            self.fail(f"gguf-{kind}", exc)
        for kind, result in results.items():
            self.done(f"gguf-{kind}", result["path"], {k: v for k, v in result.items() if k != "path"})
            ties = f", {result['casi_empates']} por casi empate" if result["casi_empates"] else ""
            same = (f"primeros {result['primeros_tokens_iguales']}/{result['comparados']} tokens voraces = "
                    f"transformers{ties} (máx |Δlogits| {result['max_abs_logits']:.2f}); " if kind == "f16" else "")
            print(f"gguf {kind}: {result['path']} ({_mb(result['path'])}) — cargado en llama-cpp-python: plantilla y eos "
                  f"({result['eos']}) del modelo afinado, prompt tokenizado igual; {same}respuesta igual a la de "
                  f"transformers hasta el token {result['respuesta_igual_hasta']}; "
                  f"{'termina solo' if result['se_detiene'] else 'no termina'} en {result['tokens_generados']} tokens "
                  f"({result['tokens_por_s']} tok/s)")
        return results

    def ollama(self, fp32: Path, results: dict[str, dict]) -> None:
        # Ollama gets the first quantisation asked for (q8_0 by default): on small models q4_k_m drifts early.
        chosen = self.quants[0] if self.quants[0] in results else "f16"
        folder, source = self.targets["gguf"].parent, results[chosen]["path"].name
        tokenizer = load_tokenizer(fp32)
        family = require_family(tokenizer)
        modelfile = write_modelfile(folder, source, tokenizer, self.ref.system_prompt, self.ref.generation, family)
        # A base from Ollama (`ollama:NAME`): the tuned model is suggested back as NAME-afinado.
        base = self.ref.recipe.model.base if self.ref.recipe else None
        name = self.ollama_name or ollama_model_name(base, self.name)
        check = {"from": source, "plantilla": family, "plantilla_renderizada_igual": True,
                 "crear": create_command(name, modelfile)}
        self.done("ollama", modelfile, check)
        print(f"ollama: {modelfile} (FROM {source}) — plantilla {family}: la plantilla Go, renderizada como Ollama con "
              f"dos conversaciones conocidas, da el mismo texto que la del modelo; para en {tokenizer.eos_token}. "
              f"Crear: {check['crear']}")
        # The base came from the user's Ollama (`ollama:NAME`) and Ollama is here: the tuned model goes back to it as
        # NAME-afinado by itself; a failure then is a warning (the files are written, the command is printed).
        from_ollama = is_ollama_spec(base) and shutil.which("ollama") is not None
        create_as = self.ollama_name or (name if from_ollama else None)
        if create_as:
            try:
                create_in_ollama(modelfile, create_as)
            except AfinarError as exc:
                if self.ollama_name:
                    self.fail("ollama-create", exc)
                    return
                check["aviso"] = exc.render()
                print(f"ollama: aviso: no se pudo crear {create_as} en Ollama ({exc.message}). {exc.hint or ''}")
                return
            check["creado_en_ollama"] = create_as
            print(f"ollama: creado en Ollama como {create_as} — pruébalo con: ollama run {create_as}")

    def onnx(self, fp32: Path, reference) -> None:
        target = self.targets["onnx"]
        report = export_onnx(fp32, target, reference, parameter_count(fp32), overwrite=self.overwrite,
                             progress=self.progress)
        self.done("onnx", target, {**report, "plantilla_en_tokenizer_config": template_in_config(target)})
        int8 = report["int8"]
        print(f"onnx: {target} — onnx/model.onnx ({_mb(target / 'onnx' / 'model.onnx')}) para Transformers.js "
              f"(dtype fp32); onnxruntime: máx |Δlogits| vs torch {report['fp32']['max_abs']:.1e}"
              + (f"; onnx/{QUANTIZED} ({_mb(target / 'onnx' / QUANTIZED)}, dtype q8, {int8['variante']}): primer token "
                 f"igual, {'termina solo' if int8['se_detiene'] else 'no termina'} en {int8['tokens_generados']} tokens "
                 f"en esta CPU ({'con' if report['cpu']['vnni'] else 'sin'} VNNI)" if int8["escrito"] else ""))
        if not int8["escrito"]:
            self.fail("onnx-int8", AfinarError(int8["codigo"], int8["motivo"], where=str(target / "onnx" / QUANTIZED)))


def _preflight(ref, formats: list[str]) -> None:
    """Everything that can be refused is refused before the first file is written."""
    tokenizer = load_tokenizer(ref.path)  # M008 without tokenizer files
    folder_format(ref.path, tokenizer)  # M005 without a chat template, M011–M013 one whose end of turn is not found
    if "gguf" in formats or "ollama" in formats:
        converter_dir()  # llama-cpp-python installed, converter cached or fetched now
    if "ollama" in formats:
        require_family(tokenizer)
    if "onnx" in formats:
        extras.require("onnx")


@contextlib.contextmanager
def _fp32_merge(ref, root: Path, existing: Path | None):
    """The fp32 merged model GGUF and ONNX start from: reuse the safetensors export when it is fp32."""
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


def _write_summary(job: _Job) -> None:
    """`afinar_export.json` beside the exports: what was written, its size and how it was checked (read by push and
    chat), and what this command could not write and why."""
    summary_path = job.root / EXPORT_SUMMARY
    exports = {**read_export_summary(job.root).get("exports", {})}
    for key, path in job.written.items():
        exports[key] = {"ruta": str(path.relative_to(job.root)), "bytes": size_of(path), "comprobado": job.checks.get(key, {})}
    not_written = {key: {"codigo": exc.code, "motivo": exc.message, **({"donde": exc.where} if exc.where else {})}
                   for key, exc in job.failed.items()}
    data = {"schema": "afinar.export/2", "run": str(job.ref.path), "base": job.ref.base_path,
            "receta": job.ref.recipe.name if job.ref.recipe else None, "ok": not job.failed, "exports": exports,
            "no_escritos": not_written}
    job.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(summary_path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
