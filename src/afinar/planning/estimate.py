"""The plan: will this recipe fit on this device, and how long will it take? (`afinar plan`, and `afinar train`'s
one-line summary and refusal).

Inputs: the base's `config.json` only (no weights), the recipe, the recipe's data as training batches it
(data/pipeline.py: tokens per step, the largest micro-batch), and a target: this machine (CPU or its GPU) or a GPU
of planning/devices.py. Memory: planning/memory.py on a step traced by planning/trace.py; time: planning/timing.py,
measured on this machine when `calibration` is given (train.py measures real steps and the real peak).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from afinar import heap
from afinar.atomic import atomic_write_text
from afinar.errors import AfinarError
from afinar.planning import memory as mem
from afinar.planning.devices import DEVICES
from afinar.planning.model_size import ModelSize, model_size
from afinar.planning.timing import (
    CPU_FRACTION,
    StepTimeFit,
    flops_per_token,
    gpu_step_seconds,
    matmul_tflops,
)

GIB = mem.GIB
TRACE_CACHE_VERSION = 5


@dataclass(frozen=True)
class Target:
    """Where the run would train."""
    kind: str  # "cpu" | "cuda" (this machine's GPU) | "gpu" (one of DEVICES, not this machine)
    name: str
    precision: str  # fp32 | bf16 | fp16
    memory_bytes: int
    available_bytes: int
    local: bool
    device: object = None  # planning.devices.Device for table GPUs

    @property
    def device_type(self) -> str:
        return "cpu" if self.kind == "cpu" else "cuda"


@dataclass(frozen=True)
class DataShape:
    """What the plan needs from the recipe's data (data/pipeline.TrainingData)."""
    rows: int  # rows of the largest micro-batch
    width: int  # its widest row (tokens)
    examples_per_row: int
    labelled: int  # labelled positions in it
    tokens_per_step: float  # real tokens per optimizer step, mean over an epoch
    micro_batches_per_step: int
    steps_per_epoch: int
    total_steps: int
    mean_example_tokens: float
    labelled_fraction: float
    examples: int
    longest_example: int = 0
    full_step_tokens: float = 0.0  # real tokens of a step of the largest micro-batches (the epoch's first steps)

    @classmethod
    def of(cls, prepared, recipe, processes: int = 1) -> "DataShape":
        from afinar.data.batching import examples_of

        cfg = recipe.train
        lengths = prepared.lengths
        largest = prepared.largest_micro_batch()
        widest = max(sum(lengths[i] for i in row) for row in largest)
        labelled_of = prepared.data.train["n_trained"]  # labelled positions of each example, counted when tokenized
        tokens = prepared.micro_batch_tokens()
        return cls(
            rows=len(largest), width=widest,
            examples_per_row=max(1, round(len(examples_of(largest)) / len(largest))),
            labelled=sum(labelled_of[i] for i in examples_of(largest)),
            tokens_per_step=sum(tokens) / max(1, len(tokens)) * cfg.grad_accum,
            micro_batches_per_step=cfg.grad_accum,
            steps_per_epoch=prepared.steps_per_epoch(cfg.grad_accum, processes),
            total_steps=prepared.total_steps(cfg, processes),
            mean_example_tokens=sum(lengths) / len(lengths),
            labelled_fraction=sum(labelled_of) / max(1, sum(lengths)),
            examples=len(lengths),
            longest_example=max(lengths),
            full_step_tokens=float(sum(lengths[i] for i in examples_of(largest)) * cfg.grad_accum),
        )


