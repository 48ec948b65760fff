"""What the demo's settings reach in its time budget: train a variant of recipes/enfermeria_demo.yaml, then measure it
on the held-out first-aid questions (afinar:primeros_auxilios_evaluacion, never trained on) against the base.

    .venv/bin/python bench/demo_settings.py VARIANT [VARIANT ...] [--minutos 5 | --pasos 180] [--json filas.jsonl]
    .venv/bin/python bench/demo_settings.py --lista

Each variant is the demo recipe with a few keys changed (`VARIANTS` below); each trains in its own process for the
same time budget (`train.max_minutes`), so a setting that makes steps slower gets fewer of them, as in the demo.
Generation-only variants (name "gen:<variant>:<setting>") re-evaluate an already trained variant with other
generation settings. One row per variant: setting, steps, training minutes, and on the 36 held-out questions with
greedy decoding, first what a nurse would mark (issue 26): key points covered, complete answers, dangerous answers
(each question's `claves`/`peligros`), and the share of answers that contain the training data's most repeated
sentence; then held-out loss, ended on their own, Spanish, 3-gram repetition, chrF (× base). Run nothing else
meanwhile with --minutos (the budget is wall time); --pasos N trains a fixed number of steps instead, comparable on a
busy machine.
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
    # Levers against collapse onto the data's repeated sentence (issue 26).
    "neftune5": {"train.neftune_noise_alpha": 5.0},
    "neftune10": {"train.neftune_noise_alpha": 10.0},
    "lr1e-3-neftune5": {"train.lr": 1.0e-3, "train.neftune_noise_alpha": 5.0},
    "epochs1": {"train.epochs": 1},
    "doble-tiempo": {},  # the demo's recipe, run with --pasos twice the demo's steps: what 10 minutes would give
    "menos-112": {"data.sources": [{"path": "DERIVED:menos-112"}]},  # the data warning's fix, see _derived_data
    "menos-112-neftune5": {"data.sources": [{"path": "DERIVED:menos-112"}], "train.neftune_noise_alpha": 5.0},
    "112-solo-urgente": {"data.sources": [{"path": "DERIVED:112-solo-urgente"}]},
    "112-solo-urgente-lr1e-3": {"data.sources": [{"path": "DERIVED:112-solo-urgente"}], "train.lr": 1.0e-3},
}
# The training data's most repeated sentence starts like this (afinar inspect: in 61 % of the answers).
BOILERPLATE = "Llama al 112 (o al número de emergencias de tu país)"
GENERATION: dict[str, dict] = {
    "recipe": {},  # the recipe's own settings (greedy)
    "rep1.0": {"repetition_penalty": 1.0},
    "rep1.2": {"repetition_penalty": 1.2},
}
TARGETS = ("lo que cuenta: puntos clave ↑, completas ↑, peligrosas ≤ base; después: termina ≥ 0,90 · "
           "repetición ≤ 0,15 · frase repetida ↓")


def _derived_data(name: str) -> Path:
    """The data warning's fix, as a user would apply it. "menos-112": the sentence that starts with the repeated
    words removed from the answers to questions that name no emergency sign (it matched 40 of 320: most of the
    repeats sit inside longer sentences). "112-solo-urgente": the parenthesis «(o al número de emergencias de tu
    país)» removed from every answer, and any sentence with 112 removed where the question names no emergency sign
    (unconscious, not breathing, chest pain, a burn, poison…): 112 stays in 62 answers instead of 205. Written once
    under runs/bench-demo/."""
    import re

    from afinar.data.formats import shipped_dataset

    path = RUNS / f"{name}.jsonl"
    if path.is_file():
        return path
    urgent = re.compile(r"inconscien|no respira|respira mal|pecho|convuls|atragant|sangra mucho|hemorragia|ictus|"
                        r"infarto|anafilax|alérg|no responde|desmay|veneno|tóxic|trag"
                        + (r"|ahog|quemad" if name == "112-solo-urgente" else ""), re.IGNORECASE)
    sentence = re.compile(re.escape(BOILERPLATE) + r"[^.]*\.\s*")
    any_112 = re.compile(r"[^.]*\b112\b[^.]*\.\s*")
    parenthesis = re.compile(r"\s*\(o al número de emergencias de tu país\)")
    rows, removed = [], 0
    for line in shipped_dataset("primeros_auxilios").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        before = row["output"]
        if name == "112-solo-urgente":
            row["output"] = parenthesis.sub("", row["output"])
            if not urgent.search(row["instruction"]):
                row["output"] = any_112.sub("", row["output"]).strip()
        elif not urgent.search(row["instruction"]):
            row["output"] = sentence.sub("", row["output"]).strip()
        removed += row["output"] != before
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{name}: {removed} de {len(rows)} respuestas cambiadas", flush=True)
    return path


def _setting(name: str) -> dict:
    setting = json.loads(json.dumps(VARIANTS[name]))
    for source in setting.get("data.sources", []):
        if source["path"].startswith("DERIVED:"):
            source["path"] = str(_derived_data(source["path"].removeprefix("DERIVED:")).resolve())
    return setting


def _train(name: str, minutes: float, steps: int | None) -> None:
    budget = {"train.max_steps": steps, "train.max_minutes": None} if steps else {"train.max_minutes": minutes}
    code = (
        "import sys; from afinar.config import load_recipe; from afinar.demo import shipped_recipe; "
        "from afinar.train import train; import json; "
        f"o = json.loads({json.dumps(json.dumps(_setting(name)))}); "
        f"o.update({{'output_dir': {str(RUNS / name)!r}, **json.loads({json.dumps(json.dumps(budget))})}}); "
        "r = load_recipe(shipped_recipe('enfermeria_demo')); r.train.max_minutes = None if o.get('train.max_steps') else r.train.max_minutes; "
        "train(r, overrides=o, overwrite=True, progress=False)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _correctness(examples, texts: list[str]) -> dict:
    """What a nurse marks: key points covered (mean share), complete and dangerous answers, and how many answers
    carry the data's repeated sentence."""
    from afinar.data.duplicates import normalise
    from afinar.data.keypoints import score_answer

    scores = [score_answer(t, e.claves, e.peligros) for e, t in zip(examples, texts)]
    n = len(scores)
    return {"covered": round(sum(s.covered for s in scores) / n, 4),
            "complete": sum(s.complete for s in scores), "dangerous": sum(s.dangerous for s in scores),
            "boilerplate": sum(normalise(BOILERPLATE) in normalise(t) for t in texts), "questions": n}


