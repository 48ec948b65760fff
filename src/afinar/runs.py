"""Reading what a run folder or a merged-model folder holds, for merge, chat and demo."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from afinar.config import GenerationSection, Recipe, recipe_from_dict
from afinar.errors import AfinarError
from afinar.training import RUN_INFO


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
    def system_prompt(self) -> str | None:
        return self.recipe.data.system_prompt if self.recipe else None

    @property
    def generation(self) -> GenerationSection:
        return self.recipe.generation if self.recipe else GenerationSection()


def read_recipe(folder: Path) -> Recipe | None:
    path = folder / "recipe.yaml"
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
    if (folder / "checkpoints").is_dir():
        hint = "el entrenamiento no terminó: continúa con 'afinar train RECETA --resume'"
    raise AfinarError(
        "C002",
        "la carpeta no tiene ni un adaptador LoRA (adapter_config.json) ni un modelo (config.json).",
        where=str(folder),
        hint=hint,
    )


def load_ref(ref: ModelRef, dtype=None):
    """(model, tokenizer) ready for generation: base + adapter for LoRA runs, else the folder itself."""
    from afinar.models import load_model, load_tokenizer

    if ref.standalone:
        return load_model(str(ref.path), dtype=dtype), load_tokenizer(str(ref.path))
    from peft import PeftModel

    base = load_model(ref.base_path, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(ref.path))
    return model, load_tokenizer(str(ref.path))
