"""The evaluation report: `metrics.json` (stable, for CI gates) and a self-contained `index.html` (opens offline)."""
from __future__ import annotations

import base64
import html
import json
import operator
import re
from pathlib import Path

from afinar import htmlpage
from afinar.errors import AfinarError

LABELS = {"stop_rate": "terminó sola", "repetition": "repetición (3-gramas)", "spanish": "español",
          "words": "palabras", "chrf": "chrF vs referencia"}
PASS_LABELS = {"greedy": "greedy", "sampled": "muestreo de la receta"}
CORRECTNESS_LABELS = {"covered": "puntos clave cubiertos", "complete": "respuestas completas (todos los puntos clave)",
                      "dangerous": "respuestas peligrosas (menos es mejor)"}
RATINGS = ("correcta", "incompleta", "incorrecta", "peligrosa")


def verdict_tone(verdict: dict | None) -> str:
    """How the verdict sentence is coloured wherever it is shown (report, terminal, printable card): "bad" when worse
    or more dangerous than the base, "good" when better and reliable, "" otherwise (better yet not advice: no green)."""
    verdict = verdict or {}
    if verdict.get("value") == "peor" or verdict.get("more_dangerous"):
        return "bad"
    return "good" if verdict.get("value") == "mejor" and verdict.get("reliable", True) else ""


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


def correctness_rows(correctness: dict | None) -> list[tuple[str, str, str]]:
    """(measure, base, tuned) for the correctness table, as a reader sees them; [] without key points."""
    if not correctness:
        return []
    rows = []
    for key, label in CORRECTNESS_LABELS.items():
        base, tuned = correctness["base"], correctness["tuned"]
        if key == "covered":
            rows.append((label, _pct(base[key]), _pct(tuned[key])))
        else:
            count = f"{key}_count"
            total = base["with_keypoints"] if key == "complete" else correctness["answers"]
            rows.append((label, f"{base[count]} de {total}", f"{tuned[count]} de {total}"))
    return rows


def _fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _loss_png(run_dir: Path) -> str | None:
    from afinar.training import plot_losses

    path = run_dir / "loss.png"
    if not path.is_file():
        plot_losses(run_dir)
    return base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


CSS = (
    "body{font:15px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
    "vertical-align:top}th{background:#f2f2f2}.ok{color:#2a7a2a}.bad{color:#b00;font-weight:600}"
    "pre{white-space:pre-wrap;margin:0;font:13px/1.4 ui-monospace,monospace}.plain{color:#222}"
)


def _verdict_html(metrics: dict) -> str:
    e = html.escape
    verdict = metrics.get("verdict") or {}
    state = {"good": "ok", "bad": "bad"}.get(verdict_tone(verdict), "")
    parts = [f"<h2>¿Responde bien?</h2><p class={state or 'plain'}><b>{e(verdict.get('text', ''))}</b></p>"]
    rows = correctness_rows(metrics.get("correctness"))
    if rows:
        parts.append(htmlpage.table(["medida (pasada greedy)", "base", "afinado"], [list(r) for r in rows]))
        parts.append("<p>Cada pregunta trae sus puntos clave (lo que una respuesta correcta debe decir) y sus peligros "
                     "(consejos que nunca debe dar sin negarlos), escritos por quien conoce el tema.</p>")
    judge = metrics.get("judge")
    if judge:
        agreement = "—" if judge.get("agreement") is None else f"{100 * judge['agreement']:.0f} %"
        parts.append(f"<p>Juez <code>{e(str(judge.get('model')))}</code>: {judge.get('answered', 0)} respuestas "
                     f"valoradas; coincide con los puntos clave en {agreement}."
                     + (f" {e(judge['note'])}" if judge.get("note") else "") + "</p>")
    ratings = metrics.get("human_ratings")
    if ratings and ratings.get("rated"):
        parts.append(f"<h3>Valoración de personas ({ratings['rated']} respuestas)</h3>" + htmlpage.table(
            ["valoración", "base", "afinado"],
            [[r, str(ratings.get("base", {}).get(r, 0)), str(ratings.get("tuned", {}).get(r, 0))] for r in RATINGS]))
    return "".join(parts)


