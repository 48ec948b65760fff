"""QLoRA (NF4, bitsandbytes' CPU backend) against plain LoRA on this CPU: peak memory and step time, and what the
planner says a 1.5B base needs in 8 GB of RAM either way.

    .venv/bin/python bench/qlora_cpu.py [--pasos 8] [--precision fp32] [--salida bench/qlora_cpu.json]

1. The embedded base (smollm2-135m) with recipes/enfermeria.yaml trains `--pasos` steps twice, `model.quantization:
   none` (LoRA, the base's weights in fp32) and `4bit` (QLoRA), each in its own process (`afinar train` as a user
   runs it; held-out evaluation and checkpoints during the loop off), one after the other on the same machine.
   Measured: the process's peak resident memory (the kernel's, `os.wait4`: loading included) and the median step
   (metrics.jsonl `step_seconds`, the first step left out), and the ratios 4bit / none.
2. The planner's formula, nothing run: a Qwen2.5-1.5B-shaped base (hidden 1536, 28 layers, intermediate 8960,
   vocabulary 151 936, 12 heads, 2 KV heads, tied embeddings) with the same recipe and data, on a CPU with 8 GB of
   RAM, in fp32 LoRA and in QLoRA: the predicted peak and whether it fits.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "enfermeria.yaml"
QWEN_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
             "max_position_embeddings": 32768, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
             "dtype": "bfloat16"}  # the published weights' dtype: the planner's QLoRA load reads that file
RAM_8GB = 8 * 10**9
SYSTEM_RESERVE = 2**30  # what the operating system and desktop keep of those 8 GB (an assumption)
CHILD = r"""
import json, sys
from afinar.config import apply_overrides, load_recipe
from afinar.train import train
recipe_path, overrides, output = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
recipe = apply_overrides(load_recipe(recipe_path), overrides)
recipe.train.max_minutes = None
recipe.output_dir = output
train(recipe, overwrite=True, progress=False)
"""


def cpu_name() -> dict:
    info = {"model": "?", "avx512_bf16": False, "amx_bf16": False, "avx2": False, "cores": os.cpu_count()}
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] == "?":
            info["model"] = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            info.update(avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags, avx2="avx2" in flags)
            break
    return info


def run(quantization: str, steps: int, precision: str) -> dict:
    overrides = {"train.max_steps": steps, "train.eval_every": 10_000, "train.save_every": 10_000,
                 "model.quantization": quantization, "train.precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(RECIPE), json.dumps(overrides), tmp + "/run"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            print(output[-3000:], file=sys.stderr)
            raise RuntimeError(f"quantization={quantization}: el entrenamiento falló")
        plan = json.loads(Path(tmp, "run", "plan.json").read_text())
        metrics = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        info = json.loads(Path(tmp, "run", "afinar_run.json").read_text())
        merged = None
        if quantization == "4bit":  # `afinar merge`, in its own process (not in the training's peak)
            subprocess.run([sys.executable, "-c", "import sys; from afinar.merge import merge; merge(sys.argv[1])",
                            tmp + "/run"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            merged = json.loads(Path(tmp, "run", "merged", "afinar_merge.json").read_text())
    steps_run = [m for m in metrics if "step_seconds" in m]
    return {
        "quantization": quantization, "precision": plan["device"]["precision"],
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),  # Linux: KiB
        "median_step_s": round(statistics.median(m["step_seconds"] for m in steps_run[1:]), 3),
        "steps_s": [m["step_seconds"] for m in steps_run],
        "losses": [round(m["loss"], 4) for m in steps_run],
        "plan_gib": plan["memory"]["total_gb"],
        "formula_gib": plan["memory"]["measured"].get("formula_bytes", plan["memory"]["total_gb"]),
        "parts_gb": plan["memory"]["parts_gb"],
        "runtime_bytes": int(plan["memory"]["parts_gb"]["runtime"] * 2**30),
        "reason": info["hardware"]["reason"],
        # QLoRA: the merged model (unquantised base + adapter) against base + adapter (PEFT, fp32) and against the
        # model as it trained (NF4 base + adapter), on merge's probe.
        "merge": None if merged is None else {"vs_base_plus_adapter": merged["check"],
                                              "vs_4bit_base_plus_adapter": merged["qlora"]["vs_4bit_base_plus_adapter"]},
    }


def plan_1_5b(runtime_bytes: int, precision: str) -> list[dict]:
    """The planner's formula (no weights, no step run) for a Qwen2.5-1.5B-shaped base on an 8 GB CPU."""
    from transformers import Qwen2Config

    from afinar.config import apply_overrides, load_recipe
    from afinar.data.chat_format import recipe_tokenizer
    from afinar.data.pipeline import prepare_training_data
    from afinar.models import resolve_base
    from afinar.planning.estimate import DataShape, Target, estimate

    config = Qwen2Config(**QWEN_1_5B)
    rows = []
    for quantization in ("none", "4bit"):
        recipe = apply_overrides(load_recipe(RECIPE), {"model.quantization": quantization,
                                                       "train.precision": precision})
        # The data as the embedded base's tokenizer cuts it (Qwen's spends a few tokens less on Spanish).
        tokenizer, _ = recipe_tokenizer(resolve_base(recipe.model.base), recipe.data.template)
        shape = DataShape.of(prepare_training_data(recipe, tokenizer, progress=False, say=lambda *a, **k: None), recipe)
        target = Target("cpu", "CPU con 8 GB de RAM", precision, RAM_8GB, RAM_8GB - SYSTEM_RESERVE, False)
        plan = estimate(recipe, config, shape, target, runtime_bytes=runtime_bytes, measure_time=False, detailed=False)
        rows.append({"quantization": quantization, "total_gib": round(plan.memory.total / 2**30, 2),
                     "available_gib": round(target.available_bytes / 2**30, 2), "verdict": plan.memory.verdict,
                     "parts_gib": {p.key: round(p.bytes / 2**30, 2) for p in plan.memory.parts},
                     "load_peak_gib": round(plan.memory.load_peak / 2**30, 2),
                     "training_peak_gib": round(plan.memory.training_peak / 2**30, 2)})
    return rows


