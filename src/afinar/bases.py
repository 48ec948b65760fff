"""Which base could this recipe start from here? A catalog for `afinar plan RECETA --bases` and the studio's model
step: the embedded base, local GGUF files and Ollama models, and the guides' Hub models, each with the plan's verdict
("cabe" / "justo" / "no cabe") on this machine and its estimated time, from its shape alone: nothing is downloaded.

The Hub models' shapes are hard-coded below (config.json as published on each model page, and the safetensors bytes a
download fetches), each with where the numbers were read. The planner (planning/estimate.py) builds each model on the
meta device from its config and traces a step of the recipe's largest micro-batch: memory is the plan's own; time is
the plan's FLOPs per token times the recipe's tokens per step, at this CPU's measured matmul rate × the fraction a step
reaches (planning/timing.py), or scaled from a calibrated plan of the recipe's own base when one is given. The data's
token counts are those of the recipe's current tokenizer (another family's tokenizer may cut Spanish into fewer
tokens: Qwen's and Llama 3's vocabularies are 3× SmolLM2's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from afinar import ollama_store
from afinar.data.chat_format import recipe_tokenizer
from afinar.data.pipeline import prepare_training_data
from afinar.models import afinar_home, embedded_gguf_path, load_config, resolve_base
from afinar.planning.estimate import (
    DataShape,
    decimal,
    estimate,
    gib,
    minutes,
    resolve_target,
)
from afinar.planning.timing import CPU_FRACTION, matmul_tflops


@dataclass(frozen=True)
class HubBase:
    repo_id: str
    label: str  # Spanish, short
    config: dict  # config.json's shape fields (AutoConfig.for_model)
    download_bytes: int  # the safetensors a download fetches
    gated: bool = False
    source: str = ""


# Sources: config.json values and safetensors sizes as served by huggingface.co for each repository (the sizes are the
# LFS sizes the Hub lists, read in copies found by exact search in the stored code index; see each entry).
HUB_BASES: tuple[HubBase, ...] = (
    HubBase(
        "HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2 360M (la familia del modelo incluido, ×2,7)",
        {"model_type": "llama", "hidden_size": 960, "num_hidden_layers": 32, "intermediate_size": 2560,
         "num_attention_heads": 15, "num_key_value_heads": 5, "vocab_size": 49152, "tie_word_embeddings": True,
         "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu"},
        723_674_912,
        source=("shape: SmolLM2 configs (n_layer 32, n_head 15, n_kv_heads 5, n_embd 960, intermediate 2560, vocab "
                "49152; tied) as listed with hf_repo HuggingFaceTB/SmolLM2-360M and the 360M-Instruct fingerprint "
                "(params 361 821 120, tied); model.safetensors 723 674 912 B at revision a10cc15 (several pinned "
                "copies of HuggingFaceTB/SmolLM2-360M-Instruct)"),
    ),
    HubBase(
        "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0,5B Instruct (buen español)",
        {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
         "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
         "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
         "max_window_layers": 21, "use_sliding_window": False},
        988_097_824,
        source=("config.json of Qwen/Qwen2.5-0.5B-Instruct (hidden 896, 24 layers, 14/2 heads, intermediate 4864, "
                "vocab 151936, tied; its model card: 0.49B parameters, 0.36B non-embedding); model.safetensors "
                "988 097 824 B, LFS sha256 fdf756fa… (copies of the repository's file list)"),
    ),
    HubBase(
        "meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct (requiere aceptar la licencia en el Hub)",
        {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
         "tie_word_embeddings": True, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
         "rope_theta": 500000.0, "hidden_act": "silu",
         "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
        2_471_645_608, gated=True,
        source=("config.json of meta-llama/Llama-3.2-1B-Instruct at 4e20de36 (bench/published_memory.py CONFIGS, "
                "with its source); model.safetensors 2 471 645 608 B (listings of the repository's files)"),
    ),
    HubBase(
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "TinyLlama 1.1B Chat (la guía de enfermería; poco español)",
        {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632,
         "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000, "tie_word_embeddings": False,
         "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu"},
        2_200_119_864,
        source=("config.json of TinyLlama/TinyLlama-1.1B-Chat-v1.0 at fe8a4ea (hidden 2048, 22 layers, 32/4 heads, "
                "intermediate 5632, vocab 32000, untied); model.safetensors 2 200 119 864 B, LFS sha256 6e6001da…"),
    ),
    HubBase(
        "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1,5B Instruct (buen español)",
        {"model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960,
         "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
         "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
         "max_window_layers": 21, "use_sliding_window": False},
        3_087_467_144,
        source=("config.json of Qwen/Qwen2.5-1.5B-Instruct (hidden 1536, 28 layers, 12/2 heads, intermediate 8960, "
                "vocab 151936, tied); model.safetensors 3 087 467 144 B, LFS sha256 a961db72… (pinned copies)"),
    ),
    HubBase(
        "microsoft/phi-2", "Phi-2 2,7B (inglés y código; sin plantilla de chat)",
        {"model_type": "phi", "hidden_size": 2560, "num_hidden_layers": 32, "intermediate_size": 10240,
         "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 51200, "tie_word_embeddings": False,
         "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
         "partial_rotary_factor": 0.4, "hidden_act": "gelu_new", "qk_layernorm": False},
        5_559_367_680,
        source=("config.json of microsoft/phi-2 (transformers 4.37 format: hidden 2560, 32 layers, 32 heads, "
                "intermediate 10240, vocab 51200, partial_rotary_factor 0.4, untied; several verbatim copies). "
                "Download: two fp16 shards; model-00001-of-00002.safetensors is 4 995 584 424 B (x-linked-size as "
                "served); the total here is derived, 2 779 683 840 parameters × 2 B (the second shard's own size "
                "was not found)"),
    ),
)

EMBEDDED_KEY = "smollm2-135m"


@dataclass
class BaseChoice:
    key: str  # what `model.base` takes: smollm2-135m, a .gguf path, ollama:NAME or a Hub id
    label: str
    kind: str  # "incluido" | "gguf" | "ollama" | "hub"
    parameters: int | None = None
    download_bytes: int | None = None  # Hub: what a download fetches; local: the file's size
    gated: bool = False
    memory_bytes: int | None = None
    available_bytes: int | None = None
    verdict: str | None = None  # cabe | justo | no cabe; None when the shape could not be read
    step_seconds: float | None = None
    total_seconds: float | None = None
    current: bool = False  # the recipe's own base
    note: str = ""
    source: str = field(default="", repr=False)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "source"}
        return out


def _hub_config(entry: HubBase):
    from transformers import AutoConfig

    fields = dict(entry.config)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _gguf_config(path: Path):
    """The config of a GGUF file from its metadata alone (no tensors read)."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    fields = dict(load_gguf_checkpoint(str(path), return_tensors=False)["config"])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def local_gguf_files(folders: list[Path] | None = None) -> list[Path]:
    """*.gguf in the current folder, ./models and afinar's home (not recursive: modest on purpose)."""

    folders = folders if folders is not None else [Path.cwd(), Path.cwd() / "models", afinar_home()]
    found, seen = [], set()
    for folder in folders:
        try:
            files = sorted(folder.glob("*.gguf"))
        except OSError:
            continue
        for path in files:
            real = path.resolve()
            if real not in seen and path.is_file():
                seen.add(real)
                found.append(path)
    return found


