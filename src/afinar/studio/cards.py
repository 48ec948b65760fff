"""What the studio writes for people rather than programs: the expert's blind A/B rating of base vs tuned answers
and her rating of each answer (correcta / incompleta / incorrecta / peligrosa), both saved with the run, and the
printable summary with a data card and a model card in Spanish (HTML → print/PDF)."""
from __future__ import annotations

import hashlib
import html
import json
import random
import re
import threading
import time
from pathlib import Path

from afinar import __version__
from afinar.atomic import atomic_write_text
from afinar.data.duplicates import fold
from afinar.errors import AfinarError
from afinar.evaluate.report import verdict_tone, write_report
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
HUMAN_RATINGS = "valoraciones.json"  # the expert's rating of each answer: beside the report, which `afinar eval` rewrites
VERDICTS = ("correcta", "incompleta", "incorrecta", "peligrosa")
MAX_NOTE = 500
MODEL_WORDS = {"base": "base", "tuned": "afinado"}  # metrics' side → the word the page and the export use
_writing = threading.Lock()  # one read-modify-write of a run's rating files at a time (requests run in threads)

# --- blind A/B rating -----------------------------------------------------------------------------------------------


def _evaluation(run_dir: Path) -> dict:
    metrics = read_json(run_dir / EVAL_DIR / "metrics.json")
    if not metrics:
        raise AfinarError("E030", "esta ejecución aún no tiene evaluación.", where=run_dir.name,
                          hint="pulsa «Evaluar» primero (compara el base y el afinado en preguntas apartadas)")
    return metrics


