"""`afinar plan RECIPE`: before training, will it fit on my machine (or that GPU), and how long will it take?

Memory from the base's config.json and the recipe's real data (planning/), for this machine or a GPU of the table
(`--dispositivo`); time measured here by default (`--calibrar`: `afinar train` up to its first real steps, nothing
written), computed from FLOPs and the device's peak for a GPU that is not this machine's. A table for people,
`--json` for scripts.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from afinar import heap
from afinar.bases import candidate_bases, render_table
from afinar.config import Override, Recipe, apply_overrides, load_recipe
from afinar.data.chat_format import recipe_tokenizer
from afinar.data.pipeline import prepare_training_data
from afinar.errors import AfinarError
from afinar.models import load_config, resolve_base
from afinar.planning.estimate import (
    DataShape,
    Plan,
    decimal,
    estimate,
    gib,
    minutes,
    process_rss,
    resolve_target,
)
from afinar.planning.memory import FITS
from afinar.train import train


def plan(recipe: str | Path | Recipe, device: str | None = None, calibrate: bool | None = None,
         as_json: bool = False, overrides: dict | None = None, bases: bool = False) -> Plan:
    """The plan for `recipe` on `device` (None: this machine; "cpu", "cuda" or a key of planning.devices.DEVICES).
    `calibrate` (default: when the device is this machine) measures real training steps here. `bases`: also the
    catalog of bases the recipe could start from (afinar/bases.py), each planned on the same device and data."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    recipe = apply_overrides(recipe, overrides or {})
    target = resolve_target(device, recipe)
    calibrate = target.local if calibrate is None else calibrate
    if calibrate and not target.local:
        raise AfinarError("L003", f"--calibrar mide pasos reales en este equipo, no en {target.name}.",
                          hint="quita --calibrar para estimar esa GPU con su tabla, o planifica sin --dispositivo")
    # With --json, stdout is the JSON alone: what training prints on the way goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet:
        base_path = resolve_base(recipe.model.base)
        config = load_config(base_path)
        tokenizer, _ = recipe_tokenizer(base_path, recipe.data.template)
        prepared = prepare_training_data(recipe, tokenizer, progress=False,
                                         say=(lambda *a, **k: None) if calibrate else print)
        shape, runtime = DataShape.of(prepared, recipe), process_rss()
        result = estimate(recipe, config, shape, target, runtime_bytes=runtime, measure_time=not calibrate)
        if calibrate and result.memory.verdict == "no cabe":
            print("No se calibra: según la fórmula no cabe, y cargar el modelo podría agotar la memoria.")
            result = estimate(recipe, config, shape, target, runtime_bytes=runtime)
        elif calibrate:  # `afinar train` up to its measured first steps: the same model, data and micro-batches
            result = train(recipe, progress=False, plan_only=True, force=True)
        catalog = None
        if bases:
            catalog = candidate_bases(recipe, shape=shape, target=target, reference=result, runtime_bytes=runtime)
    if as_json:
        out = result.to_json()
        if catalog is not None:
            out["bases"] = [c.to_json() for c in catalog]
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(render(result))
        if catalog is not None:
            print()
            print(render_table(catalog, target.name))
    result.bases = catalog
    return result


def plan_command(argv: list[str], **options) -> int:
    """`afinar plan RECIPE`: the plan (the other options are its parameters), measured in a process with the memory
    allocator `afinar train` gives its training (afinar/heap.py: tcmalloc when the system has it)."""
    heap.restart_with_allocator(argv)
    plan(**options)
    return 0