def ollama_models() -> list:
    """The local Ollama store's models (afinar.ollama_store), or [] where there is none or the module is missing."""
    try:
        return list(ollama_store.list_models())
    except Exception:  # noqa: BLE001 - an unreadable store must not break the catalog
        return []


def _candidates(include_hub: bool, folders: list[Path] | None) -> list[tuple[BaseChoice, object]]:
    """(choice, a callable giving its config) for every base that could be picked."""

    out: list[tuple[BaseChoice, object]] = [
        (BaseChoice(EMBEDDED_KEY, "SmolLM2 135M Instruct (incluido, sin descarga)", "incluido"),
         lambda: load_config(resolve_base(EMBEDDED_KEY)))]
    try:
        out[0][0].download_bytes = embedded_gguf_path(EMBEDDED_KEY).stat().st_size
    except Exception:  # noqa: BLE001
        pass
    for path in local_gguf_files(folders):
        out.append((BaseChoice(str(path), f"{path.name} (GGUF local)", "gguf", download_bytes=path.stat().st_size),
                    lambda path=path: _gguf_config(path)))
    for model in ollama_models():
        out.append((BaseChoice(f"ollama:{model.name}", f"{model.name} (Ollama)", "ollama",
                               download_bytes=getattr(model, "size", None)),
                    lambda model=model: _gguf_config(Path(model.gguf))))
    if include_hub:
        for entry in HUB_BASES:
            note = "descarga con licencia aceptada en el Hub (HF_TOKEN)" if entry.gated else ""
            out.append((BaseChoice(entry.repo_id, entry.label, "hub", download_bytes=entry.download_bytes,
                                   gated=entry.gated, note=note, source=entry.source),
                        lambda entry=entry: _hub_config(entry)))
    return out


