"""The run folder's layout, and reading what a run folder, a merged-model folder or an export folder holds.

The names of the files and folders inside `runs/<name>/` are defined here once; training writes them, and eval,
merge, export, push, chat and serve read them. Cheap to import (no torch): everything else imports it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from afinar.config import GenerationSection, Recipe, recipe_from_dict
from afinar.errors import AfinarError
from afinar.models import load_model, load_tokenizer

# --- what a run folder holds (runs/<name>/...) ------------------------------------------------------------------

RECIPE = "recipe.yaml"  # the resolved recipe (also inside each checkpoint and a merged copy)
RUN_INFO = "afinar_run.json"  # the training's summary (hardware, steps, throughput, budget); read by eval and push
METRICS = "metrics.jsonl"  # one line per step (loss, step_seconds, tokens), and the held-out loss every eval_every steps
PLAN = "plan.json"  # `afinar plan` as the run measured it at its start: predicted peak memory and step time
CHECKPOINTS = "checkpoints"  # step-NNNNNN/ folders, each complete or absent
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the LoRA adapter (PEFT's file name)
EVAL_DIR = "informe"  # `afinar eval`'s report: metrics.json and index.html
DATA_REPORT_DIR = "informe_datos"  # `afinar inspect`'s report on the data; kept when a run is overwritten
EXPORT_DIR = "export"  # `afinar export`'s default output
EXPORT_SUMMARY = "afinar_export.json"  # in an export folder: what was written and how it was checked
MERGE_SUMMARY = "afinar_merge.json"  # in a merged folder (`afinar merge`): its run, its base and the logits check
DATA_FINGERPRINT = "data_fingerprint.json"  # hashes and counts of the training data (never its text)
STOP_REQUEST = ".detener"  # created in the run folder (by the studio, or by hand) to stop training at the end of the current step, saving everything; resumable with --resume


@dataclass
class ModelRef:
    path: Path
    kind: str  # "run" (base + LoRA adapter) | "full" (a run of `method: full`: a whole model) | "merged"
    base_path: str | None  # the base the run started from ("merged": None)
    recipe: Recipe | None

    @property
    def is_run(self) -> bool:
        """A training run's folder (LoRA or full), with its recipe and base: what eval, merge and export take."""
        return self.kind in ("run", "full")

    @property
    def standalone(self) -> bool:
        """The folder loads by itself with transformers (no adapter to put on a base)."""
        return self.kind in ("full", "merged")

    @property
    def qlora(self) -> bool:
        """A LoRA run trained on a 4-bit (NF4) base: its adapter belongs on that base (load_base_as_trained)."""
        return not self.standalone and self.recipe is not None and self.recipe.model.quantization == "4bit"

    @property
    def system_prompt(self) -> str | None:
        return self.recipe.data.system_prompt if self.recipe else None

    @property
    def generation(self) -> GenerationSection:
        return self.recipe.generation if self.recipe else GenerationSection()

    @property
    def eval_report(self) -> Path | None:
        """The page `afinar eval` wrote for this run, if it did."""
        page = self.path / EVAL_DIR / "index.html"
        return page if page.is_file() else None


def read_recipe(folder: Path) -> Recipe | None:
    path = folder / RECIPE
    if not path.is_file():
        return None
    import yaml

    return recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


def open_ref(path: str | Path) -> ModelRef:
    folder = Path(path)
    if not folder.is_dir():
        raise AfinarError("C001", "no existe la carpeta del modelo o de la ejecución.", where=str(folder))
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        return ModelRef(folder, "run", base, read_recipe(folder))
    if (folder / "config.json").is_file():
        info = folder / RUN_INFO  # only training writes it: a merged copy has the recipe but not this
        if info.is_file():
            run = json.loads(info.read_text(encoding="utf-8"))
            if run.get("method") == "full":
                return ModelRef(folder, "full", run.get("base_path"), read_recipe(folder))
        return ModelRef(folder, "merged", None, read_recipe(folder))
    hint = None
    if (folder / CHECKPOINTS).is_dir():
        hint = "el entrenamiento no terminó: continúa con 'afinar train RECETA --resume'"
    raise AfinarError(
        "C002",
        "la carpeta no tiene ni un adaptador LoRA (adapter_config.json) ni un modelo (config.json).",
        where=str(folder),
        hint=hint,
    )


def load_ref(ref: ModelRef, dtype=None):
    """(model, tokenizer) ready for generation: base + adapter for LoRA runs, else the folder itself."""
    if ref.standalone:
        return load_model(str(ref.path), dtype=dtype), load_tokenizer(str(ref.path))
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base_as_trained(ref, dtype), str(ref.path))
    return model, load_tokenizer(str(ref.path))


def load_base_as_trained(ref: ModelRef, dtype=None):
    """The run's base with the weights its adapter learned on. QLoRA (`quantization: 4bit`): the base quantised to NF4
    as in training, then dequantized to plain float layers — not the original weights: the adapter compensates the
    quantization error it trained with, and on the embedded base (already a Q4_1 GGUF) NF4 moves the model enough that
    the same adapter on the original weights picked another top-1 token at 49 % of positions. So eval, chat, serve,
    merge and every export run the model that trained and was evaluated, merged in float (never into 4-bit layers)."""
    import torch

    if not ref.qlora:
        return load_model(ref.base_path, dtype=dtype)
    import transformers

    quantized = load_model(ref.base_path, dtype=torch.float32, quantization="4bit")
    log = transformers.logging.get_logger("transformers.integrations.bitsandbytes")
    level = log.level
    log.setLevel("ERROR")  # its English "The model is going to be dequantized in torch.float32" note
    try:
        base = quantized.dequantize()  # Linear4bit → nn.Linear holding the NF4 values (bitsandbytes' dequantize_4bit)
    finally:
        log.setLevel(level)
    return base.to(dtype) if dtype is not None else base


def read_export_summary(folder: Path) -> dict:
    """The export folder's summary (written by `afinar export`); {} when it has none."""
    summary = Path(folder) / EXPORT_SUMMARY
    return json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {}


def export_parts(path: Path) -> tuple[str, Path, ModelRef | None] | None:
    """(kind, file or folder, run ref or None) for an export folder, a GGUF in it or its ONNX folder; else None."""

    def run_of(summary: dict) -> ModelRef | None:
        # An export copied elsewhere (another machine) no longer has its run beside it: it still loads by itself.
        run = summary.get("run")
        return open_ref(run) if run and Path(run).is_dir() else None

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":  # RUN/export/gguf/x.gguf
        return "gguf", path, run_of(read_export_summary(path.parent.parent))
    if (path / "onnx" / "model.onnx").is_file():  # RUN/export/onnx
        return "onnx", path, run_of(read_export_summary(path.parent))
    exports = (summary := read_export_summary(path)).get("exports", {})
    ggufs = [k for k in exports if k.startswith("gguf-")]
    if ggufs:
        best = "gguf-q8_0" if "gguf-q8_0" in ggufs else ggufs[0]
        return "gguf", path / exports[best]["ruta"], run_of(summary)
    if "onnx" in exports:
        return "onnx", path / exports["onnx"]["ruta"], run_of(summary)
    return None
