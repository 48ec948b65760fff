"""The recipe: one YAML file, validated with pydantic (`extra="forbid"`), saved resolved beside every run."""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from afinar.data.chat_format import check_spec
from afinar.data.records import TABLE_SUFFIXES
from afinar.errors import AfinarError

DEFAULT_SYSTEM_PROMPT = (
    "Eres un asistente de enfermería. Respondes en español, de forma clara, breve y segura, "
    "y recomiendas llamar a emergencias cuando la situación lo requiere."
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Strict):
    base: str = "smollm2-135m"
    quantization: Literal["none", "4bit"] = "none"


class DataSource(Strict):
    path: str
    weight: Annotated[float, Field(gt=0)] = 1.0
    format: Literal["auto", "alpaca", "chat", "structured", "pregunta"] = "auto"
    # A spreadsheet or table (afinar.data.tables): which column holds each field (absent: recognized from the header,
    # e.g. «Pregunta», «Consulta», «Respuesta»; null: no column, not even one whose header looks like it) and which
    # sheet to read (name or 1-based number; None: the first).
    columnas: dict[Literal["pregunta", "respuesta", "sistema", "contexto", "claves", "peligros"],
                   str | None] | None = None
    hoja: str | Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _table_options_need_a_table(self):
        if (self.columnas or self.hoja is not None) and not self.path.lower().endswith(TABLE_SUFFIXES):
            raise ValueError(f"'columnas' y 'hoja' solo valen para hojas de cálculo y tablas "
                             f"({', '.join(TABLE_SUFFIXES)}), no para '{self.path}'")
        return self


class DataSection(Strict):
    sources: Annotated[list[DataSource], Field(min_length=1)]
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    max_length: Annotated[int, Field(ge=16, le=131072)] = 512
    overlength: Literal["drop", "truncate", "error"] = "drop"
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    val_file: str | None = None
    split_seed: int = 42
    # How conversations are rendered: `auto` (the tokenizer's own chat template), a named one (afinar.data.chat_format
    # NAMED: chatml, zephyr, llama3, phi3, gemma, usuario-asistente, tutor-phi2) or a .jinja file (relative to the
    # recipe). A base model without a template needs one.
    template: str = "auto"

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        return check_spec(value)


class LoraSection(Strict):
    r: Annotated[int, Field(ge=1, le=1024)] = 8
    alpha: Annotated[float, Field(gt=0)] = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: Literal["all-linear"] | Annotated[list[str], Field(min_length=1)] = ["q_proj", "v_proj"]
    # DoRA (PEFT `use_dora`): each adapted weight's magnitude trained apart from its direction.
    use_dora: bool = False


class TrainSection(Strict):
    epochs: Annotated[float, Field(gt=0)] | None = 1
    max_steps: Annotated[int, Field(ge=1)] | None = None
    # A time budget for the whole `afinar train` (minutes): the steps that fit, measured on this machine, at most
    # `epochs`; the scheduler's warmup and decay are planned for them (afinar/budget.py).
    max_minutes: Annotated[float, Field(gt=0)] | None = None
    lr: Annotated[float, Field(gt=0)] = 2e-4
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    # A micro-batch takes examples in order until `batch_size` examples or `tokens_per_batch` tokens: the token
    # budget, not the longest example, sets peak memory.
    batch_size: Annotated[int, Field(ge=1)] = 4
    tokens_per_batch: Annotated[int, Field(ge=16)] = 1024
    # Examples concatenated in one row with position_ids restarting at each (no padding, no cross-attention);
    # false: padded batches grouped by similar length.
    packing: bool = True
    grad_accum: Annotated[int, Field(ge=1)] = 1
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    # NEFTune noise on the input embeddings while training (transformers/TRL's `neftune_noise_alpha`; 5 in its paper).
    neftune_noise_alpha: Annotated[float, Field(gt=0)] | None = None
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    # CPU on Linux with glibc's allocator: hand freed activations back to the system instead of keeping them on the
    # heap (afinar/heap.py): ~0.6 GB less at the peak of the nursing recipe in fp32, ~30 % slower steps. auto: only
    # when the plan says the run fills this machine's memory ("justo" or "no cabe"). Under tcmalloc/jemalloc (which
    # `afinar train` preloads when the system has one) it is not needed and does nothing.
    compact_heap: bool | Literal["auto"] = "auto"
    # Packed rows hold once the prefix every example shares (system prompt, the template's opening) and each example
    # attends to it (afinar/attention.py): the same gradients, fewer tokens per step. false: a copy per example.
    shared_prefix: bool = True
    eval_every: Annotated[int, Field(ge=1)] = 50
    save_every: Annotated[int, Field(ge=1)] = 50
    keep_last: Annotated[int, Field(ge=1)] = 2
    log_every: Annotated[int, Field(ge=1)] = 1
    # Experiment tracking through accelerate's trackers (none: only metrics.jsonl and loss.png).
    report_to: Literal["none", "tensorboard", "wandb", "mlflow", "trackio"] = "none"
    # torch.compile of the decoder (opt-in: measured by bench/train_throughput.py).
    compile: bool = False

    @model_validator(mode="after")
    def _needs_a_length(self):
        if self.epochs is None and self.max_steps is None:
            raise ValueError("indica 'epochs' o 'max_steps'")
        return self


class GenerationSection(Strict):
    temperature: Annotated[float, Field(ge=0)] = 0.6
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.9
    top_k: Annotated[int, Field(ge=0)] = 0
    repetition_penalty: Annotated[float, Field(gt=0)] = 1.1
    max_new_tokens: Annotated[int, Field(ge=1)] = 256