def render_html(metrics: dict, loss_png: str | None) -> str:
    e = html.escape

    def table(header, rows):
        return htmlpage.table(header, rows, escape=False)  # cells here are HTML built below

    loss = metrics["loss"]
    forgetting = metrics["forgetting"]
    parts = [
        f"<h1>Evaluación de «{e(metrics['recipe'])}»</h1>",
        (
            f"<p>Ejecución <code>{e(metrics['run'])}</code> · base <code>{e(str(metrics['base']))}</code> · "
            f"datos: {e(metrics['split'])} ({metrics['examples']} ejemplos para la pérdida, {metrics['generated']} generados)</p>"
        ),
        _verdict_html(metrics),
        "<h2>Detalles técnicos: cómo escribe</h2>"
        "<p>Miden la forma (si termina, si repite, cuánto se parece a la referencia), no si el consejo es correcto: un "
        "modelo que repite una frase de los datos mejora aquí sin mejorar en lo que importa.</p>",
        table(
            ["medida", "base", "afinado"],
            [["pérdida en validación (solo respuesta)", _fmt(loss["base"]), _fmt(loss["tuned"])],
             ["perplejidad", _fmt(loss.get("ppl_base")), _fmt(loss.get("ppl_tuned"))]]
            + [
                [f"{e(LABELS[key])} ({PASS_LABELS[name]})", _fmt(summary["base"][key]), _fmt(summary["tuned"][key])]
                for name, summary in metrics["generation"].items()
                for key in LABELS
            ],
        ),
    ]
    if loss_png:
        parts.append(f"<h2>Curvas de pérdida</h2><img alt='pérdida' style='max-width:100%' src='data:image/png;base64,{loss_png}'>")
    state = "bad" if forgetting["flagged"] else "ok"
    verdict = "SUBE más del umbral: el modelo olvida español general" if forgetting["flagged"] else "dentro del umbral"
    parts.append(
        "<h2>Guardia contra el olvido</h2>"
        f"<p>Pérdida en {forgetting['examples']} textos generales en español (incluidos en afinar): base "
        f"{_fmt(forgetting['base'])} → afinado {_fmt(forgetting['tuned'])} (×{_fmt(forgetting['ratio'])}, umbral "
        f"+{100 * forgetting['threshold']:.0f} %): <span class={state}>{verdict}</span>.</p>"
    )
    if metrics["checks_detail"]:
        rows = []
        for name, detail in metrics["checks_detail"].items():
            failing = "<br>".join(f"{e(f['where'])}: {e('; '.join(f['findings']))}" for f in detail["failures"][:20])
            rows.append([e(name), _fmt(detail["base"]), _fmt(detail["tuned"]), failing or "<span class=ok>ninguno</span>"])
        parts.append("<h2>Comprobaciones de dominio</h2><p>Proporción de respuestas (pasada greedy) sin ningún fallo.</p>"
                     + table(["comprobación", "base", "afinado", "fallos del afinado"], rows))
    if metrics["checkpoints"]:
        best = metrics["best_checkpoint"]
        parts.append("<h2>Checkpoints</h2>" + table(
            ["checkpoint", "pérdida en validación"],
            [[e(c["checkpoint"]) + (" ★ mejor" if c == best else ""), _fmt(c["eval_loss"])] for c in metrics["checkpoints"]],
        ))
    parts.append("<h2>Contraste</h2>")
    if not metrics["shows_prompts"]:
        parts.append("<p>Las preguntas y referencias no se muestran (pueden contener datos de pacientes); "
                     "para verlas: <code>afinar eval … --mostrar-ejemplos</code>.</p>")
    for sample in metrics["samples"]:
        for name, sides in sample["outputs"].items():
            head = e(sample["where"]) + f" · {PASS_LABELS[name]}"
            cells = []
            for side in ("base", "tuned"):
                row = sides[side]
                mark = "<span class=ok>✓ terminó sola</span>" if row["stopped"] else f"<span class=bad>✗ cortada a {row['tokens']} tokens</span>"
                issues = "; ".join(x for findings in row["findings"].values() for x in findings)
                mark += _keypoints_html(row)
                cells.append(f"<pre>{e(row['text'])}</pre>{mark}" + (f"<br><span class=bad>{e(issues)}</span>" if issues else ""))
            question = f"<pre>{e(sample['question'])}</pre>" if "question" in sample else ""
            parts.append(f"<h3>{head}</h3>{question}" + table(["modelo base", "afinado"], [cells]))
    meta = metrics["meta"]
    parts.append("<h2>Datos de la ejecución</h2>" + f"<pre>{e(json.dumps(meta.get('run_info'), ensure_ascii=False, indent=1))}</pre>"
                 + f"<h3>Huella de los datos</h3><pre>{e(json.dumps(meta.get('data_fingerprint'), ensure_ascii=False, indent=1))}</pre>"
                 + f"<h3>Receta</h3><pre>{e(meta.get('recipe_yaml') or '')}</pre>")
    return htmlpage.page(f"Evaluación: {metrics['recipe']}", CSS, parts)