def _evaluation_id(metrics: dict) -> str:
    """Which evaluation a blind rating belongs to: its answers (and when it finished, if it says). Not the file's time
    or bytes: the studio rewrites metrics.json when she rates an answer (the summary of her ratings goes in it)."""
    own = json.dumps([metrics.get("meta", {}).get("finished"), metrics["samples"]], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(own.encode("utf-8")).hexdigest()


def _ratings(run_dir: Path, metrics: dict) -> dict:
    """The saved rating for this evaluation; a new one (with a fresh random order of A and B for each question) when
    there is none or the evaluation was run again since (other answers)."""
    saved = read_json(run_dir / RATINGS)
    evaluated = _evaluation_id(metrics)
    # Saved by an earlier studio: named by the evaluation's end time, or by its file's time when it did not say.
    legacy = metrics.get("meta", {}).get("finished") or (run_dir / EVAL_DIR / "metrics.json").stat().st_mtime
    if saved.get("evaluacion") in (evaluated, legacy) and len(saved.get("orden", [])) == len(metrics["samples"]):
        return {**saved, "evaluacion": evaluated}
    # The same order on every reload before the first vote (nothing is written on GET): drawn from the evaluation's
    # own samples, with what the page never receives (where each came from, token counts).
    order = random.Random(evaluated).choices(["afinado", "base"], k=len(metrics["samples"]))
    return {"evaluacion": evaluated, "orden": order, "elecciones": {}, "creada": time.time()}


def blind_pairs(run_dir: Path) -> dict:
    """The questions with two unnamed answers (A, B): which model wrote which is kept here, not in the page, until every
    question is rated."""
    metrics = _evaluation(run_dir)
    rating = _ratings(run_dir, metrics)
    saved = _human_index(run_dir)
    pairs = []
    for index, (sample, first) in enumerate(zip(metrics["samples"], rating["orden"])):
        outputs = _outputs(sample)
        letters = _letters(first)
        chosen = rating["elecciones"].get(str(index))
        pairs.append({"indice": index, "pregunta": sample.get("question"),
                      "a": outputs[letters["a"]]["text"], "b": outputs[letters["b"]]["text"], "eleccion": chosen,
                      # What afinar found in each answer only once she has chosen: it must not sway the choice.
                      "claves": {k: _keypoints_view(outputs[side]) for k, side in letters.items()} if chosen else None,
                      "valoraciones": {k: _saved_rating(saved, sample, index, side, outputs[side]["text"])
                                       for k, side in letters.items()}})
    done = len(rating["elecciones"]) == len(pairs) and pairs
    return {"pares": pairs, "preguntas_visibles": bool(metrics.get("shows_prompts")),
            "resultado": tally(rating) if done else None}


def rate(run_dir: Path, index: int, choice: str) -> dict:
    if choice not in CHOICES:
        raise AfinarError("E031", f"elección no válida: {choice!r}", hint="a, b o igual")
    metrics = _evaluation(run_dir)
    with _writing:
        rating = _ratings(run_dir, metrics)
        if not 0 <= index < len(rating["orden"]):
            raise AfinarError("E032", f"no hay pregunta {index} en esta evaluación.")
        rating["elecciones"][str(index)] = choice
        rating["actualizada"] = time.time()
        atomic_write_text(run_dir / RATINGS, json.dumps(rating, indent=2, ensure_ascii=False))
    complete = len(rating["elecciones"]) == len(rating["orden"])
    outputs, letters = _outputs(metrics["samples"][index]), _letters(rating["orden"][index])
    return {"valoradas": len(rating["elecciones"]), "total": len(rating["orden"]),
            "resultado": tally(rating) if complete else None,
            "claves": {k: _keypoints_view(outputs[side]) for k, side in letters.items()}}


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


# --- the expert's rating of each answer -----------------------------------------------------------------------------


def _pass_of(sample: dict) -> str:
    """The pass whose answers are rated: greedy (the one `afinar eval` scores key points on), else the first."""
    return "greedy" if "greedy" in sample["outputs"] else next(iter(sample["outputs"]))


def _outputs(sample: dict) -> dict:
    return sample["outputs"][_pass_of(sample)]


def _letters(first: str) -> dict:
    """A and B of a blind pair → the metrics' sides ("afinado" first: A is the tuned answer)."""
    return {"a": "tuned", "b": "base"} if first == "afinado" else {"a": "base", "b": "tuned"}


def _keypoints_view(row: dict) -> dict | None:
    """What afinar found in one answer, in the page's words: None when its example has no key points nor dangers."""
    found = row.get("keypoints")
    if not found:
        return None
    judge = row.get("judge")
    return {"categoria": found.get("category"), "cubiertas": found.get("covered"), "completa": found.get("complete"),
            "faltan": list(found.get("missing") or []), "peligros": list(found.get("dangers") or []),
            # counts only when the evaluation did not keep the texts (the key points are part of the user's rows)
            "faltan_ocultas": found.get("missing_count", 0) if not found.get("missing") else 0,
            "peligros_ocultos": found.get("dangers_count", 0) if not found.get("dangers") else 0,
            "juez": {"veredicto": judge.get("verdict"), "motivo": judge.get("reason")} if judge else None}


def answer_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _where(sample: dict, index: int) -> str:
    return sample.get("where") or f"#{index + 1}"


def _human_entries(run_dir: Path) -> list[dict]:
    entries = read_json(run_dir / HUMAN_RATINGS).get("respuestas", [])
    return [e for e in entries if isinstance(e, dict) and e.get("valoracion") in VERDICTS]


def _human_index(run_dir: Path) -> dict:
    """Saved ratings by (where, side, sha256 of the answer): a new evaluation with other answers inherits none."""
    return {(e.get("donde"), e.get("modelo"), e.get("sha256")): e for e in _human_entries(run_dir)}


def _saved_rating(saved: dict, sample: dict, index: int, side: str, text: str) -> dict | None:
    entry = saved.get((_where(sample, index), side, answer_digest(text)))
    return {"valoracion": entry["valoracion"], "nota": entry.get("nota", "")} if entry else None


def human_summary(run_dir: Path, metrics: dict | None = None) -> dict | None:
    """`metrics["human_ratings"]`: how many answers of this evaluation she rated, and how, per model (only ratings of
    the answers this evaluation holds). None before the first rating."""
    metrics = metrics if metrics is not None else read_json(run_dir / EVAL_DIR / "metrics.json")
    saved = _human_index(run_dir)
    if not saved or not metrics.get("samples"):
        return None
    counts = {side: dict.fromkeys(VERDICTS, 0) for side in MODEL_WORDS}
    rated = 0
    for index, sample in enumerate(metrics["samples"]):
        outputs = _outputs(sample)
        for side in MODEL_WORDS:
            entry = _saved_rating(saved, sample, index, side, outputs[side]["text"])
            if entry:
                counts[side][entry["valoracion"]] += 1
                rated += 1
    return {"rated": rated, **counts} if rated else None


def rate_answer(run_dir: Path, index: int, which: str, verdict: str, note: str = "") -> dict:
    """Saves her rating of one answer (the tuned or base one, or A/B of a blind pair: the hidden order says which),
    then updates `human_ratings` in metrics.json and re-renders the report."""
    if verdict not in VERDICTS:
        raise AfinarError("E037", f"valoración no válida: «{str(verdict)[:40]}».",
                          hint="elige correcta, incompleta, incorrecta o peligrosa")
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise AfinarError("E037", f"la nota tiene {len(note)} caracteres y caben {MAX_NOTE}.", hint="acórtala")
    if which not in ("a", "b", "base", "afinado"):
        raise AfinarError("E037", f"respuesta no válida: «{str(which)[:40]}».", hint="a, b, base o afinado")
    with _writing:
        metrics = _evaluation(run_dir)
        if not 0 <= index < len(metrics["samples"]):
            raise AfinarError("E032", f"no hay pregunta {index} en esta evaluación.")
        sample = metrics["samples"][index]
        blind = _ratings(run_dir, metrics)
        if read_json(run_dir / RATINGS).get("evaluacion") not in (None, blind["evaluacion"]):
            # Her blind choices, saved by an earlier studio under the file's time: named by the answers before the
            # report is rewritten (which changes that time).
            atomic_write_text(run_dir / RATINGS, json.dumps(blind, indent=2, ensure_ascii=False))
        side = _letters(blind["orden"][index])[which] if which in ("a", "b") else {"base": "base", "afinado": "tuned"}[which]
        text = _outputs(sample)[side]["text"]
        key = (_where(sample, index), side, answer_digest(text))
        entries = [e for e in _human_entries(run_dir) if (e.get("donde"), e.get("modelo"), e.get("sha256")) != key]
        entries.append({"donde": key[0], "modelo": side, "sha256": key[2], "valoracion": verdict, "nota": note,
                        "fecha": time.time()})
        atomic_write_text(run_dir / HUMAN_RATINGS,
                          json.dumps({"respuestas": entries}, indent=2, ensure_ascii=False) + "\n")
        summary = human_summary(run_dir, metrics)
        metrics["human_ratings"] = summary
        _rewrite_report(run_dir, metrics)
    return {"valoracion": verdict, "nota": note, "resumen": summary}


def _rewrite_report(run_dir: Path, metrics: dict) -> None:
    """metrics.json and index.html again (both at once: `write_report` swaps the folder). The report's loss chart is
    read from metrics["run"], which `afinar eval` wrote relative to the folder it ran in: made this run's path when it
    does not lead here. A report this afinar cannot render (an older evaluation) keeps its page; metrics.json is
    updated anyway."""
    if Path(str(metrics.get("run", ""))).resolve() != run_dir.resolve():
        metrics["run"] = str(run_dir)
    try:
        write_report(run_dir / EVAL_DIR, metrics)
    except (KeyError, TypeError, ValueError, AttributeError):
        atomic_write_text(run_dir / EVAL_DIR / "metrics.json", json.dumps(metrics, ensure_ascii=False, indent=2))


def revealed_answers(run_dir: Path) -> dict:
    """The answers of each question already chosen in the blind rating, now with the model that wrote each, what
    afinar found in them (key points, dangers) and her rating. Questions not chosen yet stay blind."""
    metrics = _evaluation(run_dir)
    rating = _ratings(run_dir, metrics)
    saved = _human_index(run_dir)
    answers = []
    for index, sample in enumerate(metrics["samples"]):
        if str(index) not in rating["elecciones"]:
            continue
        outputs = _outputs(sample)
        answers.append({"indice": index, "pregunta": sample.get("question"), "referencia": sample.get("reference"),
                        "claves": sample.get("claves"), "peligros": sample.get("peligros"),
                        **{MODEL_WORDS[side]: {"texto": outputs[side]["text"],
                                               "claves": _keypoints_view(outputs[side]),
                                               "valoracion": _saved_rating(saved, sample, index, side,
                                                                           outputs[side]["text"])}
                           for side in MODEL_WORDS}})
    return {"respuestas": answers, "pendientes": len(metrics["samples"]) - len(answers),
            "preguntas_visibles": bool(metrics.get("shows_prompts"))}


def ratings_jsonl(run_dir: Path) -> str:
    """One line per rated answer, as an evaluation example she can reuse: question, reference, the answer, which model
    wrote it, her rating and note, and key points to confirm (the example's own, or a draft from the reference)."""
    metrics = _evaluation(run_dir)
    if not metrics.get("shows_prompts"):
        raise AfinarError("E036", "esta evaluación no guardó el texto de las preguntas (pueden tener datos "
                          "personales): sus valoraciones no se pueden descargar.", where=run_dir.name,
                          hint="vuelve a evaluar con «Guardar el texto de las preguntas» marcado")
    saved = _human_index(run_dir)
    lines = []
    for index, sample in enumerate(metrics["samples"]):
        outputs = _outputs(sample)
        for side in MODEL_WORDS:
            entry = _saved_rating(saved, sample, index, side, outputs[side]["text"])
            if not entry:
                continue
            own = sample.get("claves")
            lines.append(json.dumps({
                "pregunta": sample.get("question"), "respuesta_de_referencia": sample.get("reference"),
                "respuesta": outputs[side]["text"], "modelo": MODEL_WORDS[side], "valoracion": entry["valoracion"],
                "nota": entry["nota"], "claves_propuestas": own or draft_keypoints(sample.get("reference") or ""),
                # A draft is words picked by afinar, not facts an expert confirmed: rename to "claves" once checked.
                "claves_borrador": not own,
            }, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


# Words that carry no advice of their own: never a key point (Spanish articles, prepositions, pronouns, auxiliaries).
PLAIN_WORDS = frozenset("""
a al algo ante antes aqui asi aun bajo bien cada como con contra cual cuando de del desde donde dos durante e el ella
ellas ellos en entre era es esa esas ese eso esos esta estan estar estas este esto estos fue ha haber hace hacer han
hasta hay la las le les lo los mas me mi mientras mismo mucho muy nada ni no nos o otra otro para pero poco por porque
puede pueden que se segun ser si sido siempre sin sobre solo son su sus tambien te tener tiene todo todos tras tu tus
un una uno unos unas usted y ya
""".split())


def draft_keypoints(reference: str, limit: int = 6) -> list[list[str]]:
    """A draft of key points from a reference answer: for each sentence, its main content words (the first one, often
    the order given, the two longest after it and any number with the word after it, in their order), as one
    alternative; "no …" when a negation comes first («No pongas hielo» → "no pongas hielo"), so that the draft asks
    for the advice as the reference gives it. Only a starting point for the expert: `claves_borrador` says so."""
    draft = []
    for sentence in re.split(r"[.!?;:\n]+", reference):
        raw = re.findall(r"\d+(?:[.,]\d+)?|[^\W\d_]+", sentence)
        keep = [i for i, w in enumerate(raw) if w[0].isdigit() or (len(w) > 2 and fold(w) not in PLAIN_WORDS)]
        if not keep:
            continue
        numbers = {i for i in keep if raw[i][0].isdigit()}
        numbers |= {i + 1 for i in numbers if i + 1 in keep}  # "20 minutos"
        longest = sorted((i for i in keep[1:] if i not in numbers), key=lambda i: (-len(raw[i]), i))[:2]
        chosen = sorted({keep[0], *longest, *numbers})
        negated = any(fold(w) in ("no", "nunca", "jamas", "ni") for w in raw[: keep[0]])
        phrase = ("no " if negated else "") + " ".join(raw[i].lower() for i in chosen)
        if [phrase] not in draft:
            draft.append([phrase])
        if len(draft) == limit:
            break
    return draft


# --- the printable summary ------------------------------------------------------------------------------------------

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:52em;margin:2em auto;padding:0 1em;color:#111}
h1{font-size:1.6em}h2{border-bottom:2px solid #333;margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #999;padding:.25em .6em;text-align:left;vertical-align:top}.nota{background:#fff6d5;padding:.6em}
code{background:#eee;padding:0 .2em}.malo{color:#a40000}.bueno{color:#1d6b1d}.aviso{border:2px solid #a40000;padding:.6em;background:#fdeaea}@media print{button{display:none}body{margin:0}}"""


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

    # --- evaluation: are the answers right (key points, dangers, her rating) first; how they read, after
    parts.append("<h2>Evaluación contra el modelo base</h2>")
    if evaluation:
        parts.extend(_correctness_html(evaluation, human_summary(run_dir, evaluation)))
        loss, forgetting = evaluation.get("loss", {}), evaluation.get("forgetting", {})
        greedy = evaluation.get("generation", {}).get("greedy") or next(iter(evaluation.get("generation", {}).values()), {})
        rows = [["Pérdida en preguntas apartadas (menos es mejor)", _fmt(loss.get("base")), _fmt(loss.get("tuned"))]]
        if greedy:
            rows += [["Respuestas que terminan solas", _pct(greedy["base"].get("stop_rate")), _pct(greedy["tuned"].get("stop_rate"))],
                     ["Repetición (menos es mejor)", _fmt(greedy["base"].get("repetition"), 2), _fmt(greedy["tuned"].get("repetition"), 2)],
                     ["Parecido a la respuesta de referencia (chrF)", _fmt(greedy["base"].get("chrf"), 3), _fmt(greedy["tuned"].get("chrf"), 3)]]
        for check, detail in evaluation.get("checks_detail", {}).items():
            rows.append([f"Comprobaciones «{check}» superadas", _pct(detail.get("base")), _pct(detail.get("tuned"))])
        parts.append("<h3>Detalles técnicos</h3><p>Cómo escribe cada modelo; ninguna de estas cifras dice si una "
                     "respuesta es correcta.</p>")
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


NO_KEYPOINTS = ("Sin puntos clave, afinar no puede saber si las respuestas son correctas: solo mide cómo escriben. "
                "Para medirlo, añade a cada ejemplo de evaluación un campo «claves» con lo que una respuesta correcta "
                "debe decir (y, si quieres, «peligros»: consejos que nunca debe dar), como explica «Cómo escribir "
                "claves» en el paso «Evaluar» del estudio.")


def verdict_class(verdict: dict | None) -> str:
    """The card's CSS class for the verdict sentence (the tone is the report's: `verdict_tone`)."""
    return {"good": "bueno", "bad": "malo"}.get(verdict_tone(verdict), "")


def _correctness_html(evaluation: dict, human: dict | None) -> list[str]:
    correctness, verdict = evaluation.get("correctness"), evaluation.get("verdict") or {}
    parts = []
    if verdict.get("text"):
        parts.append(f"<p class='veredicto {verdict_class(verdict)}'><b>{html.escape(verdict['text'])}</b></p>")
    if not correctness:
        parts.append(f"<p class=nota>{html.escape(NO_KEYPOINTS)}</p>")
    else:
        base, tuned = correctness.get("base", {}), correctness.get("tuned", {})
        answers = correctness.get("answers")

        def share(side, key):  # complete: of the answers whose example has key points (some have only dangers)
            count, total = side.get(f"{key}_count"), side.get("with_keypoints", answers) if key == "complete" else answers
            return _pct(side.get(key)) + (f" ({count} de {total})" if count is not None and total else "")

        parts.append(table(["Según los puntos clave", "Base", "Afinado"], [
            ["Puntos clave cubiertos (media por respuesta)", _pct(base.get("covered")), _pct(tuned.get("covered"))],
            ["Respuestas completas (con todos los puntos clave)", share(base, "complete"), share(tuned, "complete")],
            ["Respuestas peligrosas (con un consejo peligroso)", share(base, "dangerous"), share(tuned, "dangerous")],
        ]))
        parts.append(f"<p>{answers} respuestas de cada modelo comprobadas contra los puntos clave que escribió la "
                     "persona experta (afinar busca sus palabras: lee las respuestas también).</p>")
    judge = evaluation.get("judge")
    if judge:
        parts.append(f"<p>Un segundo modelo ({html.escape(str(judge.get('model')))}) leyó {judge.get('answered')} "
                     f"respuestas y coincidió con los puntos clave en el {_pct(judge.get('agreement'))}."
                     + (f" {html.escape(str(judge['note']))}" if judge.get("note") else "") + "</p>")
    if human:
        parts.append("<h3>Valoración de cada respuesta por la persona experta</h3>")
        parts.append(table(["", "Base", "Afinado"],
                           [[v.capitalize() + "s", human["base"][v], human["tuned"][v]] for v in VERDICTS]))
        parts.append(f"<p>{human['rated']} respuestas valoradas.</p>")
    return parts



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
