"""Is `afinar plan` right? Predicted vs measured peak memory and step time, on this machine and against published
GPU tables.

    .venv/bin/python bench/plan_accuracy.py [--pasos 8] [--solo-cpu | --solo-gpu] [--salida bench/plan_accuracy.json]

1. This machine: the four shipped recipes × two `data.max_length` (the recipe's and a shorter one) × checkpointing
   off/on. Each configuration trains `--pasos` steps in its own process (`afinar train` as a user runs it; held-out
   evaluation off), which makes its plan first. Compared with what the process really used (its peak resident
   memory from the kernel, `os.wait4`) and its mean step time (metrics.jsonl `step_seconds`, the first step left
   out): the formula's memory (planning/memory.py, nothing measured but the runtime), the calibrated plan's memory
   (the larger of the formula and the peak measured over the calibration steps) and the calibrated step time (the plan's fit applied to the token counts of
   the steps that ran; the plan's own figure is the mean step of an epoch). Every error should be within ±25 %.
   `--formas` (default: both): random-weight models of Qwen2.5-0.5B's and Qwen2.5-1.5B's shapes (SHAPES), trained
   with enfermeria_demo.yaml's settings, shorter; `--emular-avx2` runs every child as on a CPU with AVX2 only (no
   AVX-512, no bf16: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2; torch then
   reports capability AVX2 and afinar trains fp32); `--tiempo-cpu` times calibration and steps in the child's own
   CPU time on one thread, for a machine other processes share; `--con-4bit` adds the shapes with
   model.quantization=4bit (QLoRA on bitsandbytes' CPU backend) when bitsandbytes is installed.
2. GPUs: the planner's formula for the setups of published measurements (bench/published_memory.py: torchtune's
   README, Unsloth, LLaMA-Factory), each model built from its config.json alone, with the error of each.
Prints the tables (Markdown, for the README) and writes them as JSON.

Issue 27: why the plan was off at 0.5–1.5B on a CPU without bf16 (measured before on a 2-core AVX2-only EPYC: the
plan said 6.40 GiB for a 0.64B Qwen2.5-shaped model that peaked at 8.75 GiB, −27 %; 4.83 s a step for
enfermeria.yaml whose steps took 7.12 s, −32 %). Reproduced on a 2-core AMD EPYC with AVX-512 and AVX512-BF16,
emulating AVX2 (`--emular-avx2`), on a machine shared with other trainings (`--tiempo-cpu`):

- Step time. The calibrated fit is right: 6.00 s planned for 6.16 s (−3 %) on enfermeria, −10 % (0.5B) and −6 %
  (1.5B). Two things made the −32 %. (1) The plan's step is an epoch's mean (850 real tokens for enfermeria), but
  the batcher fills rows first-fit-decreasing, so an epoch starts with its fullest micro-batches (the first 16 are
  all 512 tokens; the epoch's mean 425): the first steps, the ones a user times, carry 1 024 tokens. Against the
  epoch mean those steps are −19 % (5.01 s for 6.16 s). The plan now also prints a full step ("los primeros pasos…",
  Plan.full_step_seconds). (2) Wall-clock time on a CPU that other processes share: with two other trainings and
  tests on the same 2 cores, the same recipe's steps took 41–105 s for a calibrated 30 s (−62 %); the calibration
  and the steps run minutes apart under different loads. Nothing in the planner can foresee that.
- Memory. glibc's heap allowance (planning/memory.py) was fitted where the linear weights are stored in bf16: their
  fp32 copies, freed by the cast after loading, leave room the steps reuse. With fp32 weights (AVX2 only) nothing is
  freed and the heap grows with the weights as well: 0.5B −14 %, 1.5B −23 % (the −27 %). Now CPU_FIRST_STEP +
  0.75 × (traced step + weights) for fp32 weights: 0.5B +1 %, 1.5B −2 %, enfermeria +6 %. With bf16 (native) the
  1.5B was +18 %: the loading peak counted bf16 copies beside the fp32 weights, true of afinar's fp32 GGUF
  conversions (mapped from the file), not of a bf16 checkpoint like the Hub's, converted into tensors of its own
  and freed layer by layer: now +0 % (7.77 GiB planned, 7.75 real); 0.5B +3 %, enfermeria −2 %.

    .venv/bin/python bench/plan_accuracy.py --tiempo-cpu --solo-cpu --solo-propia --recetas enfermeria --emular-avx2
    .venv/bin/python bench/plan_accuracy.py --tiempo-cpu --solo-formas [--emular-avx2] [--con-4bit]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["enfermeria", "epicrisis", "ciencias", "tutor_algoritmos"]
# The second max_length of each recipe: about half, but never so short that most examples are dropped (every
# epicrisis example is longer than 576 tokens with SmolLM2's tokenizer; 904 keeps three in four).
SHORTER = {"enfermeria": 200, "epicrisis": 904, "ciencias": 512, "tutor_algoritmos": 768}
# Model shapes of the guides' larger bases (config.json of Qwen/Qwen2.5-0.5B-Instruct and Qwen2.5-1.5B-Instruct, as
# published on their model pages; the same numbers are in src/afinar/bases.py with their sources). Built here with
# random weights (memory and time do not depend on the values), saved in bf16 as the Hub's are, with the embedded
# base's tokenizer (49 152 tokens: the model's larger vocabulary only leaves rows unused).
SHAPES = {
    "qwen2.5-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True},
    "qwen2.5-1.5b": {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True},
}
# Each shape trains with enfermeria_demo.yaml's settings (LoRA r16 all-linear, 2 examples per micro-batch), shorter:
# (max_length, steps). The 1.5B plans at ≈ 10 GiB in fp32 with these: it fits 24 GiB.
SHAPE_RECIPE = "enfermeria_demo"
SHAPE_RUN = {"qwen2.5-0.5b": (256, 5), "qwen2.5-1.5b": (256, 4)}
# An AVX2-only CPU (no AVX-512, no bf16), emulated in the child: ATen's kernels, oneDNN's and MKL's. afinar's
# hardware.cpu_supports_bf16 reads torch's capability, so the plan and training choose fp32 there too.
# --tiempo-cpu: on a machine other processes share, wall-clock steps say more about them than about afinar. Then each
# child runs on one thread and times calibration and steps alike in its own CPU time (time.process_time).
CPU_TIME = False
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
BUILD = r"""
import sys, torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
sys.path.insert(0, sys.argv[1])
from plan_accuracy import SHAPES
from afinar.train import train  # noqa: F401  (imports afinar.models in the order training does)
from afinar.models import resolve_base
shape, folder = sys.argv[2], sys.argv[3]
source = resolve_base("smollm2-135m")
tokenizer = AutoTokenizer.from_pretrained(source)
config = Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
model = Qwen2ForCausalLM(config)
model.save_pretrained(folder, max_shard_size="2GB")
tokenizer.save_pretrained(folder)
"""
CHILD = r"""
import json, os, sys, time, types
from afinar.config import apply_overrides, load_recipe
from afinar.train import train
if os.environ.get("AFINAR_BENCH_CPU_TIME"):  # --tiempo-cpu: calibration and steps timed in this process's CPU time
    import afinar.train, afinar.train_stages  # the loop, and the calibration (train_stages.Session.calibrate)
    cpu_clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    cpu_clock.time = time.process_time
    afinar.train.time = afinar.train_stages.time = cpu_clock