@dataclass
class Plan:
    recipe: str
    base: str
    method: str
    target: Target
    data: DataShape
    memory: mem.MemoryEstimate
    activation_bytes_per_token: dict  # {"con_checkpointing": …, "sin_checkpointing": …}
    step_seconds: float
    flops_per_token: float
    calibrated: bool
    fit: StepTimeFit | None = None
    suggestions: list = field(default_factory=list)  # [(text, bytes saved)]
    model_size: ModelSize | None = None  # the base's shape (bases.py scales other bases' times from it)
    bases: list | None = None  # `afinar plan --bases`: the catalog (bases.BaseChoice), planned on the same target

    @property
    def full_step_seconds(self) -> float:
        """A step of full micro-batches. The batcher fills rows first-fit-decreasing, so an epoch starts with its
        fullest micro-batches: the first steps take this long, the epoch's mean step (`step_seconds`) less."""
        tokens = self.data.full_step_tokens
        if not tokens or tokens <= self.data.tokens_per_step:
            return self.step_seconds
        if self.fit is not None:
            return self.fit.seconds(tokens, self.data.micro_batches_per_step)
        return self.step_seconds * tokens / max(self.data.tokens_per_step, 1e-9)

    @property
    def total_seconds(self) -> float:
        return self.step_seconds * self.data.total_steps

    @property
    def epoch_seconds(self) -> float:
        return self.step_seconds * self.data.steps_per_epoch

    def one_line(self) -> str:
        how = "medido aquí" if self.calibrated else "estimado"
        full = self.full_step_seconds
        first = (f"; los primeros, con los micro-lotes más llenos, ≈ {decimal(full, 1)} s"
                 if full > 1.05 * self.step_seconds else "")
        return (f"Plan: memoria ≈ {gib(self.memory.total)} de {gib(self.memory.available_bytes)} disponibles en "
                f"{self.target.name} ({self.memory.verdict}); ≈ {decimal(self.step_seconds, 1)} s por paso de media "
                f"({how}{first}), "
                f"{self.data.total_steps} pasos ≈ {minutes(self.total_seconds)}")

    def explain_out_of_memory(self) -> str:
        lines = [f"el plan calculaba un pico de {gib(self.memory.total)} para {gib(self.memory.available_bytes)} "
                 f"disponibles en {self.target.name}:"]
        lines += [f"  {p.label}: {gib(p.bytes)}" for p in self.memory.parts]
        return "\n".join(lines)

    def suggestion_text(self) -> str:
        return "; ".join(f"{text} (−{gib(saved)})" for text, saved in self.suggestions) or "baja data.max_length"

    def to_json(self) -> dict:
        m = self.memory
        return {
            "recipe": self.recipe, "base": self.base, "method": self.method,
            "device": {"kind": self.target.kind, "name": self.target.name, "precision": self.target.precision,
                       "memory_gb": round(self.target.memory_bytes / GIB, 3),
                       "available_gb": round(self.target.available_bytes / GIB, 3), "local": self.target.local},
            "memory": {
                "total_gb": round(m.total / GIB, 3), "verdict": m.verdict,
                "training_peak_gb": round(m.training_peak / GIB, 3), "load_peak_gb": round(m.load_peak / GIB, 3),
                "parts_gb": {p.key: round(p.bytes / GIB, 4) for p in m.parts},
                "activations_mb_per_token": {k: round(v / 2**20, 4) for k, v in self.activation_bytes_per_token.items()},
                "measured": {k: round(v / GIB, 3) if k.endswith("bytes") else v for k, v in m.measured.items()},
                "largest_micro_batch": {"rows": self.data.rows, "tokens_per_row": self.data.width},
            },
            "time": {
                "step_seconds": round(self.step_seconds, 4), "steps": self.data.total_steps,
                "full_step_seconds": round(self.full_step_seconds, 4),
                "full_step_tokens": round(self.data.full_step_tokens, 1),
                "steps_per_epoch": self.data.steps_per_epoch, "epoch_seconds": round(self.epoch_seconds, 1),
                "total_seconds": round(self.total_seconds, 1), "tokens_per_step": round(self.data.tokens_per_step, 1),
                "flops_per_token": round(self.flops_per_token), "calibrated": self.calibrated,
                "fit": None if self.fit is None else {"fixed_seconds": self.fit.fixed, "seconds_per_token": self.fit.per_token,
                                                      "optimizer_seconds": self.fit.optimizer,
                                                      "samples": [list(s) for s in self.fit.samples]},
            },
            "suggestions": [{"change": text, "saves_gb": round(saved / GIB, 3)} for text, saved in self.suggestions],
        }