def candidate_bases(recipe, shape=None, target=None, reference=None, include_hub: bool = True,
                    folders: list[Path] | None = None, runtime_bytes: int | None = None) -> list[BaseChoice]:
    """Every base the user could pick for `recipe`, with the plan on `target` (default: this machine's CPU or GPU).

    `shape`: the recipe's data (planning.estimate.DataShape; default: read from the recipe's data with its current
    tokenizer). `reference`: a plan of the recipe's own base (`afinar plan`); when calibrated, the others' times are
    scaled from its measured step by FLOPs (planning/timing.py's CPU_FRACTION otherwise). The scaling holds: the
    rate a LoRA step reaches on a CPU is nearly the same from 135M to 1.5B parameters (bench/plan_accuracy.py, one
    thread: fp32 0.092–0.095 TFLOP/s, bf16 0.23–0.29)."""

    target = target or resolve_target(None, recipe)
    if shape is None:
        shape = recipe_shape(recipe)
    rate = None
    choices = []
    for choice, config_of in _candidates(include_hub, folders):
        choice.current = _same_base(choice.key, recipe.model.base)
        try:
            config = config_of()
        except Exception as exc:  # noqa: BLE001 - an unreadable GGUF or an architecture transformers lacks
            choice.note = f"no se pudo leer su forma: {str(exc)[:120]}"
            choices.append(choice)
            continue
        variant = recipe.model_copy(deep=True)
        variant.model.base = choice.key
        try:
            plan = estimate(variant, config, shape, target, measure_time=target.kind == "gpu",
                            runtime_bytes=runtime_bytes, detailed=False)
        except Exception as exc:  # noqa: BLE001 - e.g. a LoRA target this architecture does not have
            choice.note = f"el plan falló: {str(exc)[:120]}"
            choices.append(choice)
            continue
        size = plan.model_size
        choice.parameters = size.parameters if size else None
        choice.memory_bytes, choice.available_bytes = plan.memory.total, plan.memory.available_bytes
        choice.verdict = plan.memory.verdict
        if target.kind == "gpu":
            choice.step_seconds = plan.step_seconds
        elif reference is not None and reference.calibrated and reference.flops_per_token:
            # the measured step of the recipe's own base, scaled by FLOPs: the rate a step reached per thread was
            # nearly the same from 135M to 1.5B (fp32 0.092–0.095, bf16 0.23–0.29 TFLOP/s; bench/plan_accuracy.py)
            choice.step_seconds = reference.step_seconds * plan.flops_per_token / reference.flops_per_token
        else:
            if rate is None:
                rate = matmul_tflops(target.precision, target.device_type) * 1e12
            choice.step_seconds = plan.flops_per_token * shape.tokens_per_step / (rate * CPU_FRACTION)
        choice.total_seconds = choice.step_seconds * shape.total_steps
        choices.append(choice)
    return choices


def _same_base(key: str, base: str) -> bool:
    return key.strip().lower() == (base or EMBEDDED_KEY).strip().lower()


def recipe_shape(recipe):
    """The recipe's data as the plan sees it, tokenized by its current base's tokenizer."""

    base_path = resolve_base(recipe.model.base)
    tokenizer, _ = recipe_tokenizer(base_path, recipe.data.template)
    prepared = prepare_training_data(recipe, tokenizer, progress=False, say=lambda *a, **k: None)
    return DataShape.of(prepared, recipe)


def render_table(choices: list[BaseChoice], target_name: str) -> str:
    """The catalog as a console table, in Spanish."""

    lines = [f"Bases posibles para esta receta en {target_name} (sin descargar nada; el tiempo es estimado, con los "
             "tokens del tokenizador actual)"]
    rows = []
    for c in choices:
        params = f"{decimal(c.parameters / 1e9, 2)} B" if c.parameters else "?"
        size = (("descarga " if c.kind == "hub" else "") + f"{decimal(c.download_bytes / 1e9, 2)} GB"
                if c.download_bytes else "")
        memory = gib(c.memory_bytes) if c.memory_bytes else "?"
        verdict = (c.verdict or "?").upper()
        time = f"{decimal(c.step_seconds, 1)} s/paso, {minutes(c.total_seconds)}" if c.step_seconds else "?"
        mark = "→ " if c.current else "  "
        rows.append((mark + c.key, params, size, memory, verdict, time, c.note))
    headers = ("  base (model.base)", "parámetros", "tamaño", "memoria", "veredicto", "tiempo de la receta", "")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    lines.append("  → la base de la receta. Para cambiarla: model.base en la receta, o --base en train/plan.")
    return "\n".join(lines)