def plan_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="receta .yaml (ver recipes/)")
    p.add_argument("--dispositivo", "--device", dest="device",
                   help="cpu, cuda, o una GPU de la tabla: rtx2060, rtx3050-4gb, rtx3050-8gb, rtx3060, rtx4060, t4, "
                        "l4, a100-40gb, a100-80gb, h100 (por defecto: este equipo)")
    p.add_argument("--calibrar", dest="calibrate", action="store_true",
                   help="mide pasos reales en este equipo (por defecto cuando el dispositivo es este equipo)")
    p.add_argument("--no-calibrar", dest="calibrate", action="store_false",
                   help="solo la fórmula (segundos): sin cargar el modelo")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="el plan en JSON (memory.total_gb, time.step_seconds…)")
    p.add_argument("--tokens-per-batch", type=int, dest="overrides", action=Override, key="train.tokens_per_batch")
    p.add_argument("--max-length", type=int, dest="overrides", action=Override, key="data.max_length")
    p.add_argument("--base", dest="overrides", action=Override, key="model.base",
                   help="modelo base: smollm2-135m, carpeta, .gguf, id del Hub (solo su config.json) "
                        "u ollama:NOMBRE[:etiqueta]")
    p.add_argument("--gradient-checkpointing", dest="overrides", action=Override, key="train.gradient_checkpointing",
                   const=True)
    p.add_argument("--sin-gradient-checkpointing", dest="overrides", action=Override,
                   key="train.gradient_checkpointing", const=False)
    p.add_argument("--bases", action="store_true",
                   help="además, las bases que podrías usar (incluida, GGUF y Ollama locales, las de las guías "
                        "en el Hub): si caben y cuánto tardaría la receta con cada una, sin descargar nada")


def render(plan: Plan) -> str:
    """The plan as a console table (plain text: it reads the same in a terminal, a log or a notebook)."""
    m, d, t = plan.memory, plan.data, plan.target
    lines = [f"Plan de «{plan.recipe}» ({plan.base}, {plan.method}) en {t.name} ({t.precision})", ""]
    lines.append("Memoria (pico previsto)")
    width = max(len(p.label) for p in m.parts) + 2
    for part in m.parts:
        lines.append(f"  {part.label:<{width}}{gib(part.bytes):>11}")
    lines.append(f"  {'Total del entrenamiento (fórmula)':<{width}}{gib(m.training_peak):>11}")
    if m.load_peak:
        lines.append(f"  {'Pico al cargar los pesos (fp32)':<{width}}{gib(m.load_peak):>11}")
    if m.measured:
        lines.append(f"  {'Pico medido en pasos reales':<{width}}{gib(m.measured['peak_bytes']):>11}")
    per_token = plan.activation_bytes_per_token
    if len(per_token) == 2:
        lines.append(f"  Activaciones y temporales por token: {decimal(per_token['sin_checkpointing'] / 2**20)} MiB "
                     f"sin gradient checkpointing, {decimal(per_token['con_checkpointing'] / 2**20)} MiB con él "
                     f"(micro-lote mayor: {d.rows} × {d.width} tokens)")
    lines.append(f"  → {gib(m.total)} de {gib(m.available_bytes)} disponibles ({gib(m.device_bytes)} en total): "
                 f"{m.verdict.upper()}" + ("" if m.verdict == "cabe" else f" (cabe: ≤ {FITS:.0%} de lo disponible)"))
    if plan.suggestions and m.verdict != "cabe":
        lines.append("  Qué cambiar:")
        lines += [f"    - {text}: −{gib(saved)}" for text, saved in plan.suggestions]
    lines += ["", "Tiempo"]
    how = ("medido aquí con pasos reales (a + b·tokens)" if plan.calibrated
           else f"estimado: {decimal(plan.flops_per_token / 1e9)} GFLOP por token")
    lines.append(f"  {d.examples} ejemplos, {d.tokens_per_step:.0f} tokens por paso, {d.steps_per_epoch} pasos por época")
    lines.append(f"  Un paso ≈ {decimal(plan.step_seconds)} s de media ({how})")
    if plan.full_step_seconds > 1.05 * plan.step_seconds:
        lines.append(f"  Los primeros pasos de cada época, con los micro-lotes más llenos ({d.full_step_tokens:.0f} tokens), "
                     f"≈ {decimal(plan.full_step_seconds)} s")
    lines.append(f"  Una época ≈ {minutes(plan.epoch_seconds)}; la receta ({d.total_steps} pasos) ≈ "
                 f"{minutes(plan.total_seconds)}, sin contar la carga ni las validaciones")
    return "\n".join(lines)