def gib(n: float) -> str:
    return f"{decimal(n / GIB)} GiB"


def decimal(x: float, digits: int = 2) -> str:
    """Spanish decimals: 2,46 (and thousands apart with a thin space: 4 884 480)."""
    return f"{x:,.{digits}f}".replace(",", " ").replace(".", ",")


def minutes(seconds: float) -> str:
    if round(seconds / 60) >= 60:  # rounded to the minute first: 7 180 s is "2 h 00 min", never "1 h 60 min"
        hours, mins = divmod(round(seconds / 60), 60)
        return f"{hours} h {mins:02d} min"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# --- the target ---------------------------------------------------------------------------------------------------


def ram_bytes() -> tuple[int, int]:
    """(this machine's RAM, what a run can use: MemAvailable plus what this process holds)."""
    info = {}
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            key, _, value = line.partition(":")
            info[key] = int(value.split()[0]) * 1024
    except OSError:
        import psutil  # not Linux

        vm = psutil.virtual_memory()
        return vm.total, vm.available + process_rss()
    return info["MemTotal"], info.get("MemAvailable", info["MemFree"]) + process_rss()


def process_rss() -> int:
    try:
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def resolve_target(spec: str | None, recipe) -> Target:
    """`--dispositivo`: None/"local" (this machine as training would use it), "cpu", "cuda", or a key of DEVICES."""
    import torch

    from afinar import hardware

    key = (spec or "local").lower()
    quant = recipe.model.quantization
    if key in ("local", "cuda") and torch.cuda.is_available():
        hw = hardware.detect(recipe.train.precision, quant)
        free, total = torch.cuda.mem_get_info()
        return Target("cuda", torch.cuda.get_device_name(0), hw.precision, total, free + torch.cuda.memory_reserved(),
                      True)
    if key == "cuda":
        raise AfinarError("L002", "--dispositivo cuda: este equipo no tiene una GPU NVIDIA que PyTorch vea.",
                          hint="planifica para una GPU de la tabla: --dispositivo " + ", ".join(DEVICES))
    if key in ("local", "cpu"):
        wanted = recipe.train.precision
        precision = hardware.detect(wanted if wanted != "fp16" else "auto", quant, cpu_only=True).precision
        total, available = ram_bytes()
        # With a GPU here, training would run on it: the CPU plan cannot be measured by training (not "local").
        return Target("cpu", "esta CPU", precision, total, available, not torch.cuda.is_available())
    if key not in DEVICES:
        import difflib

        close = difflib.get_close_matches(key, list(DEVICES), n=1)
        raise AfinarError("L001", f"dispositivo desconocido: {spec!r}.",
                          hint=(f"¿quisiste decir {close[0]}? " if close else "")
                          + "usa cpu, cuda o uno de: " + ", ".join(DEVICES))
    device = DEVICES[key]
    wanted = recipe.train.precision
    if wanted in ("auto", "bf16") and device.peak_tflops.get("bf16"):
        precision = "bf16"
    elif wanted == "fp32":
        precision = "fp32"
    elif wanted == "bf16":
        raise AfinarError("H002", f"{device.name} no admite bf16.", where="train.precision", hint="usa fp16 o auto")
    else:
        precision = "fp16"
    usable = int(device.memory_gib * GIB * 0.96)  # driver and ECC reserve part of it (devices.py)
    return Target("gpu", device.name, precision, int(device.memory_gib * GIB), usable, False, device)


# --- the estimate ---------------------------------------------------------------------------------------------------


def _hardware(target: Target):
    from afinar.hardware import Hardware

    return Hardware("cpu" if target.kind == "cpu" else "cuda", target.precision, "plan")