class EvaluationSection(Strict):
    # The held-out set `afinar eval` answers by default (a file, or afinar:NAME for a shipped one): one with
    # `claves`/`peligros` per example is what lets the evaluation say whether answers are right. None: the
    # validation split of the recipe's data.
    set: str | None = None


class Recipe(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[\w.-]+$")]
    description: str = ""
    # lora: a LoRA adapter on the frozen base (the `lora:` section). full: every weight of the base trains and the
    # run folder holds a whole model (`lora:` is ignored and left out of the saved recipe; no 4-bit: quantized
    # weights cannot be trained).
    method: Literal["lora", "full"] = "lora"
    model: ModelSection = ModelSection()
    data: DataSection
    lora: LoraSection = LoraSection()
    train: TrainSection = TrainSection()
    generation: GenerationSection = GenerationSection()
    evaluation: EvaluationSection = EvaluationSection()
    # Domain checks `afinar eval` runs on every generation (see afinar.evaluate.checks.CHECKS).
    checks: list[Literal["epicrisis", "enfermeria", "tutor"]] = []
    output_dir: str | None = None

    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    @model_validator(mode="after")
    def _method_fits(self):
        if self.method == "full" and self.model.quantization == "4bit":
            raise ValueError("method: full entrena todos los pesos y no se pueden entrenar pesos de 4 bits: "
                             "quita model.quantization: 4bit o usa method: lora (QLoRA)")
        return self


# --- loading with errors that name the file, the line and the nearest valid key -----------------


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys of the section at `loc` (walks nested pydantic models and lists)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            inner = getattr(candidate, "__args__", (candidate,))[0] if getattr(candidate, "__origin__", None) is list else candidate
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                current = inner
                break
        else:
            return []
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _line_of(root, loc: tuple) -> int | None:
    """1-based YAML line of the key at `loc`, from the composed node tree."""
    node, line = root, None
    for part in loc:
        if node is None:
            break
        if getattr(node, "tag", "").endswith(":map"):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif getattr(node, "tag", "").endswith(":seq") and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _translate(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return "falta este campo obligatorio"
    if kind == "literal_error":
        return f"valor no válido; opciones: {ctx.get('expected', '')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"debe ser {sign} {bound}"
    if kind.endswith(("_parsing", "_type")):
        expected = kind.split("_")[0]
        names = {"int": "un entero", "float": "un número", "bool": "true/false", "string": "un texto", "list": "una lista"}
        return f"tipo incorrecto: se esperaba {names.get(expected, expected)}"
    if kind == "too_short":
        return "no puede estar vacío"
    if kind == "string_pattern_mismatch":
        return "solo letras, números, '.', '_' y '-'"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"]


def recipe_from_dict(data: dict, source: str = "<receta>", yaml_root=None) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
            dotted = ".".join(str(p) for p in loc)
            line = _line_of(yaml_root, loc) if yaml_root is not None else None
            where = f"{source}:{line}" if line else source
            if err["type"] == "extra_forbidden":
                valid = _fields_at(Recipe, loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
                msg = f"clave desconocida '{dotted}'"
                msg += f"; ¿quisiste decir '{close[0]}'?" if close else f"; claves válidas aquí: {', '.join(valid)}"
                lines.append(f"{where}: R002: {msg}")
            else:
                lines.append(f"{where}: R003: {dotted or 'receta'}: {_translate(err)}")
        raise AfinarError("R001", "la receta no es válida:\n  " + "\n  ".join(lines), where=source) from None


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise AfinarError("R004", "no existe el archivo de receta.", where=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise AfinarError("R005", f"YAML mal formado: {getattr(exc, 'problem', exc)}", where=where) from None
    if not isinstance(data, dict):
        raise AfinarError("R005", "la receta debe ser un diccionario YAML (claves: name, model, data, ...).", where=str(path))
    recipe = recipe_from_dict(data, str(path), root)
    # Data paths in a recipe are relative to the recipe file, so recipes work from any folder.
    for source in recipe.data.sources:
        source.path = str(_resolve_data_path(source.path, path.parent))
    if recipe.data.val_file:
        recipe.data.val_file = str(_resolve_data_path(recipe.data.val_file, path.parent))
    if recipe.data.template.endswith(".jinja"):
        recipe.data.template = str(_resolve_data_path(recipe.data.template, path.parent))
    return recipe


def _resolve_data_path(raw: str, recipe_dir: Path) -> Path:
    if raw.startswith("afinar:"):
        from afinar.data.formats import shipped_dataset

        return shipped_dataset(raw.removeprefix("afinar:"))
    candidate = Path(raw).expanduser()
    if candidate.is_absolute():
        return candidate
    beside = recipe_dir / candidate
    return beside if beside.exists() or not candidate.exists() else candidate.resolve()


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """CLI flags like --max-steps: dotted keys ('train.max_steps') validated like the YAML."""
    data = recipe.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return recipe_from_dict(data, "<opciones de la línea de órdenes>")


class Override(argparse.Action):
    """A command-line option that sets one recipe key: `--max-steps 3` with `key="train.max_steps"` adds
    {"train.max_steps": 3} to the `overrides` dict apply_overrides reads (dest="overrides"). With `const`, a switch
    that sets that value (`--sin-gradient-checkpointing`: const=False). Absent options add nothing."""

    def __init__(self, option_strings, dest, key: str, const=None, default=argparse.SUPPRESS, **kwargs):
        if const is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, const=const, default=default, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None):
        overrides = dict(getattr(namespace, self.dest, None) or {})
        overrides[self.key] = self.const if self.nargs == 0 else values
        setattr(namespace, self.dest, overrides)


def dump_recipe(recipe: Recipe) -> str:
    import yaml

    unused = {"lora"} if recipe.method == "full" else set()
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude=unused), allow_unicode=True, sort_keys=False)
