"""`afinar demo` (= `make demo`): the whole path on the embedded base in a few minutes on a laptop CPU.

Train the nursing recipe for a time budget (the steps that fit on this machine), compare held-out loss
before/after, answer held-out questions with the base and the tuned model side by side (batched greedy
generation), then merge.
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

from afinar import heap
from afinar.atomic import atomic_write_text
from afinar.config import load_recipe

DEMO_RUN = Path("runs") / "demo-enfermeria"
# recipes/enfermeria_demo.yaml: a time budget (train.max_minutes: 5), not a step count, so the demo takes the same
# few minutes on a slow laptop and a fast one, and does more steps on the fast one; its header has the measurements
# behind its settings. With loading, evaluation and merge, the demo stays within 10 minutes.
DEMO_RECIPE = "enfermeria_demo"
# Greedy answers get room for all but 2 of the 320 training answers (median 164 tokens, longest 282): measured on
# the 36 held-out questions, the demo's tuned model answered in 123-225 tokens. The base seldom stops, so its rows
# take the whole cap: 256 instead of 320 is a fifth less generation time (bench/demo_settings.py).
DEMO_MAX_NEW_TOKENS = 256


def shipped_recipe(name: str) -> Path:
    return Path(str(importlib.resources.files("afinar.recipes").joinpath(f"{name}.yaml")))


def demo(output: str | Path = DEMO_RUN, epochs: float | None = None, max_steps: int | None = None, questions: int = 8,
         minutes: float | None = None) -> Path:
    import math

    from rich.console import Console

    from afinar.evaluate.report import print_summary, what_it_takes
    from afinar.evaluate.run import evaluate_run
    from afinar.merge import merge
    from afinar.train import train
    from afinar.training import read_metrics

    console = Console()
    recipe = load_recipe(shipped_recipe(DEMO_RECIPE))
    if max_steps is not None:  # a fixed number of steps instead of the recipe's time budget
        recipe.train.max_minutes = None
    overrides = {"output_dir": str(output), "train.epochs": epochs, "train.max_steps": max_steps,
                 "train.max_minutes": minutes}
    console.rule(f"1/3 · Entrenamiento LoRA (receta {DEMO_RECIPE}, modelo base incluido)")
    run_dir = train(recipe, overrides=overrides, overwrite=True)

    evals = [r for r in read_metrics(run_dir) if r.get("eval_loss") is not None]
    before, after = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    console.print(
        f"Pérdida en validación (solo tokens de respuesta): base {before:.3f} (perplejidad {math.exp(before):.1f}) → "
        f"afinado {after:.3f} (perplejidad {math.exp(after):.1f})"
    )

    console.rule("2/3 · Evaluación: preguntas que no vio al entrenar, con sus puntos clave, base vs afinado")
    # Greedy only: the recipe-sampling pass would double the demo's generation time (`afinar eval` does both). The
    # recipe's evaluation set (36 first-aid questions with key points and dangers written by hand); 8 questions are
    # two generation batches: enough to see right, incomplete and dangerous answers, not to rank two models.
    metrics = evaluate_run(
        run_dir, n=questions, passes=("greedy",), max_new_tokens=DEMO_MAX_NEW_TOKENS, show_examples=True
    )
    print_summary(metrics, console)
    contrast = [
        {
            "where": sample["where"],
            "question": sample["question"],
            **{side: {k: sample["outputs"]["greedy"][side].get(k) for k in ("text", "stopped", "tokens", "keypoints")}
               for side in ("base", "tuned")},
        }
        for sample in metrics["samples"]
    ]
    atomic_write_text(
        run_dir / "contraste.json",
        json.dumps({"verdict": metrics["verdict"], "correctness": metrics["correctness"],
                    "eval_loss": {"base": before, "tuned": after}, "greedy": contrast}, indent=2, ensure_ascii=False),
    )

    usable, bigger = what_it_takes(metrics["correctness"], json.loads((run_dir / "afinar_run.json").read_text("utf-8")))
    if usable:
        console.print(usable, style="bold red" if "No son consejos correctos" in usable else "bold", highlight=False)
    if bigger:
        console.print(bigger, highlight=False)

    console.rule("3/3 · Fusión del adaptador en un modelo independiente")
    merged = merge(run_dir, overwrite=True)
    console.print(
        f"\nTodo en {run_dir}:\n"
        f"  adaptador LoRA, receta y métricas: {run_dir}\n"
        f"  curva de pérdida:                  {run_dir / 'loss.png'}\n"
        f"  informe de evaluación:             {run_dir / 'informe' / 'index.html'}\n"
        f"  contraste base vs afinado:         {run_dir / 'contraste.json'}\n"
        f"  modelo fusionado (safetensors):    {merged}\n"
        f"Prueba tú:  afinar chat {merged}\n"
        "Uso educativo: no sustituye la atención médica. En una emergencia, llama al 112 o al número de tu país."
    )
    return run_dir


def demo_command(argv: list[str], **options) -> int:
    """`afinar demo`: the demo (the other options are its parameters) in a process with the memory allocator
    `afinar train` gives its training (afinar/heap.py: tcmalloc when the system has it), since the demo trains in
    its own process."""
    heap.restart_with_allocator(argv)
    demo(**options)
    return 0


def demo_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--minutos", "--minutes", dest="minutes", type=float,
                   help="minutos de entrenamiento (por defecto 5; los pasos que quepan en este equipo)")
