"""The drafts review queue as a person uses it, in Chromium: a drafts file (from `afinar borradores`) copied into a fresh
studio folder, opened in «1. Datos → Borradores desde documentos → Revisar», and each draft decided as a decisions
file says: «a» (aceptar) and «d» (descartar) from the keyboard, a correction with «c», both texts rewritten and «Guardar
la corrección». Prints the time of each decision (wall clock, from the key or click until the page shows the next draft
with the counts updated: the studio's answer included), the total, the counts at the end, and the dataset «Usar los
revisados para entrenar» wrote.

    .venv/bin/python bench/studio_review.py --borradores borradores.jsonl --decisiones decisiones.json

decisiones.json maps each draft's id to "aceptar", "descartar" or {"pregunta": "…", "respuesta": "…"} (a correction).
A draft still «sin revisar» without a decision stops the script before it starts, unless --resto says what to do with
those. Needs Debian's chromium (make test-deps) and the `test` extra (Playwright); no teacher model, no network.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--borradores", required=True, type=Path, help="the drafts file (JSONL) to review")
    parser.add_argument("--decisiones", required=True, type=Path, help="JSON: id → aceptar | descartar | {pregunta, respuesta}")
    parser.add_argument("--resto", choices=("aceptar", "descartar"), help="for drafts without a decision")
    parser.add_argument("--puerto", type=int, default=7873)
    parser.add_argument("--capturas", action="store_true", help="save a screenshot of the first draft and of the end")
    parser.add_argument("--lectura", type=float, default=0, metavar="PALABRAS_MIN",
                        help="read as a person: wait the words of each draft (and of its passage, the first time it "
                             "is shown) at this many words per minute before deciding (0: decide at once)")
    parser.add_argument("--tecleo", type=float, default=0, metavar="PALABRAS_MIN",
                        help="type corrections key by key at this many words per minute (0: paste them)")
    args = parser.parse_args()

    decisions = json.loads(args.decisiones.read_text(encoding="utf-8"))
    drafts = [json.loads(line) for line in args.borradores.read_text(encoding="utf-8").splitlines() if line.strip()]
    pending = [d["id"] for d in drafts if d.get("estado") == "sin revisar"]
    missing = [i for i in pending if i not in decisions]
    if missing and not args.resto:
        print(f"{len(missing)} borrador(es) sin revisar no tienen decisión (por ejemplo {missing[0]}): añádelas a "
              f"{args.decisiones} o usa --resto aceptar|descartar", file=sys.stderr)
        return 2
    for draft_id, decision in decisions.items():
        if decision not in ("aceptar", "descartar") and not (isinstance(decision, dict) and decision.get("pregunta")
                                                              and decision.get("respuesta")):
            print(f"decisión no válida para {draft_id}: {decision!r}", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="afinar-revision-"))
    (work / "borradores").mkdir()
    name = "revision"
    shutil.copyfile(args.borradores, work / "borradores" / f"{name}.jsonl")
    studio = subprocess.Popen([sys.executable, "-m", "afinar", "estudio", "--no-abrir", "--puerto", str(args.puerto),
                               "--carpeta", str(work)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = studio.stdout.readline().split(": ", 1)[1].strip()
    times: list[tuple[str, str, float]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
            page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="es-ES").new_page()
            for _ in range(100):
                try:
                    page.goto(url)
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    time.sleep(0.2)
            page.wait_for_selector("body[data-listo='1']")
            page.select_option("#lista-borradores", name)
            page.click("#abrir-borradores")
            page.wait_for_selector("#borrador-titulo, #fin-revision")
            if args.capturas:
                page.screenshot(path=str(work / "primer-borrador.png"), full_page=True)
            started = time.monotonic()
            by_id = {d["id"]: d for d in drafts}
            passages_read: set[str] = set()
            reading_total = 0.0
            while page.query_selector("#borrador-actual article[data-id]"):
                draft_id = page.get_attribute("#borrador-actual article[data-id]", "data-id")
                decision = decisions.get(draft_id, args.resto)
                t = time.monotonic()
                if args.lectura:
                    draft = by_id.get(draft_id, {})
                    words = len(f"{draft.get('pregunta', '')} {draft.get('respuesta', '')}".split())
                    passage = (draft.get("fuente") or {}).get("texto", "")
                    if passage not in passages_read:
                        passages_read.add(passage)
                        words += len(passage.split())
                    reading = 60 * words / args.lectura
                    reading_total += reading
                    time.sleep(reading)
                if decision == "aceptar":
                    page.keyboard.press("a")
                elif decision == "descartar":
                    page.keyboard.press("d")
                else:
                    page.keyboard.press("c")
                    for field in ("pregunta", "respuesta"):
                        box = f"textarea#borrador-{field}"
                        if args.tecleo and page.input_value(box) != decision[field]:
                            text = decision[field]
                            page.fill(box, "")
                            delay = 1000 * 60 * len(text.split()) / args.tecleo / max(1, len(text))
                            page.type(box, text, delay=delay, timeout=0)  # ms per key: words per minute spread over the keys
                        else:
                            page.fill(box, decision[field])
                    page.click("#guardar-correccion")
                quoted = json.dumps(draft_id)
                page.wait_for_selector(f"#borrador-actual article[data-id]:not([data-id={quoted}]), #fin-revision")
                label = decision if isinstance(decision, str) else "corregir"
                times.append((draft_id, label, time.monotonic() - t))
                print(f"{len(times):3d}  {label:<9}  {times[-1][2] * 1000:7.0f} ms  {draft_id}", flush=True)
                error = page.query_selector("#aviso:not([hidden])")
                if error:
                    print("error en la página:", error.inner_text(), file=sys.stderr)
                    return 1
            reviewing = time.monotonic() - started
            counts = page.inner_text("#recuento")
            t = time.monotonic()
            page.click("#usar-revisados")
            for _ in range(600):
                if "que se puede" in page.inner_text("#validacion") or page.query_selector("#aviso:not([hidden])"):
                    break
                time.sleep(0.05)
            writing = time.monotonic() - t
            if args.capturas:
                page.screenshot(path=str(work / "final.png"), full_page=True)
            validation = page.inner_text("#validacion").splitlines()[0] if page.inner_text("#validacion") else ""
            error = page.query_selector("#aviso:not([hidden])")
            browser.close()
        if times:
            each = sorted(x[2] for x in times)
            if args.lectura:
                print(f"\nde ellos, leyendo ({args.lectura:g} palabras/min): {reading_total:.0f} s; "
                      f"escribiendo correcciones: {'a ' + format(args.tecleo, 'g') + ' palabras/min' if args.tecleo else 'pegadas'}")
            print(f"\n{len(times)} decisiones en {reviewing:.1f} s: media {1000 * sum(each) / len(each):.0f} ms, "
                  f"mediana {1000 * each[len(each) // 2]:.0f} ms, máxima {1000 * each[-1]:.0f} ms")
        print(f"al final: {counts}")
        if error:
            print("no se escribió el dataset:", error.inner_text().splitlines()[0])
            return 1
        written = sorted((work / "datos").glob("*.jsonl"))
        lines = sum(1 for _ in written[0].open(encoding="utf-8")) if written else 0
        print(f"dataset de revisados escrito en {written[0] if written else '(ninguno)'}: {lines} ejemplos "
              f"({writing:.1f} s con su comprobación) — la página dice: {validation}")
        print(f"carpeta del estudio: {work}")
        return 0 if written else 1
    finally:
        studio.terminate()
        studio.wait(10)


if __name__ == "__main__":
    sys.exit(main())
