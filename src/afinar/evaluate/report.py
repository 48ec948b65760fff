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
    "pre{white-space:pre-wrap;margin:0;font:13px/1.4 ui-monospace,monospace}"
)


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
        "<h2>Antes y después</h2>",
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
                cells.append(f"<pre>{e(row['text'])}</pre>{mark}" + (f"<br><span class=bad>{e(issues)}</span>" if issues else ""))
            question = f"<pre>{e(sample['question'])}</pre>" if "question" in sample else ""
            parts.append(f"<h3>{head}</h3>{question}" + table(["modelo base", "afinado"], [cells]))
    meta = metrics["meta"]
    parts.append("<h2>Datos de la ejecución</h2>" + f"<pre>{e(json.dumps(meta.get('run_info'), ensure_ascii=False, indent=1))}</pre>"
                 + f"<h3>Huella de los datos</h3><pre>{e(json.dumps(meta.get('data_fingerprint'), ensure_ascii=False, indent=1))}</pre>"
                 + f"<h3>Receta</h3><pre>{e(meta.get('recipe_yaml') or '')}</pre>")
    return htmlpage.page(f"Evaluación: {metrics['recipe']}", CSS, parts)


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
    loss = metrics["loss"]
    table = Table(title="Antes y después", show_lines=False)
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
            cells.append(cell)
        contrast.add_row(Text(sample.get("question", sample["where"])), *cells)
    console.print(contrast)


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
        if key in ("samples", "meta", "checks_detail", "checkpoints"):
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
