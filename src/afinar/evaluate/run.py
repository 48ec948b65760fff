"""`afinar eval RUN`: the guides' "pruebas de contraste" and hand-ticked checklist, measured.

For a LoRA run, one model in memory: the base is the same PEFT model with its adapter disabled; a full fine-tuning
run (`method: full`) loads its base beside it. Base and tuned see exactly the same prompts and generation settings.
Everything lands in `RUN/informe/metrics.json` (stable keys, see README) and a self-contained
`RUN/informe/index.html`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

from afinar.atomic import atomic_write_text
from afinar.config import GenerationSection
from afinar.data.chat_format import folder_format, stops_of
from afinar.data.formats import (
    Example,
    Problem,
    attach_keypoints,
    keypoints_file,
    load_examples,
    shipped_dataset,
)
from afinar.data.keypoints import score_answer
from afinar.data.pii import has_pii
from afinar.data.templates import encode_examples, ids_and_labels, with_system
from afinar.data.validate import gather
from afinar.errors import AfinarError
from afinar.evaluate import llamacpp as llamacpp_eval
from afinar.evaluate.checks import CHECKS
from afinar.evaluate.judge import agreement, check_url, judge_answers
from afinar.evaluate.metrics import measure
from afinar.evaluate.report import write_report
from afinar.inference.chat import generate_many
from afinar.models import afinar_home, load_model, resolve_base
from afinar.runs import DATA_FINGERPRINT, EVAL_DIR, RECIPE, RUN_INFO, load_ref, open_ref
from afinar.training import (
    checkpoint_dirs,
    evaluate_loss,
    load_trained_weights,
    read_metrics,
)

SCHEMA = "afinar.eval/1"
REPORT_DIR = EVAL_DIR  # RUN/informe: metrics.json and index.html
GENERAL_SET = "general_es"
GENERAL_SYSTEM = "Eres un asistente útil. Respondes en español de forma clara y correcta."
PASSES = ("greedy", "sampled")
SIDES = ("base", "tuned")
BASE_ROWS = "__base__"  # PEFT's adapter name for rows of a mixed batch that run without any adapter


def _examples(recipe, split: str, keypoints: str | Path | None = None) -> tuple[list[Example], bool]:
    """Held-out examples and whether their text may be shown (only shipped datasets, never user data by default).

    Key points and dangers come with each line (`claves`, `peligros`) or from a side file: `keypoints`, else the
    data file's `<name>.claves.jsonl` when there is one."""
    examples, shipped, path = _held_out(recipe, split)
    side = Path(keypoints) if keypoints else (keypoints_file(path) if path else None)
    if keypoints or (side and side.is_file()):
        problems: list[Problem] = []
        attach_keypoints(examples, side, problems)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise AfinarError(errors[0].code, "el archivo de claves tiene errores (no se ha evaluado nada):\n  "
                              + "\n  ".join(p.render() for p in errors[:10]),
                              hint="cada línea: {\"linea\": N, \"claves\": [[\"alternativa\", …], …], \"peligros\": [\"…\"]}")
    return examples, shipped


def _held_out(recipe, split: str) -> tuple[list[Example], bool, Path | None]:
    if split == "val":
        prepared = gather(recipe.data)
        if not prepared.val:
            raise AfinarError("V003", "la receta no deja ejemplos de validación (val_fraction = 0).",
                              hint="indica un archivo: afinar eval RUN --split datos_prueba.jsonl")
        shipped = all(Path(s.path).parent == shipped_dataset(GENERAL_SET).parent for s in recipe.data.sources)
        return prepared.val, shipped, None
    problems: list[Problem] = []
    shipped = split.startswith("afinar:")  # a dataset of the package (e.g. afinar:primeros_auxilios_evaluacion)
    path = shipped_dataset(split.removeprefix("afinar:")) if shipped else Path(split)
    examples = load_examples(path, "auto", problems)
    errors = [p for p in problems if p.severity == "error"]
    if errors or not examples:
        detail = "\n  ".join(p.render() for p in errors[:10]) or "el archivo no tiene ejemplos"
        raise AfinarError("V003", f"no se puede evaluar con {split}:\n  {detail}")
    return examples, shipped, path