def _traces(config, recipe, target: Target, shape: DataShape, both: bool = True) -> dict:
    """Step traces without gradient checkpointing (the CPU allocator's share is measured against it) and with it
    (`both`, or when the recipe uses it), cached by everything they depend on."""
    from importlib.metadata import version

    from afinar.models import afinar_home

    relevant = {"config": _shape_fields(config), "method": recipe.method, "lora": recipe.lora.model_dump(mode="json"),
                "quantization": recipe.model.quantization,
                "packing": recipe.train.packing, "compile": recipe.train.compile, "device": target.device_type,
                "precision": target.precision, "shape": [shape.rows, shape.width, shape.examples_per_row, shape.labelled],
                "versions": [version(p) for p in ("torch", "transformers", "peft")], "v": TRACE_CACHE_VERSION}
    key = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = afinar_home() / "plan" / f"{key}.json"
    out = {}
    if path.is_file():
        try:
            out = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out = {}
    wanted = [False, True] if both or recipe.train.gradient_checkpointing else [False]
    missing = [gc for gc in wanted if ("gc" if gc else "no_gc") not in out]
    if not missing:
        return out
    import torch

    hw = _hardware(target)
    # The trace draws from the global generator (LoRA's initialization, dropout masks): train() has seeded it
    # already, and the run must be the one it would be without the plan.
    with torch.random.fork_rng(devices=[]):
        out.update(_trace_variants(config, recipe, hw, shape, missing))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out))
    return out


# config.json fields that do not change a step's tensors: a model read from its GGUF, its converted folder or a
# hard-coded shape (bases.py) is traced once.
_NOT_SHAPE = {"_name_or_path", "name_or_path", "transformers_version", "architectures", "bos_token_id", "eos_token_id",
              "pad_token_id", "torch_dtype", "dtype", "_commit_hash", "use_cache", "generation_config", "_attn_implementation_autoset"}


def _shape_fields(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_SHAPE}


def _trace_variants(config, recipe, hw, shape: DataShape, variants: list[bool]) -> dict:
    from afinar.planning.trace import empty_training_model, trace_step

    out = {}
    for gc in variants:
        variant = recipe.model_copy(deep=True)
        variant.train.gradient_checkpointing = gc
        fake, model, head = empty_training_model(config, variant, hw)
        trace = trace_step(fake, model, head, hw, shape.rows, shape.width, shape.examples_per_row, shape.labelled)
        out["gc" if gc else "no_gc"] = asdict(trace)
        if "weights" not in out:
            out["size"] = asdict(model_size(config))
            out["weights"] = mem.weight_bytes(model, recipe.model.quantization == "4bit")
            out["weights_4bit"] = mem.weight_bytes(model, True)
            out["trainable"] = mem.trainable_parameters(model)
            out["load_fp32"] = mem.load_peak_bytes(model, 0, hw.device, recipe.method == "full")
    return out