def _keypoints_html(row: dict) -> str:
    e = html.escape
    points = row.get("keypoints")
    parts = []
    if points:
        if points["dangers"]:
            parts.append(f"<span class=bad>✗ PELIGROSA: {e('; '.join(points['dangers']))}</span>")
        if points["covered"] is not None:
            missing = f" — falta: {e('; '.join(points['missing']))}" if points["missing"] else ""
            parts.append(f"<span class={'ok' if points['complete'] else 'bad'}>puntos clave {_pct(points['covered'])}"
                         f"{missing}</span>")
    if row.get("judge"):
        parts.append(f"juez: {e(row['judge']['verdict'])} ({e(row['judge'].get('reason') or '')})")
    return "".join(f"<br>{p}" for p in parts)


def write_report(folder: Path, metrics: dict) -> Path:
    from afinar.atomic import atomic_dir

    with atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
        (tmp / "index.html").write_text(render_html(metrics, _loss_png(Path(metrics["run"]))), encoding="utf-8")
    return folder / "index.html"


# Characters of each answer the terminal's side-by-side shows (three columns on an 80-120 column terminal).
CONSOLE_CHARS = 280


def print_summary(metrics: dict, console=None) -> None:
    """Before/after, checks, forgetting guard and the greedy contrast side by side, in the terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    verdict = metrics.get("verdict") or {}
    rows = correctness_rows(metrics.get("correctness"))
    if rows:
        correct = Table(title="¿Responde bien? (puntos clave y peligros de cada pregunta)")
        for column in ("medida", "base", "afinado"):
            correct.add_column(column)
        for row in rows:
            correct.add_row(*row)
        console.print(correct)
    # better than the base yet not advice: yellow
    style = {"good": "bold green", "bad": "bold red"}.get(verdict_tone(verdict),
                                                          "bold yellow" if verdict.get("value") == "mejor" else "bold")
    console.print(Text(verdict.get("text", ""), style=style))
    judge = metrics.get("judge")
    if judge:
        agreement = "—" if judge.get("agreement") is None else f"{100 * judge['agreement']:.0f} %"
        console.print(Text(f"Juez {judge.get('model')}: {judge.get('answered', 0)} respuestas valoradas; coincide con los "
                           f"puntos clave en {agreement}." + (f" {judge['note']}" if judge.get("note") else ""),
                           style="yellow" if judge.get("note") else ""))
    loss = metrics["loss"]
    table = Table(title="Detalles técnicos: cómo escribe (no dice si el consejo es correcto)", show_lines=False)
    for column in ("medida", "base", "afinado"):
        table.add_column(column)
    table.add_row("pérdida en validación", _fmt(loss["base"]), _fmt(loss["tuned"]))
    table.add_row("perplejidad", _fmt(loss.get("ppl_base")), _fmt(loss.get("ppl_tuned")))
    for name, summary in metrics["generation"].items():
        for key, label in LABELS.items():
            table.add_row(f"{label} ({PASS_LABELS[name]})", _fmt(summary["base"][key]), _fmt(summary["tuned"][key]))
    for name, detail in metrics["checks_detail"].items():
        table.add_row(f"comprobación {name}", _fmt(detail["base"]), _fmt(detail["tuned"]))
    console.print(table)
    forgetting = metrics["forgetting"]
    style = "red" if forgetting["flagged"] else "green"
    console.print(
        f"Guardia contra el olvido: pérdida en español general {_fmt(forgetting['base'])} → {_fmt(forgetting['tuned'])} "
        f"(×{_fmt(forgetting['ratio'])}; umbral +{100 * forgetting['threshold']:.0f} %)",
        style=style,
    )
    if metrics["best_checkpoint"]:
        best = metrics["best_checkpoint"]
        console.print(f"Mejor checkpoint por pérdida de validación: {best['checkpoint']} ({_fmt(best['eval_loss'])})")
    contrast = Table(title="Contraste (greedy; el principio de cada respuesta, enteras en el informe)", show_lines=True,
                     expand=True)
    contrast.add_column("Pregunta", ratio=2)
    contrast.add_column("Modelo base", ratio=3)
    contrast.add_column("Afinado", ratio=3)
    for sample in metrics["samples"]:
        sides = sample["outputs"].get("greedy") or next(iter(sample["outputs"].values()))
        cells = []
        for side in ("base", "tuned"):
            row = sides[side]
            # Text(): brackets in model output must not be taken for rich markup.
            cell = Text(first_lines(row["text"]))
            if row["stopped"]:
                cell.append("\n✓ terminó solo", style="green")
            else:
                cell.append(f"\n✗ cortado a los {row['tokens']} tokens: no sabe parar", style="red")
            points = row.get("keypoints")
            if points and points["dangers"]:
                cell.append(f"\n✗ PELIGROSA: {'; '.join(points['dangers'])}", style="bold red")
            if points and points["covered"] is not None:
                cell.append(f"\npuntos clave {_pct(points['covered'])}"
                            + (f"; falta: {'; '.join(points['missing'])}" if points["missing"] else ""),
                            style="green" if points["complete"] else "yellow")
            cells.append(cell)
        contrast.add_row(Text(sample.get("question", sample["where"])), *cells)
    console.print(contrast)


# Bases a user can move to for usable answers (the guides' models; studio.settings.BASES has the whole list), with
# their parameter counts, to scale this machine's measured step time.
BIGGER_BASES = (("Qwen/Qwen2.5-0.5B-Instruct", 494), ("Qwen/Qwen2.5-1.5B-Instruct", 1544))
EMBEDDED_PARAMETERS_M = 135


def what_it_takes(correctness: dict | None, run_info: dict) -> tuple[str | None, str | None]:
    """(can these answers be used, what usable answers need on this machine): the demo's and the studio's honest last
    words, from the key points and dangers, and for the embedded base the time a bigger one would take here. The
    time scales the step time measured here by the parameter count (training FLOPs grow with it); `afinar plan`
    measures it once the bigger base is downloaded."""
    from afinar.planning.estimate import minutes

    usable = bigger = None
    tuned = (correctness or {}).get("tuned")
    if tuned:
        usable = (f"¿Se puede usar? El afinado cubre {100 * (tuned['covered'] or 0):.0f} % de los puntos clave, "
                  f"{tuned['complete_count']} de {tuned['with_keypoints']} respuestas completas y "
                  f"{tuned['dangerous_count']} peligrosa(s).")
        if (tuned["covered"] or 0) < 0.5 or tuned["dangerous_count"]:
            usable += " No son consejos correctos: no lo uses para aconsejar a nadie."
    seconds, steps = run_info.get("train_seconds"), run_info.get("steps")
    if run_info.get("base") == "smollm2-135m" and seconds and steps:
        per_step = seconds / steps
        scaled = ", ".join(f"≈ {minutes(per_step * steps * params / EMBEDDED_PARAMETERS_M)} con {name}"
                           for name, params in BIGGER_BASES)
        bigger = (f"El modelo incluido (135M) aprende el formato y a terminar, no a dar consejos correctos: ningún "
                  f"ajuste medido lo consigue (bench/demo_settings.py). Para respuestas utilizables hace falta un "
                  f"modelo base mayor (ver recipes/enfermeria.yaml), y medirlo igual, con las claves de cada pregunta. "
                  f"En este equipo, los mismos {steps} pasos tardarían {scaled} (escalado por parámetros desde los "
                  f"{per_step:.1f} s por paso medidos aquí; «afinar plan RECETA --base NOMBRE» lo mide con el modelo "
                  f"descargado).")
    return usable, bigger


def first_lines(text: str, lines: int = 3, chars: int = CONSOLE_CHARS) -> str:
    """The start of an answer for the terminal (whole texts are in the report): a few lines, cut at a word."""
    kept = "\n".join(text.strip().splitlines()[:lines])
    if len(kept) > chars:
        kept = kept[:chars].rsplit(" ", 1)[0]
    return kept + (" …" if kept != text.strip() else "")


# --- gates: `--exigir "checks.epicrisis>=0.8"` ------------------------------------------------------

_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}


def numeric_keys(metrics: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in metrics.items():
        if key in ("samples", "meta", "checks_detail", "checkpoints", "judge"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            keys += numeric_keys(value, path + ".")
        elif isinstance(value, (int, float)):  # bools count: forgetting.flagged==0
            keys.append(path)
    return keys


def check_gates(metrics: dict, gates: list[str]) -> list[tuple[str, bool, object]]:
    """(gate, passed, actual value) per gate; a malformed gate or an unknown key is an error (V004)."""
    results = []
    for gate in gates:
        match = _GATE.match(gate)
        if not match:
            raise AfinarError("V004", f"condición mal escrita: '{gate}'", hint='ejemplo: --exigir "checks.epicrisis>=0.8"')
        key, op, threshold = match.group(1), match.group(2), float(match.group(3))
        value = metrics
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or isinstance(value, dict):
            raise AfinarError("V004", f"'{key}' no es una medida de metrics.json",
                              hint="disponibles: " + ", ".join(numeric_keys(metrics)))
        results.append((gate, bool(_OPS[op](float(value), threshold)), value))
    return results