def held_out_turns(examples: list[Example], system_prompt: str | None) -> tuple[list[list[dict]], list[tuple[str, str]]]:
    """(prompts, (question, reference) pairs): each example's last assistant turn is the reference answer; the turns
    before it, with the recipe's system prompt, are the prompt."""
    prompts, pairs = [], []
    for example in examples:
        last = max(k for k, m in enumerate(example.messages) if m["role"] == "assistant")
        prompts.append(with_system(example.messages[:last], system_prompt))
        pairs.append((example.messages[last - 1]["content"], example.messages[last]["content"]))
    return prompts, pairs


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _summary(rows: list[dict]) -> dict:
    return {
        "stop_rate": _mean(float(r["stopped"]) for r in rows),
        "repetition": _mean(r["repetition"] for r in rows),
        "spanish": _mean(r["spanish"] for r in rows),
        "words": _mean(r["words"] for r in rows),
        "chrf": _mean(r["chrf"] for r in rows),
    }


def _loss_numbers(base: float, tuned: float) -> dict:
    return {
        "base": round(base, 4),
        "tuned": round(tuned, 4),
        "ppl_base": round(math.exp(min(base, 50)), 3),
        "ppl_tuned": round(math.exp(min(tuned, 50)), 3),
        "delta": round(tuned - base, 4),
    }


def _as_base(model, base_model):
    """(model, context) that computes the base: the other model of a full fine-tuning run, else the same PEFT model
    with its adapter disabled."""
    return (base_model, nullcontext()) if base_model is not None else (model, model.disable_adapter())


def _loss_pair(model, encoded, pad_id, autocast=nullcontext, base_model=None, remember: bool = False) -> dict:
    """Held-out loss of the base and of the tuned model. `remember`: each number is kept in afinar's cache and
    reused by the next evaluation of the same weights on the same rows and precision: the base's by every run on
    that base (the forgetting guard's base side: half the guard's time, about 17 s of the demo on a 2-core CPU), the
    tuned model's when the same run is evaluated again (another engine, more questions, a judge)."""
    base_side, as_base = _as_base(model, base_model)
    with as_base:
        base, base_cache = _remembered(base_side, encoded, pad_id, autocast, "base", remember)
    tuned, tuned_cache = _remembered(model, encoded, pad_id, autocast, "afinado", remember)
    if base is None or tuned is None:
        return {"base": None, "tuned": None}
    return {**_loss_numbers(base, tuned), **({"base_from_cache": base_cache} if base_cache else {}),
            **({"tuned_from_cache": tuned_cache} if tuned_cache else {})}


def _remembered(model, encoded, pad_id, autocast, side: str, remember: bool) -> tuple[float | None, str | None]:
    """(loss, the cache file's name when it came from there)."""
    cached = _loss_cache(model, encoded, autocast, side) if remember else None
    value = cached.read() if cached else None
    if value is not None:
        return value, cached.path.name
    value = evaluate_loss(model, encoded, 4, pad_id, autocast)
    if cached and value is not None:
        cached.write(value)
    return value, None


class _CachedNumber:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> float | None:
        try:
            return float(json.loads(self.path.read_text(encoding="utf-8"))["loss"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, value: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"loss": value}))


def _loss_cache(model, rows, autocast, side: str = "base") -> _CachedNumber:
    """Where a model's loss on `rows` is kept: keyed by the weights themselves, the token ids and labels, and the
    precision. The base ("base"): a strided sample of every parameter outside the adapter, so any path or hub id of
    the same base matches and any other base does not. The tuned model ("afinado"): that sample of every parameter
    plus the adapter's own (LoRA, DoRA's magnitudes, trained token rows) byte for byte: another training, even of one
    step, is another key."""
    import hashlib

    import torch

    adapter = ("lora_", "trainable_tokens", "modules_to_save")
    digest = hashlib.sha256(side.encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in adapter):
                if side == "base":
                    continue
                digest.update(name.encode() + param.detach().float().cpu().numpy().tobytes())
                continue
            sample = param.detach().flatten()[:: 4099].float()
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}:{float(sample.sum())!r}:{float(sample.abs().sum())!r}".encode())
    for row in rows:
        ids, labels = ids_and_labels(row)
        digest.update(json.dumps([list(ids), list(labels)]).encode())
    with autocast():
        digest.update(f"{torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else 'fp32'}".encode())
    digest.update(torch.__version__.encode())
    return _CachedNumber(afinar_home() / "evaluacion" / f"perdida-{side}-{digest.hexdigest()[:32]}.json")