def print_plan(big: list[dict]) -> None:
    print(f"\nPlan (fórmula, sin ejecutar) de una base con la forma de Qwen2.5-1.5B (archivo bf16), la misma receta, en "
          f"una CPU con 8 GB de RAM ({big[0]['available_gib']:.2f} GiB utilizables, fp32):")
    for row in big:
        name = "QLoRA 4 bits" if row["quantization"] == "4bit" else "LoRA fp32"
        print(f"  {name}: pico ≈ {row['total_gib']:.2f} GiB (carga {row['load_peak_gib']:.2f} GiB, entrenamiento "
              f"{row['training_peak_gib']:.2f} GiB; pesos {row['parts_gib']['weights']:.2f} GiB) → {row['verdict']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pasos", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="la de ambas ejecuciones (LoRA y QLoRA); fp32 por defecto")
    parser.add_argument("--salida", type=Path, default=None, help="escribe los resultados en JSON")
    parser.add_argument("--solo-plan", action="store_true",
                        help="solo la parte 2 (el plan de la base de 1,5B), con el entorno de este proceso")
    args = parser.parse_args()
    if args.pasos < 3:
        parser.error("--pasos: al menos 3 (el primero no cuenta para la mediana)")
    cpu = cpu_name()
    print(f"CPU: {cpu['model']} ({cpu['cores']} núcleos); avx512_bf16={cpu['avx512_bf16']}, "
          f"amx_bf16={cpu['amx_bf16']}, avx2={cpu['avx2']}")
    if args.solo_plan:
        import afinar.train  # noqa: F401  (the imports a training process has when it plans)
        from afinar.planning.estimate import process_rss

        print_plan(plan_1_5b(process_rss(), "fp32"))
        return
    lora = run("none", args.pasos, args.precision)
    qlora = run("4bit", args.pasos, args.precision)
    print(f"\nsmollm2-135m, recipes/enfermeria.yaml, {args.pasos} pasos, precisión {args.precision}:")
    print("| ejecución | pico RSS (GiB) | paso mediano (s) | plan (GiB) | pérdidas |")
    print("|---|---|---|---|---|")
    for name, row in (("LoRA (base fp32)", lora), ("QLoRA (base NF4)", qlora)):
        print(f"| {name} | {row['peak_rss_gib']:.3f} | {row['median_step_s']:.3f} | {row['plan_gib']:.3f} | "
              f"{row['losses'][0]:.3f} → {row['losses'][-1]:.3f} |")
    ratios = {"peak_rss": round(qlora["peak_rss_gib"] / lora["peak_rss_gib"], 3),
              "median_step": round(qlora["median_step_s"] / lora["median_step_s"], 3)}
    print(f"Cociente 4bit / fp32: pico RSS × {ratios['peak_rss']:.2f}, paso mediano × {ratios['median_step']:.2f}")
    exact, trained = qlora["merge"]["vs_base_plus_adapter"], qlora["merge"]["vs_4bit_base_plus_adapter"]
    print(f"Fusión de la ejecución QLoRA (base sin cuantizar + adaptador): máx |Δlogits| {exact['max_abs']:.2e} frente a "
          f"base + adaptador sin fusionar; frente al modelo del entrenamiento (base NF4 + adaptador) máx |Δ| "
          f"{trained['max_abs']:.2e}, media {trained['mean_abs']:.2e}, mismo top-1 en {trained['top1']:.0%}")

    big = plan_1_5b(lora["runtime_bytes"], "fp32")
    print_plan(big)
    result = {"cpu": cpu, "steps": args.pasos, "precision": args.precision, "lora": lora, "qlora": qlora,
              "ratios_4bit_over_fp32": ratios, "plan_qwen2.5_1.5b_8gb": big}
    if args.salida:
        args.salida.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
