"""`afinar push RUN_OR_EXPORT --repo usuario/nombre`: upload to the Hugging Face Hub with a generated model card.

Repo layout: the merged safetensors at the root (so `from_pretrained("usuario/nombre")` works), `onnx/` beside it
(Transformers.js reads config.json and tokenizer.json from the root), `gguf/` with the Modelfile. A run with no
export is uploaded as a PEFT adapter. The token comes only from `HF_TOKEN` or the huggingface_hub login: there is no
flag for it, it is never printed, and it is masked in every error message.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from afinar.atomic import atomic_write_text
from afinar.errors import AfinarError
from afinar.models import EMBEDDED
from afinar.runs import (
    ADAPTER_WEIGHTS,
    DATA_FINGERPRINT,
    EVAL_DIR,
    EXPORT_DIR,
    EXPORT_SUMMARY,
    MERGE_SUMMARY,
    RECIPE,
    RUN_INFO,
    open_ref,
    read_export_summary,
    read_recipe,
)

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
ADAPTER_FILES = ("adapter_config.json", ADAPTER_WEIGHTS, "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", RECIPE, DATA_FINGERPRINT)
# Local bookkeeping that would mislead on the Hub (absolute paths, the zip duplicates the safetensors).
SKIP = {MERGE_SUMMARY, "afinar_manifest.json"}


@dataclass
class Upload:
    local: Path
    in_repo: str

    @property
    def size(self) -> int:
        return self.local.stat().st_size


def _locate(source: Path) -> tuple[Path, Path | None]:
    """(run folder, export folder or None) from either of them."""
    if (source / EXPORT_SUMMARY).is_file():
        return Path(read_export_summary(source)["run"]), source
    ref = open_ref(source)
    if not ref.is_run:
        raise AfinarError("X053", "no es una ejecución ni una carpeta de exportación de afinar.", where=str(source),
                          hint="pasa runs/<nombre> o runs/<nombre>/export")
    export = source / EXPORT_DIR
    return source, export if (export / EXPORT_SUMMARY).is_file() else None


def plan(source: str | Path) -> tuple[list[Upload], dict]:
    """What would be uploaded, and the export summary it came from ({} for an adapter-only run)."""
    run, export = _locate(Path(source))
    uploads: list[Upload] = []
    summary: dict = {}
    if export is not None:
        summary = read_export_summary(export)
        exports = summary.get("exports", {})
        safetensors = "safetensors" in exports
        if safetensors:
            folder = export / exports["safetensors"]["ruta"]
            uploads += [Upload(p, p.name) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in SKIP]
        if "onnx" in exports:
            folder = export / exports["onnx"]["ruta"]
            uploads += [Upload(p, f"onnx/{p.name}") for p in sorted((folder / "onnx").iterdir()) if p.is_file()]
            if not safetensors:  # Transformers.js still needs config and tokenizer at the root
                uploads += [Upload(p, p.name) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".json", ".jinja")]
        for key, item in sorted(exports.items()):
            if key.startswith("gguf-") or key == "ollama":
                path = export / item["ruta"]
                uploads.append(Upload(path, f"gguf/{path.name}"))
    if not uploads and (run / ADAPTER_WEIGHTS).is_file():
        uploads = [Upload(run / name, name) for name in ADAPTER_FILES if (run / name).is_file()]
    if not uploads:
        # a full fine-tuning run has no adapter: its model goes up from its checked export
        raise AfinarError("X053", "no hay nada que subir (ni exportación ni adaptador).", where=str(source),
                          hint=f"exporta antes: afinar export {run} --formato safetensors")
    missing = [u.local for u in uploads if not u.local.is_file()]
    if missing:
        raise AfinarError("X053", f"falta un archivo de la exportación: {missing[0]}", where=str(source),
                          hint="vuelve a exportar con afinar export")
    return uploads, {**summary, "run": run, "export": export}


def model_card(run: Path, repo: str, summary: dict, adapter_only: bool) -> str:
    """README.md for the Hub: base, data, recipe, evaluation and what the model is and is not for (no dataset text)."""
    recipe = read_recipe(run)
    info = _read_json(run / RUN_INFO)
    metrics = _read_json(run / EVAL_DIR / "metrics.json")
    fingerprint = _read_json(run / DATA_FINGERPRINT)
    base_alias = info.get("base") or (recipe.model.base if recipe else None)
    base_id = EMBEDDED[base_alias].original if base_alias in EMBEDDED else base_alias
    front = ["---", "language:", "- es", "license: apache-2.0", "library_name: " + ("peft" if adapter_only else "transformers"),
             "pipeline_tag: text-generation", "tags:", "- afinar", "- lora"]
    if base_id and "/" in base_id and not Path(base_id).exists():
        front += [f"base_model: {base_id}"]
    front.append("---")
    # A local folder says nothing to Hub readers (and may reveal a user name): its name only.
    shown = f"un modelo local ({Path(base_id).name})" if base_id and Path(base_id).exists() else base_id or "desconocido"
    lines = [*front, "", f"# {repo.split('/')[1]}", "",
             f"Asistente afinado con [afinar](https://pypi.org/project/afinar/) (LoRA) sobre **{shown}**.", ""]
    if recipe:
        modules = recipe.lora.target_modules if isinstance(recipe.lora.target_modules, str) else \
            ", ".join(recipe.lora.target_modules)
        lines += ["## Receta", "", f"- Nombre: `{recipe.name}`",
                  f"- LoRA r={recipe.lora.r}, alpha={recipe.lora.alpha:g}, módulos: {modules}",
                  (f"- Entrenamiento: {info.get('steps', '?')} pasos, lr {recipe.train.lr:g}, "
                   f"max_length {recipe.data.max_length}"),
                  f"- Mensaje de sistema: {recipe.data.system_prompt!r}", ""]
    if fingerprint:
        lines += ["## Datos", "", "| archivo | ejemplos | SHA-256 |", "|---|---|---|"]
        for path, item in fingerprint.get("files", {}).items():
            lines.append(f"| `{Path(path).name}` | {item.get('examples')} | `{item.get('sha256', '')[:16]}…` |")
        lines += ["", (f"Entrenamiento: {fingerprint.get('train_examples')} ejemplos; validación: "
                       f"{fingerprint.get('val_examples')}. Las tarjetas de los datasets incluidos están en el paquete "
                       "afinar (`afinar/datasets/*.md`)."), ""]
    if metrics:
        loss = metrics.get("loss", {})
        greedy = metrics.get("generation", {}).get("greedy", {})
        lines += ["## Evaluación (afinar eval, base frente a afinado)", "", "| métrica | base | afinado |", "|---|---|---|"]
        if loss:
            lines.append(f"| pérdida en validación | {loss.get('base')} | {loss.get('tuned')} |")
        for key, label in (("stop_rate", "termina solo (proporción)"), ("repetition", "repetición"), ("chrf", "chrF")):
            if key in greedy.get("tuned", {}):
                lines.append(f"| {label} | {greedy.get('base', {}).get(key)} | {greedy['tuned'][key]} |")
        for name, value in metrics.get("checks", {}).items():
            lines.append(f"| comprobaciones {name} | {metrics.get('checks_detail', {}).get(name, {}).get('base')} | {value} |")
        forgetting = metrics.get("forgetting") or {}
        if forgetting:
            lines.append(f"| pérdida en español general (olvido) | {forgetting.get('base')} | {forgetting.get('tuned')} |")
        lines += ["", f"Evaluado sobre {metrics.get('generated')} ejemplos de `{metrics.get('split')}`.", ""]
    exports = summary.get("exports", {})
    if exports:
        lines += ["## Archivos y cómo se comprobaron", "", "| formato | tamaño | comprobación |", "|---|---|---|"]
        for key, item in exports.items():
            lines.append(f"| {key} | {item['bytes'] / 1e6:,.1f} MB | {_check_text(key, item.get('comprobado', {}))} |")
        lines.append("")
    lines += ["## Uso previsto y límites", "",
              "- Uso previsto: apoyo educativo y borradores en español en el dominio de la receta, revisados por una persona.",
              "- No es un producto sanitario ni sustituye el juicio clínico o profesional; puede inventar datos.",
              "- Modelo pequeño: comprueba cada respuesta antes de usarla. No introduzcas datos de pacientes identificables.",
              ""]
    return "\n".join(lines)


def _check_text(key: str, check: dict) -> str:
    if key == "safetensors":
        return f"recargado con transformers, máx Δlogits {check.get('max_abs', 0):.1e}"
    if key.startswith("gguf-"):
        return "llama.cpp: plantilla y eos correctos, " + ("termina solo" if check.get("se_detiene") else "no termina")
    if key == "onnx":
        return f"onnxruntime: Δlogits fp32 {check.get('fp32', {}).get('max_abs', 0):.1e}; INT8 primer token igual"
    if key == "ollama":
        return "plantilla renderizada igual que la del modelo"
    if key == "zip":
        return "manifiesto SHA-256 verificado"
    return ""


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _mask(text: str, token: str | None) -> str:
    text = text.replace(token, "***") if token else text
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def push(source: str | Path, repo: str, private: bool = False, dry_run: bool = False, progress: bool = True) -> list[Upload]:
    if not _REPO.match(repo or ""):
        raise AfinarError("X050", f"nombre de repositorio no válido: {repo!r}", hint="usa usuario/nombre")
    uploads, summary = plan(source)
    adapter_only = not summary.get("exports")
    card_dir = summary["export"] or summary["run"]
    card = atomic_write_text(Path(card_dir) / "README_hub.md", model_card(summary["run"], repo, summary, adapter_only))
    uploads.append(Upload(card, "README.md"))
    total = sum(u.size for u in uploads)
    print(f"{'Se subiría' if dry_run else 'Subiendo'} a https://huggingface.co/{repo} "
          f"({'privado' if private else 'público'}): {len(uploads)} archivos, {total / 1e6:,.1f} MB")
    for upload in uploads:
        print(f"  {upload.in_repo:<40} {upload.size / 1e6:>10,.1f} MB  ← {upload.local}")
    if dry_run:
        print(f"Simulación: no se ha subido nada. Revisa la tarjeta del modelo en {card}")
        return uploads

    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    token = get_token()
    if not token:
        raise AfinarError("X051", "no hay token de Hugging Face.",
                          hint="define la variable HF_TOKEN o ejecuta `hf auth login` (nunca se pasa como opción)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.create_commit(repo, operations=[CommitOperationAdd(u.in_repo, str(u.local)) for u in uploads],
                          commit_message="afinar push", repo_type="model")
    except Exception as exc:  # noqa: BLE001 — network, permissions, quota: say which, never with the token in it
        raise AfinarError("X052", f"la subida al Hub falló: {_mask(f'{type(exc).__name__}: {exc}', token)[:400]}",
                          hint="comprueba la conexión y que el token tenga permiso de escritura") from None
    print(f"✓ Subido: https://huggingface.co/{repo}")
    return uploads


def push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="runs/<nombre> o su carpeta export/")
    p.add_argument("--repo", required=True, help="usuario/nombre en el Hub")
    p.add_argument("--privado", dest="private", action="store_true",
                   help="crea el repositorio como privado")
    p.add_argument("--dry-run", action="store_true",
                   help="solo lista lo que se subiría (no necesita red ni token)")
    p.add_argument("--sin-progreso", dest="progress", action="store_false")
