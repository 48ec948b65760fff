"""What the studio writes for people rather than programs: the expert's blind A/B rating of base vs tuned answers
(saved with the run) and the printable summary with a data card and a model card in Spanish (HTML → print/PDF)."""
from __future__ import annotations

import hashlib
import html
import json
import random
import time
from pathlib import Path

from afinar import __version__
from afinar.atomic import atomic_write_text
from afinar.errors import AfinarError
from afinar.htmlpage import page, table
from afinar.runs import (
    DATA_FINGERPRINT,
    EVAL_DIR,
    EXPORT_DIR,
    EXPORT_SUMMARY,
    RECIPE,
    RUN_INFO,
)
from afinar.studio.settings import EMBEDDED_BASES
from afinar.studio.workspace import RATINGS, read_json
from afinar.training import read_metrics

CHOICES = ("a", "b", "igual")

# --- blind A/B rating -----------------------------------------------------------------------------------------------


def _evaluation(run_dir: Path) -> dict:
    metrics = read_json(run_dir / EVAL_DIR / "metrics.json")
    if not metrics:
        raise AfinarError("E030", "esta ejecución aún no tiene evaluación.", where=run_dir.name,
                          hint="pulsa «Evaluar» primero (compara el base y el afinado en preguntas apartadas)")
    return metrics


def _ratings(run_dir: Path, metrics: dict) -> dict:
    """The saved rating for this evaluation; a new one (with a fresh random order of A and B for each question) when
    there is none or the evaluation was run again since."""
    saved = read_json(run_dir / RATINGS)
    evaluated = metrics.get("meta", {}).get("finished") or (run_dir / EVAL_DIR / "metrics.json").stat().st_mtime
    if saved.get("evaluacion") == evaluated and len(saved.get("orden", [])) == len(metrics["samples"]):
        return saved
    # The same order on every reload before the first vote (nothing is written on GET): drawn from the evaluation's
    # own bytes, which the page never receives.
    seed = hashlib.sha256((run_dir / EVAL_DIR / "metrics.json").read_bytes()).hexdigest()
    order = random.Random(seed).choices(["afinado", "base"], k=len(metrics["samples"]))
    return {"evaluacion": evaluated, "orden": order, "elecciones": {}, "creada": time.time()}


def blind_pairs(run_dir: Path) -> dict:
    """The questions with two unnamed answers (A, B): which model wrote which is kept here, not in the page, until every
    question is rated."""
    metrics = _evaluation(run_dir)
    rating = _ratings(run_dir, metrics)
    pass_name = "greedy" if all("greedy" in s["outputs"] for s in metrics["samples"]) else None
    pairs = []
    for index, (sample, first) in enumerate(zip(metrics["samples"], rating["orden"])):
        outputs = sample["outputs"][pass_name or next(iter(sample["outputs"]))]
        tuned, base = outputs["tuned"]["text"], outputs["base"]["text"]
        a, b = (tuned, base) if first == "afinado" else (base, tuned)
        pairs.append({"indice": index, "pregunta": sample.get("question"), "a": a, "b": b,
                      "eleccion": rating["elecciones"].get(str(index))})
    done = len(rating["elecciones"]) == len(pairs) and pairs
    return {"pares": pairs, "preguntas_visibles": bool(metrics.get("shows_prompts")),
            "resultado": tally(rating) if done else None}


def rate(run_dir: Path, index: int, choice: str) -> dict:
    if choice not in CHOICES:
        raise AfinarError("E031", f"elección no válida: {choice!r}", hint="a, b o igual")
    metrics = _evaluation(run_dir)
    rating = _ratings(run_dir, metrics)
    if not 0 <= index < len(rating["orden"]):
        raise AfinarError("E032", f"no hay pregunta {index} en esta evaluación.")
    rating["elecciones"][str(index)] = choice
    rating["actualizada"] = time.time()
    atomic_write_text(run_dir / RATINGS, json.dumps(rating, indent=2, ensure_ascii=False))
    complete = len(rating["elecciones"]) == len(rating["orden"])
    return {"valoradas": len(rating["elecciones"]), "total": len(rating["orden"]),
            "resultado": tally(rating) if complete else None}


