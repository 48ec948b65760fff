"""Training throughput of three ways to fine-tune the embedded base on the shipped nursing data, in one run.

    .venv/bin/python bench/train_throughput.py [--ejemplos 32] [--calentamiento 1] [--repeticiones 3] [--json r.json]
    .venv/bin/python bench/train_throughput.py --escala 10000 100000 [--json escala.json]
    .venv/bin/python bench/train_throughput.py --sin-bf16 --herramientas guias afinar --variantes receta fp32-compacto
        (a CPU without bf16, emulated: AVX2 kernels only; afinar's recipe then trains in fp32)

Same data (`afinar:primeros_auxilios`), same base (SmolLM2-135M-Instruct, `resolve_base("smollm2-135m")`), same
LoRA (r=8, alpha 16, dropout 0.05 on q_proj/v_proj), same number of examples; each tool in a fresh process:

- guías: the recipe of the Spanish tutorial our users copy (01_refinamiento, "TinyLlama Nurse"): 🤗 `Trainer` +
  `DataCollatorForLanguageModeling(mlm=False)`, pad = eos, "Usuario: …\\nAsistente: …" padded to 256 tokens,
  batch 1 × accumulation 4, fp32.
- trl: TRL's `SFTTrainer` with its defaults (batch 8, gradient checkpointing, …) except LoRA, fp32, no saving;
  conversational rows with the recipe's system prompt. `assistant_only_loss` when TRL can mask this tokenizer's chat
  template, else prompt/completion rows (completion-only loss); `padding_free=True` (TRL then refuses `max_length`,
  so none: every example fits in 400 tokens). Skipped, with the pip command, when trl is not installed.
- afinar: `train(load_recipe("recipes/enfermeria.yaml"), overrides)` with a fraction of an epoch as long as the others,
  no validation and no checkpoints; variants: default, `train.compile: true`, the same examples per step in
  micro-batches of another `train.tokens_per_batch`, `packing: false`, low memory (gradient checkpointing), and fp32
  (what a CPU without AVX512-BF16/AMX runs) with and without low memory, and without the shared prefix
  (`train.shared_prefix: false`: each packed example carries its own system prompt; bf16 and fp32), each only if the
  recipe accepts the keys.
  Each afinar child runs as `afinar train` runs its training: with tcmalloc or jemalloc preloaded when the system
  has one (afinar/heap.py; `AFINAR_ALLOCATOR=/path/libtcmalloc_minimal.so.4` names one that is not installed), except
  `fp32-glibc` and `fp32-compacto`, on glibc's allocator (a machine without them). The guides and TRL run as their
  users run them, on glibc's.

Measured per tool (the first `--calentamiento` optimizer steps are left out of the timing):

- real tokens/s: non-padding input tokens of the timed steps (attention_mask.sum() for padded batches; every token
  of a padding-free row) over their wall time. guías/trl: a TrainerCallback timestamps each optimizer step. afinar:
  per-step `real_tokens`/`step_seconds` from metrics.jsonl when it logs them, else the "throughput" of afinar_run.json
  (marked when it includes the first step), else (older afinar) the mean of metrics.jsonl's per-step tokens_per_s.
- examples/s, time from process start to the end of the first step, and the child's peak RSS (`os.wait4`'s
  ru_maxrss: the process and the workers it waited for).
- MFU = tokens/s × FLOPs per token / GEMM peak. FLOPs per token ≈ 4·N, N = parameters of the base (a tied lm_head
  counted once): forward 2·N plus the backward's input gradients 2·N; the frozen base gets no weight gradients and
  LoRA's are negligible; attention scores and gradient-checkpointing recomputation are not counted (model FLOPs, not
  hardware FLOPs), so padding and recomputation show up as lower MFU, and the prefix afinar computes once per
  packed row (`train.shared_prefix`) as higher: its tokens count in every example, as in the other tools. The peak is measured in this run, in its own
  process, as the best of several 2048×2048 `torch.matmul` in fp32 (and bf16 when the CPU has AVX512-BF16/AMX) with
  as many torch threads as physical cores; each tool is set to those threads and compared with the peak of the
  precision it trained in (afinar: `hardware.precision` of afinar_run.json, bf16 autocast on such CPUs).

`--escala N …` writes N synthetic examples (the shipped rows with numbered variations; no row is ever printed) and a
recipe like enfermeria.yaml on them (2 steps; no validation unless `--val-fraccion`: evaluating 1 % of 100k examples
on a CPU takes minutes, twice per run, before the first step), then runs afinar's train() twice per size, each in a
fresh process, with a tokenization cache of its own (AFINAR_DATA_CACHE in a temporary folder: synthetic data never
lands in the user's cache). Peak RSS, time to the first step and `data_cache` (miss, then hit) show whether memory
stays flat from the smallest size to the largest and whether the second run reuses the tokenized data.

Machines are noisy (on the 2-core EPYC the guides' recipe ran at 125–164 tokens/s on one day): only ratios measured
in the same run mean something, and `--repeticiones N` runs every tool N times in turn and reports the median and
each pass. Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "enfermeria.yaml"
BASE = "smollm2-135m"
TRL_VERSION = "1.16.0"  # needs transformers>=4.56.2, accelerate>=1.10.1, datasets>=4.7: what afinar already installs
TRL_INSTALL = f'.venv/bin/pip install "trl=={TRL_VERSION}"'
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
GUIDE_MAX_LENGTH = 256
TRL_MAX_LENGTH = 400
HUGE = 10**6  # eval_every / save_every that never come


# --- the machine ------------------------------------------------------------------------------------------------


def cpu_info() -> dict:
    """Model name, physical cores and the instruction sets that decide the matmul kernels (Linux: /proc/cpuinfo)."""
    name, flags, cores = "", set(), set()
    physical = core = None
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not name:
            name = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    return {
        "nombre": name or "desconocida",
        "nucleos_fisicos": len(cores) or os.cpu_count() or 1,
        "avx2": "avx2" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": bool({"amx_bf16", "amx_tile"} & flags),
    }


def describe_cpu(cpu: dict) -> str:
    yes = lambda flag: "sí" if cpu[flag] else "no"
    return (f"CPU: {cpu['nombre']} · {cpu['nucleos_fisicos']} núcleos físicos · AVX2 {yes('avx2')} · "
            f"AVX512-BF16 {yes('avx512_bf16')} · AMX {yes('amx')}")


# --- children: each runs in its own process and writes one JSON file --------------------------------------------


def child_gemm(args) -> dict:
    """GEMM peak per precision, and N (parameters of the base, tied weights once) from a meta-device copy."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from afinar.models import resolve_base

    torch.set_num_threads(args.hilos)
    cpu = cpu_info()
    n = 2048

    def gflops(dtype) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        for _ in range(3):
            torch.matmul(a, b, out=out)
        best = math.inf
        for _ in range(10):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
        return 2 * n**3 / best / 1e9

    peaks = {"fp32": gflops(torch.float32)}
    # --sin-bf16 (ONEDNN_MAX_CPU_ISA=AVX2): oneDNN emulates bf16 slowly, minutes for this matmul; nothing uses it.
    if (cpu["avx512_bf16"] or cpu["amx"]) and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
        peaks["bf16"] = gflops(torch.bfloat16)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_base(BASE)))
    return {"gflops": peaks, "params": sum(p.numel() for p in model.parameters())}


