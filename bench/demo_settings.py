"""What the demo's settings reach in its time budget: train a variant of recipes/enfermeria_demo.yaml, then measure it
on the held-out first-aid questions (afinar:primeros_auxilios_evaluacion, never trained on) against the base.

    .venv/bin/python bench/demo_settings.py VARIANT [VARIANT ...] [--minutos 5] [--json filas.jsonl]
    .venv/bin/python bench/demo_settings.py --lista

Each variant is the demo recipe with a few keys changed (`VARIANTS` below); each trains in its own process for the
same time budget (`train.max_minutes`), so a setting that makes steps slower gets fewer of them, as in the demo.
Generation-only variants (name "gen:<variant>:<setting>") re-evaluate an already trained variant with other
generation settings. One row per variant: setting, steps, training minutes, held-out loss base → tuned, and on the
held-out questions with greedy decoding: ended on their own, Spanish, 3-gram repetition, chrF (× base), nursing
checks. The issue 13 targets are printed beside them. Run nothing else meanwhile: the budget is wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HELD_OUT = "afinar:primeros_auxilios_evaluacion"
RUNS = Path("runs") / "bench-demo"

VARIANTS: dict[str, dict] = {
    "demo": {},  # recipes/enfermeria_demo.yaml as shipped
    "qv-r8": {"lora.target_modules": ["q_proj", "v_proj"], "lora.r": 8, "lora.alpha": 16},
    "all-r8": {"lora.r": 8, "lora.alpha": 16},
    "all-r32": {"lora.r": 32, "lora.alpha": 64},
    "dora": {"lora.use_dora": True},
    "lr1e-3": {"train.lr": 1.0e-3},
    "lr3e-3": {"train.lr": 3.0e-3},
    "lr4e-3": {"train.lr": 4.0e-3},
    "full-lr1e-4": {"method": "full", "train.lr": 1.0e-4},
    "full-lr5e-5": {"method": "full", "train.lr": 5.0e-5},
    "full-lr2e-4": {"method": "full", "train.lr": 2.0e-4},
    "b4": {"train.batch_size": 4},
    # what a CPU without AVX512-BF16/AMX runs (fp32); with --minutos 3.3, about the steps of the 2-core AVX2 machine of
    # issue 13 (fp32 GEMM 125 GFLOP/s against 183-188 here: 5 min × 125/188)
    "fp32": {"train.precision": "fp32"},
    "fp32-lr3e-3": {"train.precision": "fp32", "train.lr": 3.0e-3},
    "fp32-b1": {"train.precision": "fp32", "train.batch_size": 1},
}
GENERATION: dict[str, dict] = {
    "recipe": {},  # the recipe's own settings (greedy)
    "rep1.0": {"repetition_penalty": 1.0},
    "rep1.2": {"repetition_penalty": 1.2},
}
TARGETS = "metas: termina ≥ 0,90 · español ≥ 0,95 · repetición ≤ 0,15 · pérdida ≤ −25 % · chrF ≥ 1,5× · checks ≥ base"


def _train(name: str, minutes: float) -> None:
    code = (
        "import sys; from afinar.config import load_recipe; from afinar.demo import shipped_recipe; "
        "from afinar.train import train; import json; "
        f"o = json.loads({json.dumps(json.dumps(VARIANTS[name]))}); "
        f"o.update({{'output_dir': {str(RUNS / name)!r}, 'train.max_minutes': {minutes}}}); "
        "train(load_recipe(shipped_recipe('enfermeria_demo')), overrides=o, overwrite=True, progress=False)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _tuned_only(run: Path, generation: dict) -> dict:
    """The tuned side of `evaluate_run` on the held-out questions (greedy), from the same pieces: its held-out loss,
    and its answers generated alone in batches of 12 (without the base's rows, which never stop and would hold
    every batch to max_new_tokens: about 4× faster). The base's side comes from the full evaluation of "demo"."""
    import torch

    from afinar.data.templates import encode_examples
    from afinar.evaluate.checks import CHECKS
    from afinar.evaluate.metrics import measure
    from afinar.evaluate.run import _examples, _run_info, _summary, _training_autocast, held_out_turns
    from afinar.inference.chat import generate_many
    from afinar.runs import load_ref, open_ref
    from afinar.training import evaluate_loss

    ref = open_ref(run)
    recipe = ref.recipe
    examples, _ = _examples(recipe, HELD_OUT)
    model, tokenizer = load_ref(ref, dtype=torch.float32)
    model.eval()
    encoded, _, _ = encode_examples(tokenizer, examples, recipe.data.system_prompt, recipe.data.max_length, "drop")
    loss = evaluate_loss(model, encoded, 4, tokenizer.pad_token_id, _training_autocast(_run_info(run)))
    gen = recipe.generation.model_copy(update={"temperature": 0.0, "max_new_tokens": 320, **generation})
    prompts, pairs = held_out_turns(examples, recipe.data.system_prompt)
    replies = generate_many(model, tokenizer, prompts, gen, batch_size=12)
    rows = [measure(r.text, reference, r.stopped, r.completion_tokens) for r, (_, reference) in zip(replies, pairs)]
    passed = [not any(CHECKS[c](q, ref_text, r.text) for c in recipe.checks) for r, (q, ref_text) in zip(replies, pairs)]
    return {"loss": loss, "greedy": _summary(rows), "checks": round(sum(passed) / len(passed), 4),
            "answers": [r.text for r in replies]}


