"""`afinar inspect`: everything worth knowing about the data before spending compute on it.

One pass builds a report (dict) that is printed as a summary and written as JSON + HTML + a length
histogram. Places are reported as `archivo:línea`; row text appears only with `--mostrar-ejemplos`
(console) and then also in the HTML, because datasets here can hold patient data. The one exception: words that
many answers repeat (`repeated_sentences`, boilerplate such as "llama al 112…", never a whole answer and never
with possible personal data), because the fix needs them.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import random
import statistics
from collections import Counter
from pathlib import Path

from afinar import htmlpage
from afinar.config import DataSection
from afinar.data.duplicates import near_duplicates
from afinar.data.formats import Example
from afinar.data.language import LanguageShare, language_share
from afinar.data.pii import KINDS, find_pii
from afinar.data.repeated import describe, percent
from afinar.data.split import prompt_key
from afinar.errors import AfinarError
from afinar.runs import DATA_REPORT_DIR as REPORT_DIR

NEAR_THRESHOLD = 0.7  # 3-gram Jaccard: above this two texts say the same with a few words changed
SHORT_ANSWER_WORDS = 3
MAX_PLACES = 50  # places listed per finding; counts are always complete
SAMPLES = 3

# The same first-aid advice in both languages: tokens per word of each measure what Spanish costs this tokenizer.
REFERENCE = {
    "es": "Si una persona no respira con normalidad, llama al número de emergencias y empieza las compresiones "
    "torácicas en el centro del pecho, fuerte y rápido, hasta que llegue la ayuda o un desfibrilador.",
    "en": "If a person is not breathing normally, call the emergency number and start chest compressions in the "
    "centre of the chest, hard and fast, until help or a defibrillator arrives.",
}


def _stats(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "p50": ordered[len(ordered) // 2],
        "p90": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 1),
    }


def _text_of(example: Example, role: str) -> str:
    return "\n".join(m["content"] for m in example.messages if m["role"] == role)


def _places(items: list) -> list:
    return items[:MAX_PLACES]


def _resolve(path: Path, base: str | None, max_length: int | None, columnas: dict | None = None,
             hoja: str | int | None = None):
    """(DataSection, base, default report folder, recipe name) for a recipe or a bare data file (JSONL or table)."""
    from afinar.data.validate import data_of

    data, recipe = data_of(path, max_length, columnas, hoja)
    if recipe is not None:
        if max_length:
            data.max_length = max_length
        return data, base or recipe.model.base, recipe.run_dir() / REPORT_DIR, recipe.name
    if not path.exists():
        raise AfinarError("D011", "no existe el archivo.", where=str(path))
    return data, base or "smollm2-135m", Path("runs") / f"inspect-{path.stem}" / REPORT_DIR, None


def _token_section(examples: list[Example], tokenizer, data: DataSection, progress: bool) -> tuple[dict, dict]:
    """Length statistics with the recipe's tokenizer and template, plus each example's encoding by place."""
    from tqdm.auto import tqdm

    from afinar.data.templates import encode, with_system

    encoded = {}
    prompt_len, answer_len, total_len, too_long = [], [], [], []
    words = tokens = 0
    for example in tqdm(examples, desc="Tokenizando", unit="ej", disable=not progress, dynamic_ncols=True):
        enc = encode(tokenizer, with_system(example.messages, data.system_prompt), example.where)
        encoded[example.where] = enc
        prompt_len.append(len(enc.input_ids) - enc.n_trained)
        answer_len.append(enc.n_trained)
        total_len.append(len(enc.input_ids))
        if len(enc.input_ids) > data.max_length:
            too_long.append(example.where)
        for message in example.messages:
            if message["role"] in ("user", "assistant"):
                words += len(message["content"].split())
                tokens += len(tokenizer(message["content"], add_special_tokens=False)["input_ids"])
    ref = {lang: len(tokenizer(t, add_special_tokens=False)["input_ids"]) / len(t.split()) for lang, t in REFERENCE.items()}
    section = {
        "available": True,
        "prompt": _stats(prompt_len),
        "answer": _stats(answer_len),
        "total": _stats(total_len),
        "too_long": {"count": len(too_long), "action": data.overlength, "places": _places(too_long)},
        "tokens_per_word": round(tokens / words, 2) if words else None,
        "reference_tokens_per_word": {k: round(v, 2) for k, v in ref.items()},
        "spanish_vs_english": round(ref["es"] / ref["en"], 2),
        "_lengths": {"prompt": prompt_len, "answer": answer_len, "total": total_len},
    }
    return section, encoded


def build_report(data: DataSection, tokenizer=None, tokenizer_note: str = "", show_examples: bool = False,
                 seed: int = 0, progress: bool = True) -> dict:
    """The whole pre-flight report as a JSON-ready dict (row text only if `show_examples`)."""
    from afinar.data.validate import gather, repeated

    prepared = gather(data)
    repeated_sentences = repeated(prepared)  # adds their D016 warnings
    examples = prepared.train + prepared.val
    in_val = {e.where for e in prepared.val}
    report: dict = {
        "sources": {p: n for p, n in prepared.per_source.items()},
        "train_examples": len(prepared.train),
        "val_examples": len(prepared.val),
        "max_length": data.max_length,
        "overlength": data.overlength,
        "errors": {"total": len(prepared.errors), "by_code": dict(Counter(p.code for p in prepared.errors)),
                   "list": [p.render() for p in prepared.errors[:200]]},
        "warnings": {"total": len(prepared.warnings), "by_code": dict(Counter(p.code for p in prepared.warnings)),
                     "list": [p.render() for p in prepared.warnings[:200]]},
    }

    # --- tokens: lengths, what does not fit, cost of Spanish -------------------------------------
    encoded: dict = {}
    if tokenizer is None:
        report["tokens"] = {"available": False, "reason": tokenizer_note}
    else:
        try:
            report["tokens"], encoded = _token_section(examples, tokenizer, data, progress)
        except AfinarError as exc:  # e.g. a chat template that cannot mark assistant tokens (T001)
            report["tokens"] = {"available": False, "reason": f"{exc.code}: {exc.message}"}

    # --- answers that teach little ------------------------------------------------------------
    short = [e.where for e in examples if len(_text_of(e, "assistant").split()) < SHORT_ANSWER_WORDS]
    report["short_answers"] = {"min_words": SHORT_ANSWER_WORDS, "count": len(short), "places": _places(short)}
    # [{"sentence", "count", "share"}] over the training answers: what a small model collapses onto (the studio reads it)
    report["repeated_sentences"] = repeated_sentences

    # --- duplicates and leakage ----------------------------------------------------------------
    prompts = [prompt_key(e) for e in examples]
    answers = [_text_of(e, "assistant") for e in examples]
    near = {}
    for name, texts in (("prompts", prompts), ("answers", answers)):
        pairs = near_duplicates(texts, threshold=NEAR_THRESHOLD)
        near[name] = [{"a": examples[i].where, "b": examples[j].where, "jaccard": s} for i, j, s in pairs]
    near_leaks = [p for p in near["prompts"] if (p["a"] in in_val) != (p["b"] in in_val)]
    report["duplicates"] = {
        "exact": report["warnings"]["by_code"].get("D009", 0),
        "threshold": NEAR_THRESHOLD,
        "near_prompts": {"count": len(near["prompts"]), "pairs": _places(near["prompts"])},
        "near_answers": {"count": len(near["answers"]), "pairs": _places(near["answers"])},
    }
    report["leakage"] = {
        "exact": report["warnings"]["by_code"].get("D014", 0),
        "near": len(near_leaks),
        "pairs": _places(near_leaks),
    }

    # --- language ----------------------------------------------------------------------------
    overall = LanguageShare(by_language={})
    foreign = []
    for example in examples:
        share = language_share(_text_of(example, "user") + "\n" + _text_of(example, "assistant"))
        overall.add(share)
        if share.words and share.non_spanish_share > 0.5:
            foreign.append(example.where)
    report["language"] = {
        "non_spanish_share": round(overall.non_spanish_share, 4),
        "words_by_language": overall.by_language,
        "mostly_non_spanish_examples": {"count": len(foreign), "places": _places(foreign)},
    }

    # --- personal data -----------------------------------------------------------------------
    found = []
    for example in examples:
        for index, message in enumerate(example.messages):
            for kind in find_pii(message["content"]):
                found.append({"place": example.where, "field": f"{message['role']} (mensaje {index + 1})", "kind": kind})
    report["personal_data"] = {
        "count": len(found),
        "lines": len({f["place"] for f in found}),  # a line with a DNI and a name is one line to fix
        "by_kind": dict(Counter(KINDS[f["kind"]] for f in found)),
        "places": _places(found),
    }

    # --- what is actually trained, on a few examples -------------------------------------------
    samples = []
    flagged = {f["place"] for f in found}  # their text is never shown, even when asked for
    pool = [e for e in prepared.train if e.where in encoded and e.where not in flagged]
    for example in random.Random(seed).sample(pool, min(SAMPLES, len(pool))):
        enc = encoded[example.where]
        sample = {
            "place": example.where,
            "tokens": len(enc.input_ids),
            "trained_tokens": enc.n_trained,
            "end_of_turn_trained": enc.n_trained > 0 and enc.input_ids[_last_trained(enc.labels)] == tokenizer.eos_token_id,
        }
        if show_examples:
            sample["segments"] = _segments(tokenizer, enc)
        samples.append(sample)
    report["samples"] = samples
    report["shows_row_text"] = show_examples
    return report


def _last_trained(labels: list[int]) -> int:
    from afinar.data.templates import IGNORE

    for i in range(len(labels) - 1, -1, -1):
        if labels[i] != IGNORE:
            return i
    return 0


def _segments(tokenizer, enc) -> list[list]:
    """[[text, trained], ...]: consecutive tokens with the same trained flag, decoded together."""
    from afinar.data.templates import IGNORE

    segments: list[list] = []
    run: list[int] = []
    flag = None
    for token, label in zip(enc.input_ids, enc.labels):
        trained = label != IGNORE
        if flag is not None and trained != flag:
            segments.append([tokenizer.decode(run), flag])
            run = []
        run.append(token)
        flag = trained
    if run:
        segments.append([tokenizer.decode(run), flag])
    return segments


# --- output ---------------------------------------------------------------------------------------


def plot_lengths(report: dict, path: Path) -> bool:
    lengths = report["tokens"].get("_lengths")
    if not lengths or not lengths["total"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    titles = {"prompt": "Pregunta (sistema + usuario + plantilla)", "answer": "Respuesta (tokens entrenados)",
              "total": "Total por ejemplo"}
    for ax, key in zip(axes, ("prompt", "answer", "total")):
        ax.hist(lengths[key], bins=min(40, max(5, len(lengths[key]) // 5)), color="#3b7dd8", edgecolor="white")
        ax.set_title(titles[key], fontsize=10)
        ax.set_xlabel("tokens")
        ax.set_ylabel("ejemplos")
    axes[2].axvline(report["max_length"], color="#d33", linestyle="--", label=f"max_length = {report['max_length']}")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return True


def _summary_lines(report: dict) -> list[str]:
    lines = []
    lines.append(f"Errores: {report['errors']['total']} · avisos: {report['warnings']['total']}")
    for path, n in report["sources"].items():
        lines.append(f"  {path}: {n} ejemplos")
    lines.append(f"  entrenamiento {report['train_examples']} · validación {report['val_examples']}")
    tok = report["tokens"]
    if tok["available"]:
        for key, label in (("prompt", "pregunta"), ("answer", "respuesta"), ("total", "total")):
            s = tok[key]
            if s:
                lines.append(f"  tokens de {label}: mediana {s['p50']}, p90 {s['p90']}, máximo {s['max']}")
        too_long = tok["too_long"]
        lines.append(f"  no caben en max_length={report['max_length']}: {too_long['count']} (política: {too_long['action']})")
        lines.append(
            f"  tokens por palabra: {tok['tokens_per_word']} (texto de referencia: español "
            f"{tok['reference_tokens_per_word']['es']}, inglés {tok['reference_tokens_per_word']['en']}; "
            f"el español cuesta {tok['spanish_vs_english']}× con este tokenizador)"
        )
    else:
        lines.append(f"  sin tokenizador: {tok['reason']}")
    lines.append(f"  respuestas vacías o muy cortas (< {SHORT_ANSWER_WORDS} palabras): {report['short_answers']['count']}")
    lines.extend(_repeated_lines(report))
    dup = report["duplicates"]
    lines.append(
        f"  duplicados exactos: {dup['exact']} · casi duplicados (Jaccard ≥ {dup['threshold']}): "
        f"{dup['near_prompts']['count']} preguntas, {dup['near_answers']['count']} respuestas"
    )
    leak = report["leakage"]
    lines.append(f"  fuga entrenamiento/validación: {leak['exact']} exactas, {leak['near']} casi iguales")
    lang = report["language"]
    lines.append(
        f"  texto no español: {100 * lang['non_spanish_share']:.1f} % "
        f"({lang['mostly_non_spanish_examples']['count']} ejemplos mayoritariamente en otro idioma)"
    )
    pii = report["personal_data"]
    kinds = ", ".join(f"{k}×{n}" for k, n in pii["by_kind"].items()) or "ninguno"
    lines.append(f"  posibles datos personales: {pii['count']} ({kinds}) en {pii['lines']} línea(s)")
    for place in pii["places"][:10]:
        lines.append(f"    {place['place']}: {KINDS[place['kind']]} en {place['field']}")
    return lines


def _repeated_lines(report: dict) -> list[str]:
    found = report.get("repeated_sentences", [])
    if not found:
        return ["  frases repetidas en muchas respuestas: ninguna"]
    return ["  frases repetidas en muchas respuestas:"] + [f"    {describe(r, report['train_examples'])}" for r in found]


def _sample_lines(report: dict) -> list[str]:
    lines = []
    for sample in report["samples"]:
        mark = "sí" if sample["end_of_turn_trained"] else "NO"
        lines.append(
            f"  {sample['place']}: {sample['tokens']} tokens, {sample['trained_tokens']} entrenados; "
            f"fin de turno entrenado: {mark}"
        )
        if "segments" in sample:
            lines.append("    " + "".join(f"⟦{t}⟧" if trained else t for t, trained in sample["segments"]).replace("\n", "\n    "))
    return lines


CSS = (
    "body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "th{background:#f2f2f2}.ok{color:#2a7a2a}.bad{color:#b00}mark{background:#ffe38a}"
    "pre{white-space:pre-wrap;background:#fafafa;border:1px solid #ddd;padding:.6em}"
)


def render_html(report: dict, title: str, png: str | None) -> str:
    e = html.escape

    def table(rows, header):
        return htmlpage.table(header, rows, empty="<p class=ok>Nada que señalar.</p>")

    parts = [
        f"<h1>{e(title)}</h1>",
        "<h2>Resumen</h2><pre>" + e("\n".join(_summary_lines(report))) + "</pre>",
    ]
    if png:
        parts.append(f"<h2>Longitud en tokens</h2><img alt='histograma de longitudes' style='max-width:100%' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Errores de esquema</h2>" + table([[x] for x in report["errors"]["list"]], ["archivo:línea: código: mensaje"]))
    parts.append("<h2>Avisos</h2>" + table([[x] for x in report["warnings"]["list"]], ["archivo:línea: código: mensaje"]))
    tok = report["tokens"]
    if tok["available"]:
        parts.append("<h2>No caben en max_length</h2>" + table([[p] for p in tok["too_long"]["places"]], ["lugar"]))
    parts.append(
        "<h2>Frases repetidas en muchas respuestas</h2><p>Un modelo pequeño entrenado con respuestas que repiten la "
        "misma frase aprende a escribir esa frase y poco más. Varía la redacción o quítala de parte de ellas.</p>"
        + table([[f"{percent(r['share'])} %", r["count"], r["sentence"]] for r in report.get("repeated_sentences", [])],
                ["respuestas de entrenamiento", "cuántas", "frase"]))
    parts.append("<h2>Casi duplicados</h2>" + table(
        [["pregunta", p["a"], p["b"], p["jaccard"]] for p in report["duplicates"]["near_prompts"]["pairs"]]
        + [["respuesta", p["a"], p["b"], p["jaccard"]] for p in report["duplicates"]["near_answers"]["pairs"]],
        ["campo", "lugar", "se parece a", "Jaccard"],
    ))
    parts.append("<h2>Fuga entre entrenamiento y validación (casi iguales)</h2>" + table(
        [[p["a"], p["b"], p["jaccard"]] for p in report["leakage"]["pairs"]], ["lugar", "lugar", "Jaccard"]))
    parts.append("<h2>Idioma</h2>" + table(
        sorted(report["language"]["words_by_language"].items(), key=lambda kv: -kv[1]), ["idioma", "palabras"]))
    parts.append("<h2>Posibles datos personales</h2>" + table(
        [[p["place"], p["field"], KINDS[p["kind"]]] for p in report["personal_data"]["places"]], ["lugar", "campo", "tipo"]))
    parts.append("<h2>Qué se entrena (muestras)</h2><p>Resaltado: tokens con pérdida (respuesta del asistente y su fin de turno).</p>")
    for sample in report["samples"]:
        parts.append("<pre>" + e(_sample_lines({"samples": [{k: v for k, v in sample.items() if k != "segments"}]})[0]) + "</pre>")
        if "segments" in sample:
            parts.append("<pre>" + "".join(f"<mark>{e(t)}</mark>" if tr else e(t) for t, tr in sample["segments"]) + "</pre>")
    if not report["shows_row_text"]:
        parts.append("<p>El texto de las filas no se muestra (puede contener datos de pacientes). Para verlo: "
                     "<code>afinar inspect … --mostrar-ejemplos</code>.</p>")
    return htmlpage.page(title, CSS, parts)


def inspect(path: str | Path, base: str | None = None, max_length: int | None = None, output: str | Path | None = None,
            show_examples: bool = False, seed: int = 0, progress: bool = True, columnas: dict | None = None,
            hoja: str | int | None = None) -> int:
    """`afinar inspect RECIPE_OR_DATA`: print the pre-flight report and write it as JSON + HTML + PNG.

    Returns 1 if the data has schema errors (training would refuse it), else 0.
    """
    from afinar.atomic import atomic_dir
    from afinar.data.validate import try_tokenizer

    path = Path(path)
    data, base, default_out, name = _resolve(path, base, max_length, columnas, hoja)
    tokenizer, reason = try_tokenizer(base, data.template)
    note = f"no se pudo cargar el tokenizador de '{base}' ({reason})" if tokenizer is None else ""
    if note:
        print(f"aviso: {note}")

    report = build_report(data, tokenizer, note, show_examples=show_examples, seed=seed, progress=progress)
    report = {"input": str(path), "recipe": name, "base": base, **report}
    out = Path(output) if output else default_out
    with atomic_dir(out, overwrite=True) as tmp:
        has_png = plot_lengths(report, tmp / "longitudes.png")
        png = base64.b64encode((tmp / "longitudes.png").read_bytes()).decode() if has_png else None
        report["tokens"].pop("_lengths", None)
        report["histogram"] = "longitudes.png" if has_png else None
        (tmp / "informe_datos.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        title = f"Informe de datos: {name or path.name}"
        (tmp / "informe_datos.html").write_text(render_html(report, title, png), encoding="utf-8")

    print(f"Informe de datos de {path} (base {base}, max_length {report['max_length']})")
    for line in _summary_lines(report) + ["Muestras (qué tokens se entrenan):"] + _sample_lines(report):
        print(line)
    for problem in report["errors"]["list"][:20]:
        print(problem)
    print(f"Informe escrito en {out / 'informe_datos.html'} (y .json, longitudes.png)")
    return 1 if report["errors"]["total"] else 0


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    from afinar.data.tables import parse_columnas

    p.add_argument("path", help="receta .yaml, datos .jsonl o una tabla (.csv, .tsv, .xlsx, .ods, .parquet, .json)")
    p.add_argument("--columnas", type=parse_columnas, metavar="CAMPO=COLUMNA,…",
                   help="con una tabla: qué columna es cada campo, p. ej. "
                   '"pregunta=Consulta del paciente,respuesta=Respuesta" (por defecto se reconocen por su nombre)')
    p.add_argument("--hoja", metavar="NOMBRE",
                   help="con un .xlsx/.ods: la hoja, por nombre o número (por defecto la primera)")
    p.add_argument("--base",
                   help="modelo cuyo tokenizador mide las longitudes (por defecto el de la receta o smollm2-135m)")
    p.add_argument("--max-length", type=int,
                   help="longitud máxima en tokens (por defecto la de la receta o 512)")
    p.add_argument("--salida", dest="output",
                   help="carpeta del informe (por defecto runs/<receta>/informe_datos)")
    p.add_argument("--mostrar-ejemplos", dest="show_examples", action="store_true",
                   help="muestra el texto de 3 ejemplos con los tokens entrenados marcados")
    p.add_argument("--sin-progreso", dest="progress", action="store_false",
                   help="sin barra de progreso")