def read_rows() -> tuple[list[dict], str]:
    """The recipe's data rows (alpaca: instruction, input?, output) and its system prompt."""
    from afinar.config import load_recipe

    recipe = load_recipe(RECIPE)
    path = Path(recipe.data.sources[0].path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows, recipe.data.system_prompt


class StepClock:
    """Mixed into a 🤗 Trainer: counts the real tokens and the examples it trains on."""

    def training_step(self, model, inputs, *rest, **kwargs):
        mask = inputs.get("attention_mask")
        # Padded rows: attention_mask; a padding-free row (TRL) has no padding at all, and one position 0 per example.
        self.real_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        if mask is None and "position_ids" in inputs:
            self.examples += int((inputs["position_ids"] == 0).sum())
        else:
            self.examples += int(inputs["input_ids"].shape[0])
        return super().training_step(model, inputs, *rest, **kwargs)


def hf_clock(trainer_cls):
    from transformers import TrainerCallback

    class Clocked(StepClock, trainer_cls):
        real_tokens = examples = 0
        steps: list  # (time, real tokens, examples so far): at the start, then at the end of each optimizer step

    class Stamp(TrainerCallback):
        def __init__(self):
            self.trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.trainer.steps = [(time.time(), 0, 0)]

        def on_step_end(self, args, state, control, **kwargs):
            t = self.trainer
            t.steps.append((time.time(), t.real_tokens, t.examples))

    return Clocked, Stamp


def timed(steps: list, warmup: int) -> dict:
    """Throughput over the optimizer steps after `warmup`, from StepClock's (time, tokens, examples) stamps."""
    if len(steps) <= warmup + 1:
        raise SystemExit(f"solo hubo {len(steps) - 1} pasos: no queda ninguno tras {warmup} de calentamiento")
    (t0, tok0, ex0), (t1, tok1, ex1) = steps[warmup], steps[-1]
    seconds = t1 - t0
    return {"real_tokens": tok1 - tok0, "examples": ex1 - ex0, "seconds": seconds,
            "steps_timed": len(steps) - 1 - warmup, "tokens_per_s": (tok1 - tok0) / seconds,
            "examples_per_s": (ex1 - ex0) / seconds}


def capture_warnings() -> list:
    """Warnings of transformers/TRL (logging and warnings.warn), first line of each, once."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            message = record.getMessage().strip().splitlines()
            message = message[0][:200] if message else ""
            if record.levelno >= logging.WARNING and message and message not in seen:
                seen.append(message)

    logging.captureWarnings(True)
    for name in ("", "transformers", "trl", "py.warnings"):
        logging.getLogger(name).addHandler(Keep())
    return seen


def process_started() -> float:
    import psutil

    return psutil.Process().create_time()


def child_guias(args) -> dict:
    """The tutorial's recipe (see the module docstring), timed with a callback."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from afinar.models import load_tokenizer, resolve_base

    torch.set_num_threads(args.hilos)
    warnings = capture_warnings()
    path = resolve_base(BASE)
    tokenizer = load_tokenizer(path)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(**LORA, bias="none", task_type="CAUSAL_LM"))

    rows, _ = read_rows()
    dataset = Dataset.from_list([{"instruction": r["instruction"], "output": r["output"]} for r in rows])

    def tokenize(example):  # exactly the tutorial's: its prompt ignores `input`, pads every row to 256 tokens
        text = f"Usuario: {example['instruction']}\nAsistente: {example['output']}"
        return tokenizer(text, truncation=True, padding="max_length", max_length=GUIDE_MAX_LENGTH)

    tokenized = dataset.map(tokenize, remove_columns=dataset.column_names)
    batch, accumulation = 1, 4
    Clocked, Stamp = hf_clock(Trainer)
    stamp = Stamp()
    with tempfile.TemporaryDirectory(prefix="afinar-bench-guias-") as out:
        trainer = Clocked(
            model=model,
            args=TrainingArguments(
                output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                max_steps=args.calentamiento + math.ceil(args.ejemplos / (batch * accumulation)),
                fp16=False, bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
                disable_tqdm=True, seed=42,
            ),
            train_dataset=tokenized,
            data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
            callbacks=[stamp],
        )
        stamp.trainer = trainer
        trainer.train()
    return {"precision": "fp32", "first_step_s": trainer.steps[1][0] - process_started(), "warnings": warnings,
            "notes": [f"lote 1 × acumulación 4, filas de {GUIDE_MAX_LENGTH} tokens con relleno"],
            **timed(trainer.steps, args.calentamiento)}


