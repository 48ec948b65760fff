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
2. GPUs: the planner's formula for the setups of published measurements (bench/published_memory.py: torchtune's
   README, Unsloth, LLaMA-Factory), each model built from its config.json alone, with the error of each.
Prints the tables (Markdown, for the README) and writes them as JSON.
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


def run_config(recipe: str, max_length: int, gc: bool, steps: int) -> dict:
    from afinar.config import load_recipe

    base = load_recipe(ROOT / "recipes" / f"{recipe}.yaml")
    overrides = {"train.max_steps": steps, "train.eval_every": 10_000,
                 "train.save_every": 10_000, "train.gradient_checkpointing": gc, "data.max_length": max_length,
                 "train.tokens_per_batch": max(base.train.tokens_per_batch, max_length)}
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT / "recipes" / f"{recipe}.yaml"),
                                  json.dumps(overrides), tmp + "/run"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            print(output[-3000:], file=sys.stderr)
            raise SystemExit(f"{recipe} max_length={max_length} gc={gc}: el entrenamiento falló")
        plan = json.loads(Path(tmp, "run", "plan.json").read_text())
        metrics = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    steps_run = [m for m in metrics if "step_seconds" in m][1:]  # the first step warms up: left out
    real_peak = usage.ru_maxrss * 1024 / 2**30  # Linux: KiB
    measured_step = sum(m["step_seconds"] for m in steps_run) / len(steps_run)
    # The plan's step is the epoch's mean step; these few steps have their own token counts: the same fit applied
    # to each of them is what they should have taken.
    fit = plan["time"]["fit"]
    accumulation = base.train.grad_accum
    for_these = sum(fit["fixed_seconds"] * accumulation + fit["seconds_per_token"] * m["real_tokens"]
                    + fit["optimizer_seconds"] for m in steps_run) / len(steps_run)
    memory = plan["memory"]
    return {
        "recipe": recipe, "max_length": max_length, "gradient_checkpointing": gc,
        "micro_batch": f"{memory['largest_micro_batch']['rows']}×{memory['largest_micro_batch']['tokens_per_row']}",
        "real_peak_gib": round(real_peak, 3),
        "formula_gib": memory["measured"].get("formula_bytes", memory["total_gb"]),
        "measured_at_start_gib": memory["measured"].get("peak_bytes"),
        "calibrated_gib": memory["total_gb"],  # the plan's prediction: max(formula, peak measured at the start)
        "real_step_s": round(measured_step, 3), "planned_step_s": round(for_these, 3),
        "planned_mean_step_s": plan["time"]["step_seconds"],
        "tokens_per_step": round(sum(m["real_tokens"] for m in steps_run) / len(steps_run)),
    }


def error(predicted: float, real: float) -> float:
    return (predicted - real) / real


def local_table(steps: int, recipes: list[str]) -> list[dict]:
    from afinar.config import load_recipe

    rows = []
    for recipe in recipes:
        own = load_recipe(ROOT / "recipes" / f"{recipe}.yaml").data.max_length
        for max_length in (own, SHORTER[recipe]):
            for gc in (False, True):
                row = run_config(recipe, max_length, gc, steps)
                row.update(formula_error=error(row["formula_gib"], row["real_peak_gib"]),
                           calibrated_error=error(row["calibrated_gib"], row["real_peak_gib"]),
                           step_error=error(row["planned_step_s"], row["real_step_s"]))
                print(json.dumps(row), flush=True)
                rows.append(row)
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
            out.append(f"| {r['recipe']} | {r['max_length']} | {'sí' if r['gradient_checkpointing'] else 'no'} | "
                       f"{r['micro_batch']} | {r['real_peak_gib']:.2f} GiB | {r['formula_gib']:.2f} "
                       f"({r['formula_error']:+.0%}) | {r['calibrated_gib']:.2f} ({r['calibrated_error']:+.0%}) | "
                       f"{r['real_step_s']:.2f} s | {r['planned_step_s']:.2f} ({r['step_error']:+.0%}) |")
        worst = max(max(abs(r[k]) for k in ("formula_error", "calibrated_error", "step_error")) for r in local)
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
    args = parser.parse_args()
    local = [] if args.solo_gpu else local_table(args.pasos, args.recetas)
    published = [] if args.solo_cpu else published_table()
    Path(args.salida).write_text(json.dumps({"local": local, "published": published}, indent=2, ensure_ascii=False))
    print(markdown(local, published))


if __name__ == "__main__":
    main()