def _run_info(run_dir: Path) -> dict:
    """The run folder's summary written by the training (hardware, final held-out loss); {} when it has none."""
    try:
        return json.loads((Path(run_dir) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _training_losses(run_dir: Path, info: dict) -> dict | None:
    """The held-out loss pair the training already measured on this run's validation split, if it did.

    Training scores the validation split before step 1 (the base: LoRA's B starts at zero) and after its last step
    (the adapter saved in the run folder), in its own precision: the same two numbers `_loss_pair` would compute
    again, up to float rounding. None when the run did not record both (interrupted run, val_fraction 0)."""
    tuned = info.get("final_eval_loss")
    if tuned is None:
        return None
    try:
        first = next((r for r in read_metrics(run_dir) if r.get("step") == 0 and "eval_loss" in r), None)
    except (OSError, AfinarError):
        return None
    if first is None or first["eval_loss"] is None:
        return None
    return {**_loss_numbers(first["eval_loss"], tuned), "from_training": True}


def _training_autocast(info: dict):
    """The losses in the precision the run trained in (`info`: its afinar_run.json): bf16 autocast on a CPU that has
    it (about twice as fast as fp32 there, and the numbers match the run's own held-out loss), else fp32."""
    import torch

    hardware = info.get("hardware", {})
    if hardware.get("device") == "cpu" and hardware.get("precision") == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


def _checkpoint_losses(model, run_dir: Path, encoded, pad_id, autocast=nullcontext) -> list[dict]:
    """Validation loss of every saved checkpoint, then the final weights (adapter or whole model) back in place."""
    rows = []
    for folder in checkpoint_dirs(run_dir):
        load_trained_weights(model, folder)
        loss = evaluate_loss(model, encoded, 4, pad_id, autocast)
        rows.append({"checkpoint": folder.name, "step": int(folder.name.split("-")[1]), "eval_loss": round(loss, 4)})
    load_trained_weights(model, run_dir)
    final = evaluate_loss(model, encoded, 4, pad_id, autocast)
    rows.append({"checkpoint": "final", "step": None, "eval_loss": round(final, 4)})
    return rows


def evaluate_run(
    run: str | Path,
    split: str | None = None,
    n: int = 5,
    passes: tuple[str, ...] = PASSES,
    base: str | None = None,
    all_checkpoints: bool = False,
    forgetting_threshold: float = 0.10,
    max_new_tokens: int | None = None,
    show_examples: bool = False,
    seed: int = 0,
    progress: bool = True,
    keypoints: str | Path | None = None,
    judge: dict | None = None,
    engine: str = "transformers",
) -> dict:
    """Evaluate a run folder against its base and write RUN/informe/{metrics.json,index.html}.

    A LoRA run is one model in memory (the base is the adapter disabled); a full fine-tuning run loads its base
    beside it. `split`: "val", a JSONL file or afinar:NAME; None = the recipe's `evaluation.set`, else "val".
    `keypoints`: a side file of key points (see `afinar.data.formats.attach_keypoints`). `judge`: {"url", "model",
    "allow_remote"} of an OpenAI-compatible endpoint that also grades each answer (afinar.evaluate.judge).
    `engine`: who writes the answers — "transformers", "llama.cpp" (GGUF f16 of base and tuned: the same greedy
    answers, faster; afinar.evaluate.llamacpp) or "auto" (llama.cpp when installed; `afinar eval`'s default)."""
    import torch
    from tqdm.auto import tqdm

    started = time.time()
    ref = open_ref(run)
    if not ref.is_run or ref.recipe is None:
        raise AfinarError("V001", "afinar eval necesita la carpeta de una ejecución (adaptador LoRA + recipe.yaml).",
                          where=str(ref.path), hint="pasa runs/<nombre>, no la carpeta merged/")
    recipe = ref.recipe
    split = split or recipe.evaluation.set or "val"
    if judge:  # refused before anything is loaded: the data would leave the machine
        check_url(judge["url"], judge.get("allow_remote", False))
    unknown = [c for c in passes if c not in PASSES]
    if unknown or not passes:
        raise AfinarError("V005", f"pasada de generación desconocida: {', '.join(unknown)}", hint="greedy, sampled")
    requested, engine = engine, llamacpp_eval.choose_engine(engine, ref)
    examples, shippable = _examples(recipe, split, keypoints)
    show_text = show_examples or shippable
    if progress:  # the work, said before it starts; the bars below give the time left
        asked = min(n, len(examples))
        longest = max_new_tokens or recipe.generation.max_new_tokens
        print(f"Evaluación: la pérdida en {len(examples)} preguntas apartadas y en el español general (base y afinado), "
              f"y {2 * asked * len(passes)} respuestas ({asked} preguntas × {len(passes)} pasada(s) × base y afinado) "
              f"de hasta {longest} tokens con {engine}.", flush=True)
    # Before anything is generated a person can see that it moves: loading, the two losses, then the answers.
    phases = tqdm(total=3, desc="Preparando la evaluación", unit="fase", disable=not progress, dynamic_ncols=True)

    if base:
        ref.base_path = base
    # QLoRA: the adapter on the NF4 base it trained on, dequantized (runs.load_base_as_trained), as merge and export.
    model, tokenizer = load_ref(ref, dtype=torch.float32)
    model.eval()
    base_model = None
    if ref.standalone:  # method: full
        base_model = load_model(ref.base_path, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id
    phases.update(1)

    # --- losses: held-out answers and the general-Spanish forgetting guard -------------------------
    encoded, _, _ = encode_examples(tokenizer, examples, recipe.data.system_prompt, recipe.data.max_length, "drop")
    info = _run_info(ref.path)
    autocast = _training_autocast(info)
    # The validation split's pair was measured by the training itself (about a quarter of the evaluation's time on
    # a CPU): reused unless another base is asked for. Other questions: the base's side is measured once per base,
    # questions and precision (every run evaluated on the recipe's evaluation set shares it).
    known = _training_losses(Path(ref.path), info) if split == "val" and not base else None
    loss = known or _loss_pair(model, encoded, pad, autocast, base_model, remember=True)
    phases.update(1)
    general = load_examples(shipped_dataset(GENERAL_SET))
    general_encoded, _, _ = encode_examples(tokenizer, general, GENERAL_SYSTEM, 1024, "drop")
    forgetting = _loss_pair(model, general_encoded, pad, autocast, base_model, remember=True)
    ratio = forgetting["tuned"] / forgetting["base"] if forgetting["base"] else None
    forgetting.update(
        ratio=round(ratio, 4) if ratio else None,
        threshold=forgetting_threshold,
        flagged=bool(ratio and ratio > 1 + forgetting_threshold),
        examples=len(general_encoded),
    )
    checkpoints = _checkpoint_losses(model, ref.path, encoded, pad, autocast) if all_checkpoints else []
    phases.update(1)
    phases.close()

    # --- the contrast: same prompts, base vs tuned, greedy and with the recipe's sampling ----------
    settings = {
        "greedy": recipe.generation.model_copy(update={"temperature": 0.0}),
        "sampled": recipe.generation,
    }
    if max_new_tokens:
        settings = {k: v.model_copy(update={"max_new_tokens": max_new_tokens}) for k, v in settings.items()}
    # An example that may hold personal data (a DNI, a patient's name…) counts in the losses above (numbers only)
    # but is never answered here: its question, its reference and both answers would land in metrics.json, the
    # report and the studio's blind rating.
    flagged = [has_pii(e.messages) for e in examples]
    private = sum(flagged)
    answerable = [e for e, personal in zip(examples, flagged) if not personal]
    # Questions with key points first: they are the ones whose answers can be called right or wrong.
    chosen = sorted(answerable, key=lambda e: not (e.claves or e.peligros))[:n]
    if private and progress:
        print(f"{private} pregunta(s) apartada(s) con posibles datos personales: cuentan en la pérdida, pero no "
              "se generan respuestas para ellas (su texto no se guarda en ningún informe).", flush=True)
    prompts, pairs = held_out_turns(chosen, recipe.data.system_prompt)  # pairs: (question, reference) of each
    samples = []
    for example, (question, reference) in zip(chosen, pairs):
        sample = {"where": example.where, "outputs": {name: {} for name in passes}}
        if show_text:
            sample.update(question=question, reference=reference)
            if example.claves or example.peligros:
                sample.update(claves=example.claves or [], peligros=example.peligros or [])
        samples.append(sample)
    settings = {name: settings[name] for name in passes}
    answers = None
    if engine == "llama.cpp" and prompts:
        try:
            answers = _llamacpp_answers(ref, model, tokenizer, prompts, settings, seed, progress)
        except AfinarError as exc:
            # auto: a model llama.cpp's converter does not take (its architecture, its pre-tokenizer) is answered
            # by transformers, as before; asked for by name, the converter's error stands.
            if requested != "auto" or exc.code not in llamacpp_eval.NOT_CONVERTIBLE:
                raise
            if progress:
                print(f"llama.cpp no puede con este modelo ({exc.code}): las respuestas, con transformers.", flush=True)
            model, tokenizer = load_ref(ref, dtype=torch.float32)  # the merge may have begun: the model as it was
            model.eval()
    # Counted in generation steps (one token for every answer of a batch), not in answers: the base and tuned answers
    # to a few questions are one batch, and a bar counted in answers would sit at 0 until the very end.
    batches = -(-2 * len(chosen) // 8) if _mixed_batches(model, base_model) else 2 * -(-len(chosen) // 8)
    bar = GenerationProgress(batches, passes, settings, progress and answers is None)
    for name in passes:
        gen: GenerationSection = settings[name]
        bar.max_new = gen.max_new_tokens
        paired = answers[name] if answers is not None else _generate_pairs(
            model, base_model, tokenizer, prompts, gen, seed if name == "sampled" else None, bar.batch_done,
            stops_of(tokenizer, ref.path), bar.step)
        for k, side in enumerate(SIDES):
            replies = paired[k :: len(SIDES)]
            for example, sample, (question, reference), reply in zip(chosen, samples, pairs, replies):
                row = {"text": reply.text, **measure(reply.text, reference, reply.stopped, reply.completion_tokens)}
                if example.claves or example.peligros:
                    score = score_answer(reply.text, example.claves, example.peligros)
                    row["keypoints"] = {**score.as_dict(), "category": score.category}
                    if not show_text:  # the key points are part of the user's row (a case's drugs and doses…)
                        row["keypoints"].update(missing=[], dangers=[], missing_count=len(score.missing),
                                                dangers_count=len(score.dangers))
                row["findings"] = {
                    check: [f.render() for f in CHECKS[check](question, reference, reply.text)] for check in recipe.checks
                }
                sample["outputs"][name][side] = row
    bar.close()

    generation = {
        name: {side: _summary([s["outputs"][name][side] for s in samples]) for side in SIDES} for name in passes
    }
    check_pass = "greedy" if "greedy" in passes else passes[0]
    checks, checks_detail = {}, {}
    for check in recipe.checks:
        rates = {}
        for side in SIDES:
            rows = [s["outputs"][check_pass][side]["findings"][check] for s in samples]
            rates[side] = round(sum(1 for f in rows if not f) / len(rows), 4) if rows else None
        checks[check] = rates["tuned"]
        failures = [
            {"where": s["where"], "findings": s["outputs"][check_pass]["tuned"]["findings"][check]}
            for s in samples
            if s["outputs"][check_pass]["tuned"]["findings"][check]
        ]
        checks_detail[check] = {"pass": check_pass, "base": rates["base"], "tuned": rates["tuned"], "failures": failures}

    correctness = _correctness(samples, check_pass)
    judged = _judge(samples, chosen, pairs, judge, check_pass, progress) if judge else None

    best = min((c for c in checkpoints if c["eval_loss"] is not None), key=lambda c: c["eval_loss"], default=None)
    run_dir = Path(ref.path)
    metrics = {
        "schema": SCHEMA,
        "run": str(run_dir),
        "recipe": recipe.name,
        "base": ref.base_path,
        "split": split,
        "examples": len(encoded),
        "generated": len(samples),
        "requested": n,
        "withheld_personal": private,
        "verdict": _verdict(correctness),
        "correctness": correctness,
        "judge": judged,
        "loss": loss,
        "generation": generation,
        "checks": checks,
        "checks_detail": checks_detail,
        "forgetting": forgetting,
        "checkpoints": checkpoints,
        "best_checkpoint": best,
        "samples": samples,
        "shows_prompts": show_text,
        "meta": {**_meta(run_dir, time.time() - started),
                 "engine": "llama.cpp (GGUF f16)" if answers is not None else "transformers"},
    }
    write_report(run_dir / REPORT_DIR, metrics)
    return metrics


def eval_command(run: str, gates: list[str] | None = None, judge_url: str | None = None, judge_model: str | None = None,
                 allow_remote: bool = False, engine: str = "auto", **options) -> int:
    """`afinar eval RUN`: evaluate_run (the other options are its parameters), the summary, then the gates. Exit 1
    when the tuned model gives more dangerous answers than its base or a condition of `gates` fails
    (report.check_gates); the command line's engine is "auto"."""
    from afinar.evaluate.report import check_gates, print_summary

    if bool(judge_url) != bool(judge_model):
        raise AfinarError("J004", "el juez necesita la URL y el modelo: --juez URL --juez-modelo NOMBRE")
    judge = {"url": judge_url, "model": judge_model, "allow_remote": allow_remote} if judge_url else None
    metrics = evaluate_run(run, judge=judge, engine=engine, **options)
    print_summary(metrics)
    print(f"Informe: {metrics['run']}/{REPORT_DIR}/index.html (y metrics.json)")
    # Built-in gate: a tuned model that gives more dangerous answers than its base never passes.
    failed = int(metrics["verdict"]["more_dangerous"])
    if failed:
        print("✗ el afinado da más respuestas peligrosas que el modelo base (sale con 1)")
    for gate, passed, value in check_gates(metrics, gates or []):
        print(f"{'✓' if passed else '✗'} {gate} (valor: {value})")
        failed += not passed
    return 1 if failed else 0


def eval_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="carpeta de la ejecución (runs/<nombre>)")
    p.add_argument("--split",
                   help="'val' (la validación de la receta), un archivo .jsonl o un dataset incluido "
                   "(afinar:primeros_auxilios_evaluacion); por defecto evaluation.set de la receta, o 'val'")
    p.add_argument("--claves", dest="keypoints", metavar="ARCHIVO",
                   help="claves y peligros aparte: {\"linea\": N, \"claves\": [[…]], \"peligros\": […]} "
                   "por línea (por defecto DATOS.claves.jsonl si existe)")
    p.add_argument("--juez", dest="judge_url", metavar="URL",
                   help="servidor compatible con OpenAI (Ollama, llama.cpp, afinar serve) que "
                   "también valora cada respuesta, p. ej. http://127.0.0.1:11434/v1")
    p.add_argument("--juez-modelo", dest="judge_model", metavar="NOMBRE",
                   help="modelo del juez (p. ej. qwen2.5:7b en Ollama)")
    p.add_argument("--permitir-remoto", dest="allow_remote", action="store_true",
                   help="deja usar un juez que no está en este equipo: preguntas y respuestas SALEN del equipo")
    p.add_argument("--n", type=int,
                   help="preguntas a generar con cada modelo (por defecto 5)")
    p.add_argument("--base",
                   help="modelo base sobre el que cargar el adaptador (por defecto el del entrenamiento)")
    p.add_argument("--todos-los-checkpoints", dest="all_checkpoints", action="store_true",
                   help="evalúa cada checkpoint guardado y nombra el mejor")
    p.add_argument("--umbral-olvido", dest="forgetting_threshold", type=float,
                   help="subida máxima de la pérdida en español general (0.10 = 10 %%)")
    p.add_argument("--exigir", dest="gates", action="append", metavar="CONDICIÓN",
                   help='p. ej. "checks.epicrisis>=0.8"; sale con 1 si no se cumple')
    p.add_argument("--solo-greedy", dest="passes", action="store_const", const=("greedy",),
                   help="sin la pasada con el muestreo de la receta (la mitad de tiempo)")
    p.add_argument("--motor", dest="engine", choices=["auto", "transformers", "llama.cpp"],
                   help="quién escribe las respuestas: llama.cpp (GGUF f16 de base y afinado: las mismas respuestas "
                        "voraces, ~3× más rápido) si está instalado, si no transformers")
    p.add_argument("--max-new-tokens", type=int,
                   help="tope de tokens por respuesta (por defecto el de la receta)")
    p.add_argument("--mostrar-ejemplos", dest="show_examples", action="store_true",
                   help="muestra preguntas y referencias de tus datos en el informe")
    p.add_argument("--sin-progreso", dest="progress", action="store_false")


def _correctness(samples: list[dict], pass_name: str) -> dict | None:
    """Base vs tuned on the answers that have key points or dangers: mean share of key points covered, complete
    answers (every key point), dangerous answers (a danger said unnegated). None when no answer can be scored."""
    scored = [s["outputs"][pass_name] for s in samples if "keypoints" in s["outputs"][pass_name]["base"]]
    if not scored:
        return None
    result = {"pass": pass_name, "answers": len(scored)}
    for side in SIDES:
        points = [o[side]["keypoints"] for o in scored]
        with_claves = [k for k in points if k["covered"] is not None]
        complete = sum(1 for k in with_claves if k["complete"])
        dangerous = sum(1 for k in points if k["dangerous"])
        result[side] = {
            "covered": _mean(k["covered"] for k in with_claves),
            "complete": round(complete / len(with_claves), 4) if with_claves else None,
            "dangerous": round(dangerous / len(points), 4),
            "complete_count": complete,
            "dangerous_count": dangerous,
            "with_keypoints": len(with_claves),
        }
    return result


# A change in the share of key points covered smaller than this is within what a handful of questions can tell.
VERDICT_MARGIN = 0.05


def _verdict(correctness: dict | None) -> dict:
    """Better, the same or worse than the base, decided by correctness and danger only (loss, ending and chrF
    reward a model that repeats the data's boilerplate). More dangerous answers than the base is always worse."""
    if not correctness:
        return {"value": "sin_medida", "more_dangerous": False, "reliable": False,
                "text": "Estas preguntas no tienen claves: afinar no puede decir si las respuestas son correctas, solo "
                        "cómo están escritas. Añade «claves» y «peligros» a tus preguntas de evaluación."}
    base, tuned, answers = correctness["base"], correctness["tuned"], correctness["answers"]
    more_dangerous = tuned["dangerous_count"] > base["dangerous_count"]

    def pct(value):
        return "—" if value is None else f"{100 * value:.0f} %"

    facts = (f"puntos clave cubiertos {pct(tuned['covered'])} (base {pct(base['covered'])}), respuestas completas "
             f"{tuned['complete_count']} de {tuned['with_keypoints']} (base {base['complete_count']}), peligrosas "
             f"{tuned['dangerous_count']} de {answers} (base {base['dangerous_count']})")
    delta = (tuned["covered"] or 0) - (base["covered"] or 0)
    if more_dangerous:
        value, head = "peor", "PEOR que el modelo de partida: da más respuestas peligrosas"
    elif delta >= VERDICT_MARGIN or (delta > -VERDICT_MARGIN and tuned["complete_count"] > base["complete_count"]):
        value, head = "mejor", "Mejor que el modelo de partida"
        if not tuned["complete_count"]:  # more key points in answers that are all still wrong: not «better» for a nurse
            head = "Dice más puntos clave que el modelo de partida, pero ninguna respuesta está completa"
    elif delta <= -VERDICT_MARGIN or tuned["complete_count"] < base["complete_count"]:
        value, head = "peor", "Peor que el modelo de partida"
    else:
        value, head = "igual", "Igual que el modelo de partida"
    text = f"{head}: {facts}."
    reliable = tuned["covered"] is not None and tuned["covered"] >= 0.5 and not tuned["dangerous_count"]
    if not reliable:
        text += (" Aún no es fiable: " + ("da consejos peligrosos" if tuned["dangerous_count"] else
                 "le falta más de la mitad de lo que una respuesta correcta debe decir") + ".")
    return {"value": value, "more_dangerous": more_dangerous, "reliable": reliable, "text": text}


def _judge(samples, chosen, pairs, judge: dict, pass_name: str, progress: bool) -> dict:
    """Every answer of `pass_name` graded by an OpenAI-compatible model too; its verdict lands beside the key points'
    and the summary says how often they agree."""
    items, rows = [], []
    for example, sample, (question, reference) in zip(chosen, samples, pairs):
        for side in SIDES:
            row = sample["outputs"][pass_name][side]
            items.append({"question": question, "reference": reference, "answer": row["text"],
                          "claves": example.claves or [], "peligros": example.peligros or []})
            rows.append(row)
    # 30 s and one retry: a hung server costs minutes, not the quarter of an hour of the client's defaults; after
    # three failures in a row the judge is left out and the note says so.
    result = judge_answers(items, judge["url"], judge["model"], allow_remote=judge.get("allow_remote", False),
                           timeout=30.0, retries=1, progress=progress)
    for row, verdict in zip(rows, result.verdicts):
        row["judge"] = verdict
    categories = [row.get("keypoints", {}).get("category", "sin claves") for row in rows]
    return {**result.summary(), "remote": bool(judge.get("allow_remote")),
            "agreement": agreement([v["verdict"] for v in result.verdicts], categories)}


class GenerationProgress:
    """The «Generando» bar in generation steps: each batch adds a step per token it generates and, when it ends, the
    steps it did not need (its answers stopped before max_new_tokens). The ETA is therefore an upper bound."""

    def __init__(self, batches_per_pass: int, passes, settings: dict, progress: bool):
        from tqdm.auto import tqdm

        total = sum(batches_per_pass * settings[name].max_new_tokens for name in passes)
        self.bar = tqdm(total=total, desc="Generando respuestas", unit="paso", disable=not progress, dynamic_ncols=True)
        self.in_batch = 0
        self.max_new = max(settings[name].max_new_tokens for name in passes)

    def step(self) -> None:
        self.in_batch += 1
        self.bar.update(1)

    def batch_done(self, answers: int) -> None:
        left = self.max_new - self.in_batch
        if left > 0:
            self.bar.update(left)
        self.in_batch = 0

    def close(self) -> None:
        self.bar.close()


def _llamacpp_answers(ref, model, tokenizer, prompts, settings: dict, seed: int, progress: bool) -> dict:
    """pass → [base, tuned] × prompt through llama.cpp: both models converted to GGUF f16 first (the base cached)."""
    import tempfile

    from tqdm.auto import tqdm

    stops = stops_of(tokenizer, ref.path)
    total = 2 * len(prompts) * len(settings)
    if progress:
        print(f"Respuestas con llama.cpp: {len(prompts)} preguntas × {len(settings)} pasada(s) × base y afinado = "
              f"{total} respuestas de hasta {max(g.max_new_tokens for g in settings.values())} tokens; antes, los "
              "dos modelos a GGUF (el base, una sola vez).", flush=True)
    with tempfile.TemporaryDirectory(prefix="afinar-eval-") as folder:
        base = llamacpp_eval.base_gguf(resolve_base(ref.base_path))
        # The run's end of turn first, as `afinar merge` writes it (not the unordered set of every stop id).
        eos = folder_format(ref.path, tokenizer).eos_token_ids
        tuned = llamacpp_eval.tuned_gguf(model, tokenizer, eos, Path(folder) / "tuned-f16.gguf")
        files = {"base": base, "tuned": tuned}
        bar = tqdm(total=total, desc="Generando respuestas (llama.cpp)", unit="respuesta", disable=not progress,
                   dynamic_ncols=True)
        try:
            return llamacpp_eval.answer_all(files, tokenizer, prompts, settings, seed, stops, on_answer=bar.update)
        finally:
            bar.close()


def _generate_pairs(model, base_model, tokenizer, prompts, gen, seed, on_batch, stops=None, on_step=None) -> list:
    """Replies [base, tuned] × prompt, in that order, batched: on a CPU a batch of answers costs little more than one.

    A plain LoRA run puts the base and tuned answers to the same question in one batch (PEFT's mixed-adapter batches:
    "__base__" rows skip the LoRA): one generation instead of two, and the tuned answers' steps ride along with the
    base's (measured: README, `afinar eval`). PEFT refuses mixed batches with DoRA ("Cannot pass `adapter_names`
    when DoRA is enabled"), and a full run's base is another model: there, each side generates on its own."""
    if _mixed_batches(model, base_model):
        adapters = [BASE_ROWS if side == "base" else model.active_adapter for side in SIDES] * len(prompts)
        return generate_many(model, tokenizer, [p for p in prompts for _ in SIDES], gen, seed=seed,
                             on_batch=on_batch, adapter_names=adapters, stops=stops, on_step=on_step)
    base_side, as_base = _as_base(model, base_model)
    with as_base:
        base = generate_many(base_side, tokenizer, prompts, gen, seed=seed, on_batch=on_batch, stops=stops,
                             on_step=on_step)
    tuned = generate_many(model, tokenizer, prompts, gen, seed=seed, on_batch=on_batch, stops=stops, on_step=on_step)
    return [reply for pair in zip(base, tuned) for reply in pair]


def _mixed_batches(model, base_model) -> bool:
    """Whether base and tuned answers share batches (a plain LoRA run; not DoRA, not a full run's second model)."""
    return base_model is None and not _uses_dora(model)


def _uses_dora(model) -> bool:
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    return bool(getattr(config, "use_dora", False))


def _meta(run_dir: Path, seconds: float) -> dict:
    def read(name):
        path = run_dir / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    return {
        "eval_seconds": round(seconds, 1),
        "run_info": read(RUN_INFO),
        "data_fingerprint": read(DATA_FINGERPRINT),
        "recipe_yaml": (run_dir / RECIPE).read_text(encoding="utf-8") if (run_dir / RECIPE).is_file() else None,
    }