def tally(rating: dict) -> dict:
    """Choices of A/B turned back into models: how often the expert preferred the tuned answer."""
    counts = {"afinado": 0, "base": 0, "igual": 0}
    for index, choice in rating["elecciones"].items():
        first = rating["orden"][int(index)]
        if choice == "igual":
            counts["igual"] += 1
        else:
            counts[first if choice == "a" else ("base" if first == "afinado" else "afinado")] += 1
    total = sum(counts.values())
    return {**counts, "total": total, "texto": f"Preferiste la respuesta del afinado en {counts['afinado']} de {total} "
            f"preguntas, la del modelo de partida en {counts['base']} y te parecieron iguales en {counts['igual']}."}


def saved_tally(run_dir: Path) -> dict | None:
    rating = read_json(run_dir / RATINGS)
    return tally(rating) if rating.get("elecciones") else None


# --- the printable summary ------------------------------------------------------------------------------------------

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:52em;margin:2em auto;padding:0 1em;color:#111}
h1{font-size:1.6em}h2{border-bottom:2px solid #333;margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #999;padding:.25em .6em;text-align:left;vertical-align:top}.nota{background:#fff6d5;padding:.6em}
code{background:#eee;padding:0 .2em}.aviso{border:2px solid #a40000;padding:.6em;background:#fdeaea}@media print{button{display:none}body{margin:0}}"""


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}".replace(".", ",")
    return html.escape(str(value))


def summary_html(run_dir: Path, data_report: dict | None = None) -> str:
    """One page a course or an ethics committee can read: what data, what model, what the evaluation found, what
    it must not be used for. Numbers only: no row of the data."""
    import yaml

    info = read_json(run_dir / RUN_INFO)
    if not info:
        raise AfinarError("E033", "esta ejecución no terminó de entrenar: no hay resumen que imprimir.",
                          where=run_dir.name)
    recipe = yaml.safe_load((run_dir / RECIPE).read_text(encoding="utf-8")) if (run_dir / RECIPE).is_file() else {}
    fingerprint = read_json(run_dir / DATA_FINGERPRINT)
    evaluation = read_json(run_dir / EVAL_DIR / "metrics.json")
    exports = read_json(run_dir / EXPORT_DIR / EXPORT_SUMMARY).get("exports", {})
    rating = saved_tally(run_dir)
    metrics = read_metrics(run_dir)
    data, lora, train = recipe.get("data", {}), recipe.get("lora", {}), recipe.get("train", {})
    name = recipe.get("name", run_dir.name)
    parts = [f"<h1>Resumen de la ejecución «{html.escape(name)}»</h1>",
             (f"<p>Generado por afinar {__version__} el {time.strftime('%d/%m/%Y %H:%M')}. "
              "<button onclick='window.print()'>Imprimir o guardar como PDF</button></p>")]
    if recipe.get("description"):
        parts.append(f"<p><b>Propósito:</b> {html.escape(recipe['description'])}</p>")

    # --- data card
    files = fingerprint.get("files", {})
    parts.append("<h2>Tarjeta de datos</h2>")
    parts.append(table(["Archivo", "Ejemplos", "Huella del archivo (lo identifica sin mostrar su contenido)"],
                       [[Path(p).name, d.get("examples"), d.get("sha256", "")[:16] + "…"] for p, d in files.items()]))
    parts.append(table(["", "Valor"], [
        ["Ejemplos de entrenamiento", fingerprint.get("train_examples")],
        ["Ejemplos de validación (apartados, no se entrenan)", fingerprint.get("val_examples")],
        ["Formatos", ", ".join(f"{k}: {v}" for k, v in fingerprint.get("formats", {}).items())],
        ["Longitud máxima (tokens)", data.get("max_length")],
        ["Demasiado largos (descartados o recortados)",
         sum(fingerprint.get("length", {}).get(s, {}).get("too_long", 0) for s in ("train", "val"))],
    ]))
    if not data_report or "no_revisado" in data_report:  # never a clean result for a check that did not run
        why = (data_report or {}).get("no_revisado") or "no se pudo leer"
        parts.append(f"<p class=aviso><b>Revisión previa de los datos: NO SE PUDO HACER</b> ({html.escape(why)}). "
                     "No se sabe si hay datos personales, duplicados o fugas: revísalo en el paso «Datos» del estudio "
                     "o con <code>afinar inspect</code>.</p>")
    else:
        personal = data_report.get("personal_data", {})
        kinds = ", ".join(f"{k}: {v}" for k, v in personal.get("by_kind", {}).items())
        lines = personal.get("lines", personal.get("count", 0))
        parts.append(table(["Revisión previa de los datos", "Resultado"], [
            ["Líneas con posibles datos personales (correos, teléfonos, DNI, nombres…)",
             f"{lines}" + (f" ({kinds}); su texto no se muestra ni se evalúa" if lines else "")],
            ["Ejemplos repetidos exactamente (copias de otro)", data_report.get("duplicates", {}).get("exact", 0)],
            ["Preguntas que están a la vez en entrenamiento y en las apartadas", data_report.get("leakage", {}).get("exact", 0)],
            ["Proporción de texto que no parece español", _pct(data_report.get("language", {}).get("non_spanish_share"))],
        ]))
    parts.append("<p class=nota>Los datos no salen de este equipo: afinar entrena en local y este resumen no "
                 "contiene ningún ejemplo, solo recuentos y huellas.</p>")

    # --- model card
    parts.append("<h2>Tarjeta del modelo</h2>")
    template = info.get("chat_template", {})
    parts.append(table(["", "Valor"], [
        ["Modelo base", recipe.get("model", {}).get("base")],
        ["Método", "LoRA (adaptador pequeño sobre el base congelado)" if info.get("method", "lora") == "lora"
         else "ajuste completo"],
        ["LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, capas: {lora.get('target_modules')}"
         if info.get("method", "lora") == "lora" else "—"],
        ["Plantilla de conversación", template.get("name")],
        ["Pasos", f"{info.get('steps')}" + (" (detenido a petición: reanudable)" if info.get("stopped") else "")],
        ["Tasa de aprendizaje, épocas", f"{train.get('lr')}, {train.get('epochs')}"],
        ["Tiempo de entrenamiento", f"{_fmt(info.get('train_seconds', 0) / 60, 1)} min"],
        ["Equipo", f"{info.get('hardware', {}).get('device')} ({info.get('hardware', {}).get('precision')})"],
        ["Pérdida de entrenamiento final", _fmt(info.get("final_train_loss"))],
        ["Pérdida de validación final", _fmt(info.get("final_eval_loss"))],
        ["Mensaje de sistema", data.get("system_prompt")],
    ]))
    losses = [m["loss"] for m in metrics if "loss" in m]
    if losses:
        parts.append(_loss_svg(losses))

    # --- evaluation
    parts.append("<h2>Evaluación contra el modelo base</h2>")
    if evaluation:
        loss, forgetting = evaluation.get("loss", {}), evaluation.get("forgetting", {})
        greedy = evaluation.get("generation", {}).get("greedy") or next(iter(evaluation.get("generation", {}).values()), {})
        rows = [["Pérdida en preguntas apartadas (menos es mejor)", _fmt(loss.get("base")), _fmt(loss.get("tuned"))]]
        if greedy:
            rows += [["Respuestas que terminan solas", _pct(greedy["base"].get("stop_rate")), _pct(greedy["tuned"].get("stop_rate"))],
                     ["Repetición (menos es mejor)", _fmt(greedy["base"].get("repetition"), 2), _fmt(greedy["tuned"].get("repetition"), 2)],
                     ["Parecido a la respuesta de referencia (chrF)", _fmt(greedy["base"].get("chrf"), 3), _fmt(greedy["tuned"].get("chrf"), 3)]]
        for check, detail in evaluation.get("checks_detail", {}).items():
            rows.append([f"Comprobaciones «{check}» superadas", _pct(detail.get("base")), _pct(detail.get("tuned"))])
        parts.append(table(["", "Base", "Afinado"], rows))
        ratio = forgetting.get("ratio")
        parts.append(f"<p><b>Guardia contra el olvido</b> (español general): pérdida ×{_fmt(ratio, 2)} respecto al base "
                     f"— {'AVISO: ha olvidado español general' if forgetting.get('flagged') else 'sin olvido apreciable'}"
                     f" (umbral +{_pct(forgetting.get('threshold'))}).</p>")
        parts.append(f"<p>{evaluation.get('generated')} preguntas generadas con cada modelo, de {evaluation.get('examples')} "
                     "apartadas del entrenamiento.</p>")
    else:
        parts.append("<p>Sin evaluación todavía (paso «Evaluar» del estudio o <code>afinar eval</code>).</p>")
    parts.append("<h3>Valoración a ciegas de la persona experta</h3>")
    parts.append(f"<p>{html.escape(rating['texto'])}</p>" if rating else "<p>Sin valoración a ciegas.</p>")

    # --- use and limits
    base = recipe.get("model", {}).get("base") or ""
    if base in EMBEDDED_BASES:
        parts.append("<p class=aviso><b>No usar como consejo.</b> Este modelo parte del modelo incluido de 135 millones "
                     "de parámetros: aprende el estilo y el formato, no conocimiento fiable. Sus respuestas pueden ser "
                     "incorrectas o peligrosas aunque suenen bien.</p>")
    parts.append("<h2>Uso previsto y limitaciones</h2><ul>"
                 "<li>Uso educativo y de apoyo: <b>no sustituye el juicio de un profesional</b> ni la atención sanitaria.</li>"
                 "<li>Un modelo pequeño afinado con pocos ejemplos aprende el estilo y el formato de las respuestas, no "
                 "conocimiento fiable: puede inventar datos con seguridad aparente.</li>"
                 "<li>Solo se evaluó con las preguntas apartadas de estos datos; fuera de ese tema no hay garantías.</li>"
                 "<li>Revisa cada respuesta antes de usarla con personas.</li></ul>")
    if exports:
        parts.append("<h2>Exportaciones</h2>" + table(["Formato", "Archivo"], [[k, v.get("ruta")] for k, v in exports.items()]))
    parts.append("<h2>Cómo repetirlo</h2>"
                 f"<p><code>afinar train {html.escape(str(run_dir / RECIPE))} --output {html.escape(str(run_dir))}-bis</code>"
                 " (la receta guardada con la ejecución).</p>")
    return page(f"Resumen: {name}", CSS, parts)


def _pct(value) -> str:
    return "—" if value is None else f"{round(100 * value)} %"


def _loss_svg(losses: list[float]) -> str:
    """The training loss as a small inline SVG (prints without JavaScript)."""
    width, height = 600, 160
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    step = width / max(len(losses) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - (v - low) / span * (height - 10) - 5:.1f}" for i, v in enumerate(losses))
    return (f"<figure><svg viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img' "
            f"aria-label='Pérdida de entrenamiento de {_fmt(losses[0])} a {_fmt(losses[-1])}'>"
            f"<polyline fill='none' stroke='#1f5fbf' stroke-width='2' points='{points}'/></svg>"
            f"<figcaption>Pérdida de entrenamiento por paso: {_fmt(losses[0])} → {_fmt(losses[-1])}</figcaption></figure>")