def child_trl(args) -> dict:
    """TRL's SFTTrainer, its defaults except LoRA, fp32, no saving; padding-free when it accepts it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    from trl import __version__ as trl_version

    from afinar.models import load_tokenizer, resolve_base

    torch.set_num_threads(args.hilos)
    warnings = capture_warnings()
    path = resolve_base(BASE)
    tokenizer = load_tokenizer(path)
    rows, system = read_rows()
    notes = [f"TRL {trl_version}"]

    masked, why = assistant_mask_supported(tokenizer)
    if masked:
        notes.append("assistant_only_loss=True (filas 'messages')")
        data = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": user_text(r)},
                              {"role": "assistant", "content": r["output"].strip()}]} for r in rows]
    else:
        notes.append(f"assistant_only_loss no disponible con esta plantilla de chat ({why}): filas prompt/completion "
                     "(pérdida solo en la respuesta)")
        data = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": user_text(r)}],
                 "completion": [{"role": "assistant", "content": r["output"].strip()}]} for r in rows]

    def build(padding_free: bool, out: str):
        defaults = SFTConfig(output_dir=out, use_cpu=True, bf16=False)  # TRL's batch and accumulation
        per_step = defaults.per_device_train_batch_size * defaults.gradient_accumulation_steps
        config = SFTConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no",
            logging_strategy="no", disable_tqdm=True, assistant_only_loss=masked, padding_free=padding_free,
            # TRL refuses max_length with padding_free without packing; the data fits in 400 tokens anyway.
            max_length=None if padding_free else TRL_MAX_LENGTH,
            max_steps=args.calentamiento + math.ceil(args.ejemplos / per_step),
        )
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        Clocked, Stamp = hf_clock(SFTTrainer)
        stamp = Stamp()
        trainer = Clocked(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                          peft_config=LoraConfig(**LORA, bias="none", task_type="CAUSAL_LM"), callbacks=[stamp])
        stamp.trainer = trainer
        return trainer

    with tempfile.TemporaryDirectory(prefix="afinar-bench-trl-") as out:
        try:
            trainer = build(True, out)
            notes.append("padding_free=True, max_length=None (el ejemplo más largo tiene "
                         f"{max(len(x) for x in trainer.train_dataset['input_ids'])} tokens)")
        except ValueError as exc:
            notes.append(f"padding_free rechazado ({str(exc).splitlines()[0][:120]}); con relleno, "
                         f"max_length={TRL_MAX_LENGTH}")
            trainer = build(False, out)
        cfg, attention = trainer.args, trainer.model.config._attn_implementation
        notes.append(f"lote {cfg.per_device_train_batch_size} × acumulación {cfg.gradient_accumulation_steps}, "
                     f"gradient_checkpointing={cfg.gradient_checkpointing}, atención {attention}")
        trainer.train()
    return {"precision": "fp32", "first_step_s": trainer.steps[1][0] - process_started(), "warnings": warnings,
            "notes": notes, **timed(trainer.steps, args.calentamiento)}


def user_text(row: dict) -> str:
    """The user turn as afinar builds it from an alpaca row: instruction, then input on its own line."""
    extra = (row.get("input") or "").strip()
    return row["instruction"].strip() + ("\n" + extra if extra else "")


def assistant_mask_supported(tokenizer) -> tuple[bool, str]:
    """Whether TRL can mask assistant tokens with this template: it has {% generation %} or TRL knows a patch."""
    try:
        from trl.chat_template_utils import (
            get_training_chat_template,
            has_generation_markers,
        )
    except ImportError:
        return "{% generation %}" in (tokenizer.chat_template or ""), "sin marcas {% generation %}"
    if has_generation_markers(tokenizer.chat_template):
        return True, ""
    try:
        get_training_chat_template(tokenizer)
        return True, ""
    except ValueError:
        return False, "sin marcas {% generation %} y TRL no tiene versión de entrenamiento para ella"


def child_afinar(args) -> dict:
    """afinar's own train(), then its numbers from the run folder."""
    import torch

    from afinar.config import load_recipe
    from afinar.train import train

    torch.set_num_threads(args.hilos)
    started = process_started()
    called = time.time()
    run_dir = Path(train(load_recipe(args.receta), overrides=json.loads(args.variante), overwrite=True, progress=False))
    info = json.loads((run_dir / "afinar_run.json").read_text(encoding="utf-8"))
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    steps = [r for r in records if "loss" in r]
    result = {"precision": info.get("hardware", {}).get("precision", "?"), "data_cache": info.get("data_cache"),
              "notes": [f"asignador de memoria: {info.get('hardware', {}).get('allocator', '?')}"], "warnings": []}
    if "time_to_first_step_s" in info:  # measured by train() from its own start: add what came before the call
        result["time_to_first_step_s"] = info["time_to_first_step_s"]
        result["first_step_s"] = called - started + info["time_to_first_step_s"]
    through = info.get("throughput")
    kept = steps[args.calentamiento:] or steps
    if kept and all("real_tokens" in r and "step_seconds" in r for r in kept):  # per-step counts: skip the warm-up
        tokens, seconds = sum(r["real_tokens"] for r in kept), sum(r["step_seconds"] for r in kept)
        examples = sum(r.get("examples", 0) for r in kept) or None
        result.update(real_tokens=tokens, examples=examples, seconds=seconds, steps_timed=len(kept),
                      tokens_per_s=tokens / seconds, examples_per_s=examples / seconds if examples else None)
    elif through:
        keys = ("real_tokens", "examples", "seconds", "tokens_per_s", "examples_per_s")
        result.update({k: through.get(k) for k in keys}, steps_timed=len(steps) - through.get("warmup_steps", 0))
        if not through.get("warmup_steps"):
            # Steps of similar size: the harmonic mean of the per-step rates is the rate without the warm-up.
            rates = [r["tokens_per_s"] for r in steps[args.calentamiento:] if r.get("tokens_per_s")]
            result["tokens_per_s_sin_calentamiento"] = steady = len(rates) / sum(1 / x for x in rates) if rates else None
            result["notes"].append("throughput de afinar_run.json: incluye el primer paso (calentamiento); sin él "
                                   f"(media armónica de tokens_per_s por paso): {fmt(steady, ',.1f')} tokens/s")
    else:  # afinar before the "throughput" key: per-step rates only
        result.update(real_tokens=None, examples=None, seconds=None, steps_timed=len(kept), examples_per_s=None,
                      tokens_per_s=sum(r["tokens_per_s"] for r in kept) / len(kept))
        result["notes"].append("afinar sin 'throughput': media de tokens_per_s por paso de metrics.jsonl")
    return result