def _tuned_only(run: Path, generation: dict) -> dict:
    """The tuned side of `evaluate_run` on the held-out questions (greedy), from the same pieces: its held-out loss,
    and its answers generated alone in batches of 12 (without the base's rows, which never stop and would hold
    every batch to max_new_tokens: about 4× faster). The base's side comes from the full evaluation of "demo"."""
    import torch

    from afinar.data.templates import encode_examples
    from afinar.evaluate.metrics import measure
    from afinar.evaluate.run import (
        _examples,
        _run_info,
        _summary,
        _training_autocast,
        held_out_turns,
    )
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
    return {"loss": loss, "greedy": _summary(rows), "correct": _correctness(examples, [r.text for r in replies]),
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
        **{f"correct_{k}": v for k, v in tuned["correct"].items()}, "words": g["words"],
        "base": {k: v for k, v in base.items() if k != "answers"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--minutos", type=float, default=5.0)
    parser.add_argument("--pasos", type=int, help="pasos fijos en vez de minutos (comparable en un equipo ocupado)")
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
            _train(name, args.minutos, args.pasos)
        if base is None:  # the base's side, once: the whole `afinar eval` on the held-out questions
            from afinar.evaluate.run import _examples, evaluate_run
            from afinar.runs import open_ref

            metrics = evaluate_run(run, split=HELD_OUT, n=1000, passes=("greedy",), max_new_tokens=320, progress=False)
            g = metrics["generation"]["greedy"]["base"]
            examples, _ = _examples(open_ref(run).recipe, HELD_OUT)
            by_where = {s["where"]: s["outputs"]["greedy"]["base"]["text"] for s in metrics["samples"]}
            base = {"loss": metrics["loss"]["base"], "chrf": g["chrf"], "stop": g["stop_rate"], "spanish": g["spanish"],
                    "repetition": g["repetition"], "forgetting_of_this_run": metrics["forgetting"]["ratio"],
                    "correct": _correctness(examples, [by_where[e.where] for e in examples]),
                    "answers": [by_where[e.where] for e in examples]}
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