def _base_row(rows_file: Path | None) -> dict | None:
    if rows_file and rows_file.is_file():
        for line in rows_file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["variant"] == "demo" and "base" in row:
                return row["base"]
    return None


def _row(name: str, run: Path, tuned: dict, base: dict) -> dict:
    info = json.loads((run / "afinar_run.json").read_text(encoding="utf-8"))
    g = tuned["greedy"]
    return {
        "variant": name,
        "setting": {**VARIANTS.get(name.split(":")[1] if name.startswith("gen:") else name, {}),
                    **GENERATION.get(name.split(":")[-1], {})},
        "steps": info["steps"],
        "train_minutes": round(info["train_seconds"] / 60, 2),
        "loss": round(tuned["loss"], 4),
        "loss_change": round(tuned["loss"] / base["loss"] - 1, 4),
        "stop": g["stop_rate"], "spanish": g["spanish"], "repetition": g["repetition"], "chrf": g["chrf"],
        "chrf_ratio": round(g["chrf"] / base["chrf"], 3),
        "checks": tuned["checks"], "words": g["words"],
        "base": base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--minutos", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="añade una fila JSON por variante a este archivo")
    parser.add_argument("--lista", action="store_true")
    args = parser.parse_args()
    if args.lista or not args.variants:
        for name, setting in {**VARIANTS, **{f"gen:demo:{k}": v for k, v in GENERATION.items()}}.items():
            print(f"{name:14s} {setting}")
        return
    cpu = [line for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
           if line.startswith("Model name")]
    print(*cpu, flush=True)
    base = _base_row(args.json)
    for name in args.variants:
        if name.startswith("gen:"):
            _, trained, setting = name.split(":")
            run, generation = RUNS / trained, GENERATION[setting]
        else:
            run, generation = RUNS / name, {}
            _train(name, args.minutos)
        if base is None:  # the base's side, once: the whole `afinar eval` on the held-out questions
            from afinar.evaluate.run import evaluate_run

            metrics = evaluate_run(run, split=HELD_OUT, n=1000, passes=("greedy",), max_new_tokens=320, progress=False)
            g = metrics["generation"]["greedy"]["base"]
            base = {"loss": metrics["loss"]["base"], "chrf": g["chrf"], "stop": g["stop_rate"], "spanish": g["spanish"],
                    "repetition": g["repetition"], "checks": metrics["checks_detail"]["enfermeria"]["base"],
                    "forgetting_of_this_run": metrics["forgetting"]["ratio"]}
        tuned = _tuned_only(run, generation)
        (run / "respuestas_evaluacion.json").write_text(json.dumps(tuned["answers"], ensure_ascii=False, indent=1),
                                                        encoding="utf-8")
        row = _row(name, run, tuned, base)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        if args.json:
            with args.json.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(TARGETS)


if __name__ == "__main__":
    main()