CHILDREN = {"gemm": child_gemm, "guias": child_guias, "trl": child_trl, "afinar": child_afinar}


# --- the parent: run the children, print, write JSON ---------------------------------------------------------------


def run_child(tool: str, args, tmp: Path, label: str, env: dict | None = None, **extra) -> dict:
    """Run one child; its result plus the peak RSS (os.wait4: this child alone) and wall time. Errors are returned."""
    out = tmp / f"{label}.json".replace(" ", "_").replace("/", "_")
    log = out.with_suffix(".log")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--herramienta", tool, "--salida", str(out),
           "--ejemplos", str(args.ejemplos), "--calentamiento", str(args.calentamiento), "--hilos", str(args.hilos)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    started = time.time()
    with open(log, "w", encoding="utf-8") as handle:
        child = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    result = {"label": label, "wall_s": time.time() - started, "peak_rss_mb": usage.ru_maxrss / 1024}
    if child.returncode == 0 and out.is_file():
        return {**result, **json.loads(out.read_text(encoding="utf-8"))}
    tail = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()][-6:]
    return {**result, "error": f"salió con código {child.returncode}", "log_tail": tail}


def afinar_variants(args) -> list[tuple[str, dict | None, str, dict]]:
    """(label, overrides or None, why not, the child's environment) for each afinar variant; a key the recipe
    rejects is 'no disponible'. The environment: as `afinar train` gives its training (heap.preload_env), or glibc's
    allocator for ON_GLIBC."""
    from afinar import heap
    from afinar.config import apply_overrides, load_recipe
    from afinar.errors import AfinarError

    recipe = load_recipe(RECIPE)
    rows = len(read_rows()[0])
    # A fraction of an epoch with as many examples as the others get (warm-up steps included, like theirs).
    per_step = recipe.train.batch_size * recipe.train.grad_accum
    common = {"data.val_fraction": 0.0, "train.epochs": (args.ejemplos + args.calentamiento * per_step) / rows,
              "train.eval_every": HUGE, "train.save_every": HUGE}
    budget = getattr(recipe.train, "tokens_per_batch", None)
    # The other layout: the same examples per step in micro-batches of twice (or half) the token budget.
    examples_per_step = recipe.train.batch_size * recipe.train.grad_accum
    if budget and budget <= 512:
        other = (f"afinar {2 * budget} tok/lote, lote {examples_per_step} × 1",
                 {"train.tokens_per_batch": 2 * budget, "train.batch_size": examples_per_step, "train.grad_accum": 1})
    else:
        other = (f"afinar {(budget or 1024) // 2} tok/lote", {"train.tokens_per_batch": (budget or 1024) // 2})
    low_memory = {"train.gradient_checkpointing": True}  # recompute activations instead of keeping them
    wanted = {"receta": ("afinar", {}), "compile": ("afinar compile", {"train.compile": True}), "otro-lote": other,
              "sin-empaquetar": ("afinar sin empaquetar", {"train.packing": False}),
              "memoria-baja": ("afinar memoria baja", low_memory),
              # what a CPU without AVX512-BF16/AMX runs: compared with the fp32 GEMM ceiling measured here
              "fp32": ("afinar fp32", {"train.precision": "fp32"}),
              "fp32-memoria-baja": ("afinar fp32 memoria baja", {"train.precision": "fp32", **low_memory}),
              # freed activations back to the system (afinar/heap.py): what `auto` does when memory is tight
              "fp32-compacto": ("afinar fp32 compact_heap", {"train.precision": "fp32", "train.compact_heap": True}),
              "fp32-glibc": ("afinar fp32 glibc", {"train.precision": "fp32"}),
              # each example with its own copy of the shared prefix (what afinar did before train.shared_prefix)
              "sin-prefijo": ("afinar sin prefijo compartido", {"train.shared_prefix": False}),
              "fp32-sin-prefijo": ("afinar fp32 sin prefijo compartido",
                                   {"train.precision": "fp32", "train.shared_prefix": False})}
    if not args.compilar:
        wanted.pop("compile")
    out = []
    for key, (label, overrides) in wanted.items():
        if args.variantes and key not in args.variantes:
            continue
        if label == "afinar" and budget:
            label = f"afinar ({budget} tok/lote)"
        env = heap.preload_env({**os.environ, heap.ALLOCATOR_ENV: "glibc"} if key in ON_GLIBC else dict(os.environ))
        try:
            apply_overrides(recipe, {**common, **overrides})
            out.append((label, {**common, **overrides}, "", env))
        except AfinarError:
            out.append((label, None, f"no disponible: la receta no acepta {', '.join(overrides)}", env))
    return out


def fmt(value, spec: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, spec) + suffix


def bench(args) -> dict:
    cpu = cpu_info()
    print(describe_cpu(cpu))
    print(f"Hilos de torch en cada proceso: {args.hilos}. {args.ejemplos} ejemplos medidos por herramienta, tras "
          f"{args.calentamiento} paso(s) de calentamiento.\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="afinar-bench-") as tmp:
        tmp = Path(tmp)
        print("→ pico de GEMM (matmul 2048×2048)…", flush=True)
        gemm = run_child("gemm", args, tmp, "gemm")
        if "error" in gemm:
            raise SystemExit("no se pudo medir el pico de GEMM:\n  " + "\n  ".join(gemm["log_tail"]))
        peaks, params = gemm["gflops"], gemm["params"]
        flops_per_token = 4 * params
        print("  " + " · ".join(f"{p}: {g:,.0f} GFLOP/s" for p, g in peaks.items()), f"· N = {params:,} parámetros")

        # The jobs, in order; with --repeticiones N the guides and afinar's variants run N times round-robin (TRL and
        # compile, far from the comparison and slow, once), so a slow minute of the machine hits every tool alike.
        jobs = []
        for tool in ("guias", "trl"):
            if tool not in args.herramientas:
                continue
            label = "guías" if tool == "guias" else "trl"
            if tool == "trl" and importlib.util.find_spec("trl") is None:
                jobs.append((label, None, f"trl no instalado ({TRL_INSTALL})"))
                continue
            jobs.append((label, {"tool": tool}, ""))
        if "afinar" in args.herramientas:
            jobs += [(label, None if overrides is None else {"tool": "afinar", "overrides": overrides, "env": env}, why)
                     for label, overrides, why, env in afinar_variants(args)]
        runs: dict[str, list[dict]] = {}
        for repetition in range(args.repeticiones):
            if args.repeticiones > 1:
                print(f"— pasada {repetition + 1} de {args.repeticiones}", flush=True)
            for label, job, why in jobs:
                if job is None:
                    if repetition == 0:
                        print(f"→ {label}: {why}", flush=True)
                        runs[label] = [{"label": label, "skipped": why}]
                    continue
                if repetition > 0 and (label == "trl" or "compile" in label):
                    continue
                print(f"→ {label}: entrenando…", flush=True)
                if job["tool"] == "afinar":
                    overrides = {**job["overrides"], "output_dir": str(tmp / f"run-{len(runs)}-{repetition}")}
                    r = run_child("afinar", args, tmp, f"{label}-{repetition}", env=job["env"], receta=RECIPE,
                                  variante=json.dumps(overrides))
                else:
                    r = run_child(job["tool"], args, tmp, f"{label}-{repetition}")
                r["label"] = label
                runs.setdefault(label, []).append(r)
                report_progress(r)
        results = [combine(label, runs[label]) for label, _, _ in jobs]

    for r in results:
        if r.get("tokens_per_s"):
            peak = peaks.get(r["precision"], peaks["fp32"])
            r["mfu"] = r["tokens_per_s"] * flops_per_token / (peak * 1e9)
    print_table(results, peaks, flops_per_token)
    return {"cpu": cpu, "hilos": args.hilos, "ejemplos": args.ejemplos, "calentamiento": args.calentamiento,
            "gemm_gflops": peaks, "params": params, "flops_per_token": flops_per_token, "results": results}


def combine(label: str, runs: list[dict]) -> dict:
    """One row per tool: the median run's numbers (by tokens/s), the highest peak RSS, and every run's tokens/s."""
    done = sorted((r for r in runs if r.get("tokens_per_s")), key=lambda r: r["tokens_per_s"])
    if not done:
        return runs[0]
    row = dict(done[(len(done) - 1) // 2])  # the lower median: with 2 runs, the slower one
    row.update(label=label, peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
               runs_tokens_per_s=[r["tokens_per_s"] for r in runs if r.get("tokens_per_s")])
    if len(runs) > len(done):
        row.setdefault("notes", []).append(f"{len(runs) - len(done)} de {len(runs)} ejecuciones fallaron")
    return row


def report_progress(r: dict) -> None:
    if "error" in r:
        report_failure(r)
    else:
        print(f"  {fmt(r.get('tokens_per_s'), ',.0f')} tokens reales/s · {r['wall_s']:.0f} s en total", flush=True)


def report_failure(r: dict) -> None:
    print(f"  falló ({r['error']}); últimas líneas:\n    " + "\n    ".join(r["log_tail"]), flush=True)


def print_table(results: list, peaks: dict, flops_per_token: int) -> None:
    done = [r for r in results if r.get("tokens_per_s")]
    guide = next((r for r in done if r["label"] == "guías"), None)
    print(f"\n{'herramienta':<24} {'precisión':>9} {'ejemplos':>8} {'tokens reales/s':>15} {'ejemplos/s':>10} "
          f"{'× guías':>8} {'pico RSS':>10} {'1er paso':>9} {'MFU':>6}")
    for r in results:
        if not r.get("tokens_per_s"):
            print(f"{r['label']:<24} {r.get('skipped') or 'falló: ' + r.get('error', '?')}")
            continue
        ratio = r["tokens_per_s"] / guide["tokens_per_s"] if guide else None
        print(f"{r['label']:<24} {r['precision']:>9} {fmt(r.get('examples'), 'd'):>8} {r['tokens_per_s']:>15,.1f} "
              f"{fmt(r.get('examples_per_s'), '.2f'):>10} {fmt(ratio, '.2f', suffix='×'):>8} "
              f"{r['peak_rss_mb']:>7,.0f} MB {fmt(r.get('first_step_s'), '.1f', suffix=' s'):>9} "
              f"{100 * r['mfu']:>5.1f}%")
    print("(1er paso: desde que arranca el proceso hasta el final del primer paso del optimizador, importaciones, "
          "carga y tokenización incluidas; MFU frente al pico GEMM de la precisión usada)")
    for r in results:
        if len(r.get("runs_tokens_per_s", [])) > 1:
            print(f"  {r['label']}: tokens reales/s en cada pasada: "
                  + ", ".join(f"{x:,.1f}" for x in r["runs_tokens_per_s"]) + " (la tabla da la mediana)")
    for r in results:
        for note in r.get("notes", []) + [f"aviso: {w}" for w in r.get("warnings", [])[:6]]:
            print(f"  {r['label']}: {note}")
        if r.get("data_cache"):
            print(f"  {r['label']}: caché de datos tokenizados: {r['data_cache']}")

    ours = [r for r in done if r["label"].startswith("afinar")]
    if ours:
        print()
    for r in ours:
        parts = []
        if guide:
            parts.append(f"{r['tokens_per_s'] / guide['tokens_per_s']:.2f}× guías en tokens reales/s")
            parts.append(f"pico RSS {'≤' if r['peak_rss_mb'] <= guide['peak_rss_mb'] else '>'} guías "
                         f"({r['peak_rss_mb']:,.0f} MB frente a {guide['peak_rss_mb']:,.0f} MB)")
        # The fp32 ceiling always; the one of the variant's own precision too when it differs (bf16 autocast).
        for precision in dict.fromkeys(["fp32", r["precision"]]):
            if precision in peaks:
                ceiling = peaks[precision] * 1e9 / flops_per_token
                parts.append(f"{100 * r['tokens_per_s'] / ceiling:.1f} % del techo GEMM {precision} ({ceiling:,.0f} tokens/s)")
        print(f"{r['label']} ({r['precision']}): " + "; ".join(parts))
    if ours:
        print(f"(techo GEMM = pico medido / {flops_per_token:,} FLOP por token)")


# --- --escala: memory and time to the first step as the corpus grows ------------------------------------------------


def write_synthetic(path: Path, rows: list[dict], n: int, tag: str) -> None:
    """n examples: the shipped rows in turn, each with a numbered variation so none is an exact duplicate."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            row = rows[i % len(rows)]
            handle.write(json.dumps({"instruction": f"{row['instruction']} ({tag} {i + 1})",
                                     "output": f"{row['output']} (Ficha {tag} {i + 1}.)"}, ensure_ascii=False) + "\n")


def scale_recipe(path: Path, data: Path, val_fraction: float) -> None:
    import yaml

    from afinar.config import load_recipe

    recipe = load_recipe(RECIPE).model_dump(mode="json")
    recipe["name"] = "escala"
    recipe["data"].update(sources=[{"path": str(data)}], val_fraction=val_fraction)
    recipe["train"].update(max_steps=2, eval_every=HUGE, save_every=HUGE)
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")


def scale(args) -> dict:
    print(describe_cpu(cpu_info()))
    rows = read_rows()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="afinar-bench-escala-") as tmp:
        tmp = Path(tmp)
        env = {"AFINAR_DATA_CACHE": str(tmp / "cache")}
        for n in sorted(args.escala):
            data, recipe = tmp / f"sinteticos_{n}.jsonl", tmp / f"escala_{n}.yaml"
            write_synthetic(data, rows, n, "consulta")
            scale_recipe(recipe, data, args.val_fraccion)
            for attempt in (1, 2):
                print(f"→ {n:,} ejemplos, ejecución {attempt}…", flush=True)
                overrides = json.dumps({"output_dir": str(tmp / f"run-{n}-{attempt}")})
                r = run_child("afinar", args, tmp, f"escala-{n}-{attempt}", env=env, receta=recipe, variante=overrides)
                r.update(examples_in_corpus=n, attempt=attempt)
                results.append(r)
                if "error" in r:
                    report_failure(r)
                    continue
                first = fmt(r.get("time_to_first_step_s"), ".1f", suffix=" s")
                print(f"  caché de datos: {r.get('data_cache') or '—'} · 1er paso: {first} · "
                      f"pico RSS {r['peak_rss_mb']:,.0f} MB · {r['wall_s']:.0f} s en total", flush=True)

    ok = [r for r in results if "error" not in r]

    def first(r: dict) -> float:  # afinar's own time_to_first_step_s (from the call to train()); else wall time
        return r.get("time_to_first_step_s") or r["wall_s"]

    print(f"\n{'ejemplos':>9} {'ejecución':>9} {'caché':>6} {'1er paso':>9} {'pico RSS':>10} {'total':>7}")
    for r in ok:
        print(f"{r['examples_in_corpus']:>9,} {r['attempt']:>9} {r.get('data_cache') or '—':>6} {first(r):>7.1f} s "
              f"{r['peak_rss_mb']:>7,.0f} MB {r['wall_s']:>5.0f} s")
    if any(not r.get("time_to_first_step_s") for r in ok):
        print("(sin time_to_first_step_s en afinar_run.json: «1er paso» es el tiempo total del proceso)")
    else:
        print("(1er paso: time_to_first_step_s de afinar_run.json, desde la llamada a train(): datos, modelo y 1er paso)")
    for attempt in (1, 2):
        runs = [r for r in ok if r["attempt"] == attempt]
        if len(runs) > 1:
            small, big = runs[0], runs[-1]
            big_n, small_n = big["examples_in_corpus"], small["examples_in_corpus"]
            print(f"ejecución {attempt}: pico RSS con {big_n:,} / con {small_n:,} ejemplos: "
                  f"{big['peak_rss_mb'] / small['peak_rss_mb']:.2f}×")
    for n in sorted(args.escala):
        pair = [r for r in ok if r["examples_in_corpus"] == n]
        if len(pair) == 2:
            a, b = (first(r) for r in pair)
            print(f"{n:,} ejemplos: 1er paso de la 2.ª ejecución / 1.ª: {b / a:.2f}×")
    return {"cpu": cpu_info(), "hilos": args.hilos, "escala": results}


def write_json(path: str, data: dict) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, target)


VARIANTS = ["receta", "compile", "otro-lote", "sin-empaquetar", "memoria-baja", "fp32", "fp32-memoria-baja",
            "fp32-compacto", "fp32-glibc", "sin-prefijo", "fp32-sin-prefijo"]
# afinar's children run as `afinar train` runs its supervised child: with tcmalloc or jemalloc preloaded when the
# system has one (afinar/heap.py). These variants run on glibc's allocator instead: what a machine without them gets.
ON_GLIBC = {"fp32-compacto", "fp32-glibc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tools = ["guias", "trl", "afinar"]
    parser.add_argument("--ejemplos", type=int, default=32, help="ejemplos cronometrados por herramienta")
    parser.add_argument("--calentamiento", type=int, default=1, help="pasos del optimizador que no se cronometran")
    parser.add_argument("--repeticiones", type=int, default=1,
                        help="pasadas por herramienta, alternadas; la tabla da la mediana (TRL y compile: una)")
    parser.add_argument("--herramientas", nargs="+", choices=tools, default=tools, help="cuáles medir")
    parser.add_argument("--sin-compilar", dest="compilar", action="store_false", help="omite la variante train.compile")
    parser.add_argument("--hilos", type=int, default=cpu_info()["nucleos_fisicos"], help="hilos de torch por proceso")
    parser.add_argument("--escala", type=int, nargs="+", metavar="N", help="modo escala: tamaños del corpus sintético")
    parser.add_argument("--val-fraccion", type=float, default=0.0,
                        help="escala: fracción de validación (p. ej. 0.01; evaluarla en CPU tarda minutos a 100k)")
    parser.add_argument("--variantes", nargs="+", metavar="NOMBRE", choices=VARIANTS,
                        help=f"solo estas variantes de afinar ({', '.join(VARIANTS)}; por defecto todas)")
    parser.add_argument("--sin-bf16", action="store_true",
                        help="cada proceso como en una CPU solo AVX2 (sin AVX512-BF16/AMX): ATEN_CPU_CAPABILITY=avx2, "
                             "ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2; afinar entrena entonces en fp32")
    parser.add_argument("--json", help="escribe los resultados en este archivo JSON")
    # Internal: the parent re-invokes this file once per tool.
    parser.add_argument("--herramienta", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--salida", help=argparse.SUPPRESS)
    parser.add_argument("--receta", help=argparse.SUPPRESS)
    parser.add_argument("--variante", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.herramienta:
        write_json(args.salida, CHILDREN[args.herramienta](args))
        return
    if args.sin_bf16:  # set before any child starts: torch, oneDNN and MKL read them when they load
        from afinar.hardware import AVX2_ONLY_ENV

        os.environ.update(AVX2_ONLY_ENV)
        print("Modo --sin-bf16: cada proceso usa solo núcleos AVX2 ("
              + ", ".join(f"{k}={v}" for k, v in AVX2_ONLY_ENV.items())
              + "): lo que corre una CPU sin bf16.")
    data = scale(args) if args.escala else bench(args)
    if args.json:
        write_json(args.json, data)
        print(f"\nResultados en {args.json}")


if __name__ == "__main__":
    main()