def estimate(recipe, config, shape: DataShape, target: Target, calibration: dict | None = None,
             runtime_bytes: int | None = None, recipe_name: str = "", measure_time: bool = True,
             detailed: bool = True) -> Plan:
    """The plan for `recipe` on `target`. `calibration`: {"fit": StepTimeFit, "peak_bytes": …} measured here.
    `runtime_bytes`: this process's memory without the model (CPU; default: now). `measure_time=False`: memory
    only (the step time is left 0), with no matmul timed. `detailed=False` (`afinar train`): the other setting of
    gradient checkpointing is traced only when the suggestions need it (the plan does not fit)."""
    traces = _traces(config, recipe, target, shape, both=detailed)
    gc = recipe.train.gradient_checkpointing
    step = traces["gc" if gc else "no_gc"]
    no_gc = traces["no_gc"]
    cpu = target.kind == "cpu"
    runtime = (runtime_bytes if runtime_bytes is not None else process_rss()) if cpu else mem.GPU_CONTEXT
    trainable = traces["trainable"]
    method = "Ajuste completo" if recipe.method == "full" else "LoRA"
    weights_label = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[target.precision]
    if recipe.model.quantization == "4bit":
        # The body's linear layers in NF4; embeddings, output head and norms as LoRA keeps them (fp32 on a CPU,
        # embeddings and head in bf16 under bf16 autocast; 16 bits on a GPU).
        rest = ("fp32" if target.precision == "fp32" else "bf16/fp32") if cpu else "16 bits"
        weights_label = f"4 bits (NF4) las capas lineales, {rest} el resto"
    elif cpu and target.precision == "bf16":
        weights_label = "bf16 (capas lineales y embeddings), fp32 el resto"
    elif cpu:
        weights_label = "fp32"
    activations = step["saved"]  # what the backward needs (the chunked loss keeps only N × hidden of its own)
    backward = max(0, step["peak"] - step["saved"] - step["loss"])
    parts = [
        mem.Part("runtime", "Entorno (Python, PyTorch, datos y tokenizador; medido)" if cpu else "Contexto CUDA y cuBLAS",
                 runtime),
        mem.Part("weights", f"Pesos del modelo base ({weights_label})", 0 if recipe.method == "full" else traces["weights"]),
        mem.Part("trainable", f"Parámetros entrenables ({method}: {decimal(trainable, 0)}) × 4 B", trainable * 4),
        # The gradients (4 B each) are created in the backward: they are in the traced step below.
        mem.Part("optimizer", "Estados de AdamW (8 B por parámetro entrenable)", trainable * 8),
        mem.Part("activations", f"Activaciones {'con' if gc else 'sin'} gradient checkpointing "
                                f"({shape.rows} × {shape.width} tokens)", activations),
        mem.Part("logits", "Logits de la pérdida (por trozos de 256 posiciones)", step["loss"]),
        mem.Part("backward", "Temporales del backward y gradientes", backward),
    ]
    if recipe.model.quantization == "4bit":
        # Each NF4 weight is dequantized for its matmul (forward and backward) and freed: one layer's copy at a time,
        # in the dtype it was loaded in (fp32 on a CPU) plus its cast to the compute dtype when that differs.
        hidden = config.hidden_size
        largest = max(getattr(config, "intermediate_size", None) or 4 * hidden, hidden) * hidden
        per_weight = 2 if not cpu else 4 + (2 if target.precision == "bf16" else 0)
        parts.append(mem.Part("dequant", "Pesos NF4 descuantizados al multiplicar (una capa a la vez)",
                              largest * per_weight))
    if cpu:
        frozen = (0 if recipe.method == "full" else traces["weights"]) + trainable * 4
        allocator = heap.active_allocator()  # this process's is the training's (`afinar plan`: heap.py)
        parts.append(mem.Part("allocator", f"Reserva del asignador de memoria ({allocator}; ajustada con medidas)",
                              mem.cpu_allocator_bytes(no_gc["peak"], frozen,
                                                      (target.precision == "fp32" or recipe.method == "full")
                                                      and recipe.model.quantization != "4bit", allocator)))
    else:
        parts.append(mem.Part("allocator", "Fragmentación del asignador de PyTorch (+10 %)",
                              int(mem.GPU_ALLOCATOR_FACTOR * step["peak"])))
    loading = traces["load_fp32"]
    if loading and mem.checkpoint_is_16bit(config):  # converted into tensors of its own: no bf16 copies beside
        loading = min(loading, 4 * traces["size"]["parameters"])
    load_peak = (runtime + loading) if cpu and loading else 0
    if recipe.model.quantization == "4bit" and cpu:
        load_peak = runtime + qlora_cpu_load_bytes(config, ModelSize(**traces["size"]))
    estimate_ = mem.MemoryEstimate(parts, load_peak, target.memory_bytes, target.available_bytes)
    if calibration and "peak_bytes" in calibration:
        estimate_.measured = {"peak_bytes": calibration["peak_bytes"], "formula_bytes": estimate_.formula_total}

    size = ModelSize(**traces["size"])  # measured with the traces (and cached with them): no second empty model
    flops = flops_per_token(size, trainable if recipe.method != "full" else 0, recipe.method, gc,
                            shape.mean_example_tokens, shape.labelled_fraction)
    fit = calibration.get("fit") if calibration else None
    if fit is not None:
        step_seconds = fit.seconds(shape.tokens_per_step, shape.micro_batches_per_step)
    elif not measure_time:
        step_seconds = 0.0
    elif target.kind == "gpu":
        step_seconds = gpu_step_seconds(flops * shape.tokens_per_step, target.device, target.precision, recipe.method)
    else:  # this machine, uncalibrated: its matmul rate, measured, times the fraction a step reaches
        from afinar.planning.devices import ACHIEVABLE_FRACTION

        fraction = CPU_FRACTION if target.kind == "cpu" else ACHIEVABLE_FRACTION["full" if recipe.method == "full" else "lora"]
        rate = matmul_tflops(target.precision, target.device_type) * 1e12 * fraction
        step_seconds = flops * shape.tokens_per_step / rate
    activations_per_token = {name: traces[key]["peak"] / traces[key]["tokens"]
                             for name, key in (("con_checkpointing", "gc"), ("sin_checkpointing", "no_gc")) if key in traces}
    plan = Plan(recipe_name or recipe.name, recipe.model.base, recipe.method, target, shape, estimate_,
                activations_per_token, step_seconds, flops, fit is not None, fit, model_size=size)
    if "gc" not in traces and estimate_.verdict != "cabe":
        traces = _traces(config, recipe, target, shape, both=True)
    plan.suggestions = _suggestions(recipe, target, traces, estimate_, shape)
    return plan