recipe_path, overrides, output = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
recipe = apply_overrides(load_recipe(recipe_path), overrides)
recipe.train.max_minutes = None
recipe.output_dir = output
train(recipe, overwrite=True, progress=False)
"""


def build_shape(shape: str, folder: Path) -> Path:
    """A random-weight HF folder of `shape` (SHAPES), built once per bench run in its own process."""
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, "-c", BUILD, str(Path(__file__).parent), shape, str(folder)], cwd=ROOT,
                       check=True)
    return folder


def run_config(recipe: str, max_length: int, gc: bool, steps: int, base: str | None = None, emulate_avx2: bool = False,
               extra: dict | None = None, label: str | None = None) -> dict:
    from afinar.config import load_recipe

    base_recipe = load_recipe(ROOT / "recipes" / f"{recipe}.yaml")
    overrides = {"train.max_steps": steps, "train.eval_every": 10_000,
                 "train.save_every": 10_000, "train.gradient_checkpointing": gc, "data.max_length": max_length,
                 "train.tokens_per_batch": max(base_recipe.train.tokens_per_batch, max_length)}
    if base:
        overrides["model.base"] = base
    overrides.update(extra or {})
    env = {**os.environ, **(AVX2_ENV if emulate_avx2 else {})}
    if CPU_TIME:
        env.update(AFINAR_BENCH_CPU_TIME="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT / "recipes" / f"{recipe}.yaml"),
                                  json.dumps(overrides), tmp + "/run"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=env)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            print(output[-3000:], file=sys.stderr)
            raise RuntimeError(f"{label or recipe} max_length={max_length} gc={gc}: el entrenamiento falló")
        plan = json.loads(Path(tmp, "run", "plan.json").read_text())
        metrics = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    steps_run = [m for m in metrics if "step_seconds" in m][1:]  # the first step warms up: left out
    real_peak = usage.ru_maxrss * 1024 / 2**30  # Linux: KiB
    measured_step = sum(m["step_seconds"] for m in steps_run) / len(steps_run)
    # The plan's step is the epoch's mean step; these few steps have their own token counts: the same fit applied
    # to each of them is what they should have taken.
    fit = plan["time"]["fit"]
    accumulation = base_recipe.train.grad_accum
    for_these = sum(fit["fixed_seconds"] * accumulation + fit["seconds_per_token"] * m["real_tokens"]
                    + fit["optimizer_seconds"] for m in steps_run) / len(steps_run)
    memory = plan["memory"]
    return {
        "recipe": label or recipe, "max_length": max_length, "gradient_checkpointing": gc,
        "cpu": ("AVX2 (emulada)" if emulate_avx2 else "nativa") + (", 1 hilo, tiempo de CPU" if CPU_TIME else ""),
        "precision": plan["device"]["precision"],
        "micro_batch": f"{memory['largest_micro_batch']['rows']}×{memory['largest_micro_batch']['tokens_per_row']}",
        "real_peak_gib": round(real_peak, 3),
        "formula_gib": memory["measured"].get("formula_bytes", memory["total_gb"]),
        "measured_at_start_gib": memory["measured"].get("peak_bytes"),
        "calibrated_gib": memory["total_gb"],  # the plan's prediction: max(formula, peak measured at the start)
        "real_step_s": round(measured_step, 3), "planned_step_s": round(for_these, 3),
        "planned_mean_step_s": plan["time"]["step_seconds"],
        "tokens_per_step": round(sum(m["real_tokens"] for m in steps_run) / len(steps_run)),
        "real_steps_s": [m["step_seconds"] for m in steps_run],
        "fit": fit, "parts_gb": memory["parts_gb"],
    }


def error(predicted: float, real: float) -> float:
    return (predicted - real) / real


def with_errors(row: dict) -> dict:
    row.update(formula_error=error(row["formula_gib"], row["real_peak_gib"]),
               calibrated_error=error(row["calibrated_gib"], row["real_peak_gib"]),
               step_error=error(row["planned_step_s"], row["real_step_s"]))
    print(json.dumps(row), flush=True)
    return row


def local_table(steps: int, recipes: list[str], emulate_avx2: bool = False, own_only: bool = False) -> list[dict]:
    from afinar.config import load_recipe

    rows = []
    for recipe in recipes:
        own = load_recipe(ROOT / "recipes" / f"{recipe}.yaml")
        for max_length in (own.data.max_length,) if own_only else (own.data.max_length, SHORTER[recipe]):
            for gc in (own.train.gradient_checkpointing,) if own_only else (False, True):
                rows.append(with_errors(run_config(recipe, max_length, gc, steps, emulate_avx2=emulate_avx2)))
    return rows


def shape_table(shapes: list[str], emulate_avx2: bool = False, with_4bit: bool = False,
                folder: Path | None = None) -> list[dict]:
    """The larger shapes (SHAPES) trained with SHAPE_RECIPE's settings; with `with_4bit` (`--con-4bit`) the same
    configurations again with model.quantization=4bit (QLoRA on bitsandbytes' CPU backend), when it is installed."""
    import importlib.util

    rows = []
    folder = folder or Path(tempfile.mkdtemp(prefix="afinar-formas-"))
    for shape in shapes:
        base = build_shape(shape, folder / shape)
        max_length, steps = SHAPE_RUN[shape]
        variants = [({}, "")]
        if with_4bit:  # --con-4bit: the hook for QLoRA on a CPU (bitsandbytes' CPU backend)
            if importlib.util.find_spec("bitsandbytes") is None:
                print(f"{shape} 4bit: bitsandbytes no está instalado; fila omitida", flush=True)
            else:
                variants.append(({"model.quantization": "4bit"}, " 4bit"))
        for extra, suffix in variants:
            label = f"{SHAPE_RECIPE} @ {shape}{suffix}"
            try:
                rows.append(with_errors(run_config(SHAPE_RECIPE, max_length, False, steps, str(base), emulate_avx2,
                                                   extra, label)))
            except RuntimeError as exc:
                print(f"{label}: {exc}", flush=True)
                rows.append({"recipe": label, "error": str(exc)})
    return rows


def published_table() -> list[dict]:
    """The formula for each published GPU measurement, from its model's config.json alone."""
    sys.path.insert(0, str(Path(__file__).parent))
    from published_memory import CONFIGS, MEASUREMENTS
    from transformers import AutoConfig

    from afinar.config import recipe_from_dict
    from afinar.planning.estimate import GIB, DataShape, Target, estimate

    rows = []
    for item in MEASUREMENTS:
        if item["kind"] != "measured" or item["fits_in"] or not item["seq_len"]:
            continue
        config = AutoConfig.for_model(**CONFIGS[item["model"]])
        gcs = [item["gradient_checkpointing"]] if item["gradient_checkpointing"] is not None else [True, False]
        for gc in gcs:
            recipe = recipe_from_dict({
                "name": "publicado", "model": {"base": item["model"],
                                               "quantization": "4bit" if item["method"] == "qlora" else "none"},
                "data": {"sources": [{"path": "x.jsonl"}], "max_length": item["seq_len"]},
                "lora": {"r": item["lora_rank"] or 8, "target_modules": item["lora_targets"] or "all-linear",
                         "dropout": 0.0},
                "train": {"gradient_checkpointing": gc, "batch_size": item["batch_size"] or 1,
                          "tokens_per_batch": item["seq_len"] * (item["batch_size"] or 1)},
            }, "<bench>")
            tokens = item["seq_len"]
            shape = DataShape(rows=item["batch_size"] or 1, width=tokens, examples_per_row=max(1, tokens // 512),
                              labelled=tokens * (item["batch_size"] or 1) // 2, tokens_per_step=tokens,
                              micro_batches_per_step=1, steps_per_epoch=1, total_steps=1,
                              mean_example_tokens=512, labelled_fraction=0.5, examples=1)
            target = Target("gpu", item["gpu"] or "GPU", "bf16", 80 * GIB, 80 * GIB, False)
            plan = estimate(recipe, config, shape, target, measure_time=False)
            allocated = plan.memory.training_peak - plan.memory.part("runtime") - plan.memory.part("allocator")
            published = item["memory_gib"]
            row = {"model": item["model"], "method": item["method"], "gpu": item["gpu"], "seq_len": tokens,
                   "batch": item["batch_size"], "gradient_checkpointing": gc, "published_gib": published,
                   "unit": item["unit"], "predicted_gib": round(plan.memory.training_peak / GIB, 2),
                   "predicted_allocated_gib": round(allocated / GIB, 2),
                   "error": error(plan.memory.training_peak / GIB, published),
                   "allocated_error": error(allocated / GIB, published), "source": item["source"][:80],
                   "notes": item["notes"][:160]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(local: list[dict], published: list[dict]) -> str:
    out = []
    if local:
        out += ["| receta | max_length | GC | micro-lote | pico real | fórmula (error) | plan (error) | "
                "paso real | paso previsto (error) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in local:
            if "error" in r:
                out.append(f"| {r['recipe']} | falló: {r['error'][:80]} |")
                continue
            out.append(f"| {r['recipe']} | {r['max_length']} | {'sí' if r['gradient_checkpointing'] else 'no'} | "
                       f"{r['micro_batch']} | {r['real_peak_gib']:.2f} GiB | {r['formula_gib']:.2f} "
                       f"({r['formula_error']:+.0%}) | {r['calibrated_gib']:.2f} ({r['calibrated_error']:+.0%}) | "
                       f"{r['real_step_s']:.2f} s | {r['planned_step_s']:.2f} ({r['step_error']:+.0%}) |")
        worst = max((max(abs(r[k]) for k in ("formula_error", "calibrated_error", "step_error")) for r in local
                     if "error" not in r), default=0.0)
        out.append(f"\nPeor error: {worst:.0%} (meta: ±25 %).")
    if published:
        out += ["", "| modelo | método | GPU | tokens × lote | GC | publicado | previsto: asignado por PyTorch (error) "
                "| previsto: total con contexto CUDA (error) |", "|---|---|---|---|---|---|---|---|"]
        for r in published:
            gc = "?" if r["gradient_checkpointing"] is None else ("sí" if r["gradient_checkpointing"] else "no")
            out.append(f"| {r['model']} | {r['method']} | {r['gpu']} | {r['seq_len']} × {r['batch']} | {gc} | "
                       f"{r['published_gib']} {r['unit']} | {r['predicted_allocated_gib']:.1f} GiB "
                       f"({r['allocated_error']:+.0%}) | {r['predicted_gib']:.1f} GiB ({r['error']:+.0%}) |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pasos", type=int, default=8)
    parser.add_argument("--recetas", nargs="+", default=RECIPES, choices=RECIPES)
    parser.add_argument("--solo-cpu", action="store_true")
    parser.add_argument("--solo-gpu", action="store_true")
    parser.add_argument("--salida", default=str(ROOT / "bench" / "plan_accuracy.json"))
    parser.add_argument("--formas", nargs="*", default=list(SHAPES), choices=list(SHAPES),
                        help="formas de 0,5B y 1,5B con pesos aleatorios (--formas sin nada: ninguna)")
    parser.add_argument("--solo-formas", action="store_true", help="solo las formas grandes, sin recetas ni GPU")
    parser.add_argument("--solo-propia", action="store_true",
                        help="cada receta solo con su max_length y su gradient checkpointing")
    parser.add_argument("--emular-avx2", action="store_true",
                        help="una CPU solo AVX2 en los procesos hijos (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL)")
    parser.add_argument("--con-4bit", action="store_true",
                        help="las formas también con model.quantization=4bit (QLoRA en CPU, si bitsandbytes está)")
    parser.add_argument("--carpeta-formas", help="dónde guardar (y reutilizar) las formas construidas")
    parser.add_argument("--tiempo-cpu", action="store_true",
                        help="un hilo por proceso y tiempos en tiempo de CPU del proceso (equipo compartido)")
    args = parser.parse_args()
    global CPU_TIME
    CPU_TIME = args.tiempo_cpu
    local = [] if args.solo_gpu or args.solo_formas else local_table(args.pasos, args.recetas, args.emular_avx2,
                                                                     args.solo_propia)
    if not args.solo_gpu and args.formas:
        local += shape_table(args.formas, args.emular_avx2, args.con_4bit,
                             Path(args.carpeta_formas) if args.carpeta_formas else None)
    published = [] if args.solo_cpu or args.solo_formas else published_table()
    Path(args.salida).write_text(json.dumps({"local": local, "published": published}, indent=2, ensure_ascii=False))
    print(markdown(local, published))


if __name__ == "__main__":
    main()