def qlora_cpu_load_bytes(config, size: ModelSize) -> int:
    """The rise of a CPU process while transformers loads a base in 4 bits (bitsandbytes), beyond its runtime.

    The whole weights file is read (its pages resident while mapped); embeddings and output head become fp32 (a
    converted copy, then models.load_model's own copy that frees the file); each body weight becomes fp32, is
    quantized to NF4 and freed, and glibc keeps much of what those temporaries took. Modelled as file + 8 B per
    embedding/head weight + 2.5 B per body weight (NF4 and kept temporaries), fitted on two loads (peak resident
    memory, bitsandbytes 0.50.2, transformers 4.57): SmolLM2-135M from an fp32 file, 1.03 GB measured, 1.03 GB
    modelled; a Qwen2.5-0.5B shape from a bf16 file, 2.4–2.9 GB measured (it varies with the kernel's page
    reclaim), 2.97 GB modelled. Larger than the fp32 LoRA load of the same base (4 B per weight)."""
    dtype = str(getattr(config, "dtype", None) or "float32")  # 4.57 maps a config.json "torch_dtype" to dtype
    file_bytes = size.parameters * (2 if dtype.endswith(("bfloat16", "float16")) else 4)
    kept = size.embedding + size.head
    return int(file_bytes + kept * 8 + size.body * 2.5)


def _suggestions(recipe, target: Target, traces: dict, estimate_: mem.MemoryEstimate, shape: DataShape) -> list:
    """What to change, with the memory each change saves (shown when the plan is not "cabe"; an out-of-memory
    during training names them too)."""
    out = []
    cpu = target.kind == "cpu"
    if recipe.model.quantization == "none" and recipe.method == "lora":
        import importlib.util

        # On a CPU, with bitsandbytes' CPU backend (the `qlora` extra): it saves the same memory, at some speed.
        if not cpu or importlib.util.find_spec("bitsandbytes") is not None:
            out.append(("model.quantization: 4bit (QLoRA" + ("; en CPU, pasos más lentos)" if cpu else ")"),
                        max(0, traces["weights"] - traces["weights_4bit"])))
    if not recipe.train.gradient_checkpointing and "gc" in traces:
        saved = traces["no_gc"]["peak"] - traces["gc"]["peak"]
        out.append(("train.gradient_checkpointing: true", saved))
    step = sum(estimate_.part(k) for k in ("activations", "logits", "backward", "allocator"))
    half = max(16, recipe.train.tokens_per_batch // 2)
    longest = shape.longest_example or shape.width
    text = f"train.tokens_per_batch: {half}"
    if longest > half:
        text += f" (y data.max_length ≤ {half}: hoy el ejemplo más largo ocupa {longest} tokens)"
    out.append((text, step // 2))
    if recipe.train.batch_size > 1 and not recipe.train.packing:
        out.append((f"train.batch_size: {max(1, recipe.train.batch_size // 2)} y train.grad_accum "
                    f"{recipe.train.grad_accum * 2}", step // 2))
    return out
