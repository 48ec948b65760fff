"""The studio as a first-aid nurse uses it, with the embedded base, in Chromium: timings of each step, what the page
says, the answers she reads, and screenshots (issue 30's walk, repeatable on any machine).

    .venv/bin/python bench/studio_nurse.py [--capturas carpeta] [--preguntas 5] [--preajuste rapido]

`afinar estudio` runs as she starts it (its own process, a fresh folder, the embedded SmolLM2-135M), and headless
Chromium (Debian's `chromium`, through Playwright) clicks what she clicks. Her file: 30 examples of the shipped
first-aid set (her own material), one of them rewritten with a patient's name and DNI, two copied once more
(duplicates), and a first upload with one line that is not valid JSON. Steps: upload (the bad line named), the
corrected upload, «Mantener» for the flagged line, «Revisar los datos», the plan, training with the preset, the
evaluation and the blind rating (answers printed), the printable summary's counts, the GGUF export and its download,
the chat side by side with the base, and the way back in with the remembered cookie after closing the browser.

Prints each step's wall time, the page's own sentences, every answer (A/B, then which was which), and the checks of
the issue: the DNI in no file outside her uploads, no "null" on any page. Not a test: nothing fails on a number; the
timings depend on the CPU (named in the first line, from lscpu).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DNI, PATIENT = "12345678Z", "Rosario Gómez"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = re.search(r"Model name:\s+(.*)", out)
        flags = re.search(r"Flags:\s+(.*)", out)
        kinds = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flags and f in flags.group(1).split()]
        return f"{model.group(1).strip() if model else '?'}, {os.cpu_count()} núcleos, {'/'.join(kinds) or 'sin AVX2'}"
    except OSError:
        return "?"


def nurse_files(folder: Path) -> tuple[Path, Path]:
    from afinar.data.formats import load_examples, shipped_dataset

    examples = load_examples(shipped_dataset("primeros_auxilios"), "auto", [])[:30]
    rows = [{"pregunta": e.messages[0]["content"], "respuesta": e.messages[1]["content"]} for e in examples]
    rows[7] = {"pregunta": f"La paciente {PATIENT}, DNI {DNI}, se ha quemado la mano con aceite: ¿qué hago?",
               "respuesta": rows[7]["respuesta"]}
    lines = [json.dumps(r, ensure_ascii=False) for r in rows + [rows[3], rows[12]]]
    good = folder / "mis-ejemplos.jsonl"
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = folder / "mis-ejemplos-primera-version.jsonl"
    bad.write_text("\n".join(lines + ['{"pregunta": "¿Y una torcedura?", respuesta: "Reposo y frío."}']) + "\n",
                   encoding="utf-8")
    return bad, good


class Clock:
    def __init__(self):
        self.times: dict[str, float] = {}

    def step(self, name: str):
        clock = self

        class Timer:
            def __enter__(self):
                self.start = time.monotonic()
                print(f"\n== {name}", flush=True)

            def __exit__(self, *exc):
                clock.times[name] = time.monotonic() - self.start
                print(f"   ({clock.times[name]:.0f} s)", flush=True)

        return Timer()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capturas", default=None, help="carpeta donde guardar una captura de cada paso")
    parser.add_argument("--preguntas", type=int, default=5)
    parser.add_argument("--preajuste", default="rapido", choices=["rapido", "equilibrado", "cuidadoso"])
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"CPU: {cpu_name()}")
    work = Path(tempfile.mkdtemp(prefix="afinar-enfermera-"))
    bad, good = nurse_files(work)
    shots = Path(args.capturas) if args.capturas else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = work / "estudio"
    studio = subprocess.Popen([sys.executable, "-m", "afinar", "estudio", "--no-abrir", "--puerto", str(port),
                               "--carpeta", str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = studio.stdout.readline().split(": ", 1)[1].strip()
    clock = Clock()
    pages_text = []

    def shot(page, name):
        pages_text.append(page.inner_text("body"))
        if shots:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    def job_done(page, timeout_s=3600):
        page.wait_for_selector("#trabajo-estado:not([data-estado='en_curso']):not([data-estado=''])",
                               timeout=timeout_s * 1000)
        return page.get_attribute("#trabajo-estado", "data-estado")

    def start_job(page, selector):
        before = page.get_attribute("#panel-trabajo", "data-trabajo")
        page.click(selector)
        deadline = time.monotonic() + 60
        while page.get_attribute("#panel-trabajo", "data-trabajo") in (None, before):
            assert time.monotonic() < deadline, "el trabajo no empezó"
            time.sleep(0.2)

    try:
        with sync_playwright() as p:
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="es-ES")
            page = context.new_page()
            page.on("dialog", lambda d: d.accept())
            for _ in range(100):
                try:
                    page.goto(url)
                    break
                except Exception:  # noqa: BLE001 — not listening yet
                    time.sleep(0.2)
            page.wait_for_selector("body[data-listo='1']")

            with clock.step("Datos: subir, corregir, revisar"):
                page.set_input_files("#archivo", str(bad))
                page.click("#subir")
                page.wait_for_selector(".problema.error")
                print("   primera versión:", page.inner_text("#validacion").replace("\n", " | ")[:400])
                page.set_input_files("#archivo", str(good))
                page.click("#subir")
                page.wait_for_selector("#validacion:has-text('0 líneas con errores')", timeout=60_000)
                page.wait_for_selector("#privados li .mantener-linea", timeout=60_000)
                print("   corregida:", page.inner_text("#validacion").split("\n")[0])
                print("   datos personales:", page.inner_text("#privados li").split("\n")[0])
                page.click("#privados .mantener-linea")
                page.click("#ver-informe")
                page.wait_for_selector("#revision-personales", timeout=120_000)
                print("   revisión:", page.inner_text("#informe-datos ul").replace("\n", " | "))
                print("   comprobaciones marcadas:", [c for c in ("enfermeria", "epicrisis", "tutor")
                                                       if page.is_checked(f"input[name=comprobacion][value={c}]")])
                shot(page, "01-datos")

            with clock.step("Modelo: guardar y plan"):
                page.click("#ir-modelo")
                page.fill("#nombre", "primeros-auxilios")
                page.check(f"input[name=preajuste][value={args.preajuste}]")
                page.click("#guardar-receta")
                page.wait_for_selector("#plan-veredicto", timeout=600_000)
                print("  ", page.inner_text("#plan-veredicto"))
                print("  ", page.inner_text("#plan-tiempo"))
                shot(page, "02-modelo")

            with clock.step("Entrenar"):
                page.click("#ir-entrenar")
                start_job(page, "#empezar")
                state = job_done(page)
                print("   estado:", state, "·", page.inner_text("#eta"), "·", page.inner_text("#lectura"))
                shot(page, "03-entrenar")

            with clock.step(f"Evaluar ({args.preguntas} preguntas)"):
                page.click("#ir-evaluar")
                page.fill("#preguntas", str(args.preguntas))
                start_job(page, "#evaluar")
                seen = []
                while page.get_attribute("#trabajo-estado", "data-estado") == "en_curso":
                    text = page.inner_text("#eta")
                    if text and (not seen or seen[-1] != text):
                        seen.append(text)
                    time.sleep(0.5)
                print("   progreso visto:", " → ".join(seen[:3] + (["…"] if len(seen) > 6 else []) + seen[-3:]))
                print("   estado:", page.get_attribute("#trabajo-estado", "data-estado"))
                page.wait_for_selector("#veredicto")  # first whether the answers are right; the rest is folded
                print("   veredicto:", page.inner_text("#veredicto"))
                print("  ", page.inner_text("#evaluacion-cuantas"))
                page.click("#detalles-evaluacion summary")
                print("  ", page.inner_text("#tabla-evaluacion").replace("\n", " | "))
                print("   aviso «no usar como consejo» visible:", page.is_visible("#paso-evaluar .consejo"))
                page.click("#empezar-valoracion")
                page.wait_for_selector(".par")
                cards = page.locator(".par")
                pairs = []
                for i in range(cards.count()):
                    card = cards.nth(i)
                    answers = card.locator(".respuesta")
                    pairs.append((card.locator(".pregunta").inner_text(), answers.nth(0).inner_text(),
                                   answers.nth(1).inner_text()))
                    card.locator(".elegir[data-eleccion='igual']").click()
                ratings = folder / "ejecuciones" / "primeros-auxilios" / "valoracion_ciega.json"
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # each click is saved by the studio
                    rating = json.loads(ratings.read_text()) if ratings.is_file() else {"elecciones": {}}
                    if len(rating["elecciones"]) == len(pairs):
                        break
                    time.sleep(0.2)
                for (question, a, b), first in zip(pairs, rating["orden"]):
                    tuned, base = (a, b) if first == "afinado" else (b, a)
                    print(f"\n   P: {question}\n   afinado: {tuned}\n   base:    {base}")
                shot(page, "04-evaluar")
                summary = page.request.get(url.split("/?")[0] + page.get_attribute("#resumen-imprimible", "href")).text()
                personal = re.search(r"Líneas con posibles datos personales[^<]*</td><td>([^<]*)<", summary)
                copies = re.search(r"Ejemplos repetidos exactamente[^<]*</td><td>([^<]*)<", summary)
                print(f"\n   resumen imprimible: datos personales «{personal and personal.group(1)}», "
                      f"repetidos «{copies and copies.group(1)}», no se pudo: {'NO SE PUDO' in summary}")

            with clock.step("Exportar GGUF y descargarlo"):
                page.click("#ir-exportar")
                start_job(page, ".exportar[data-formato='gguf']")
                print("   estado:", job_done(page))
                link = page.wait_for_selector(".destino[data-formato='gguf'] a.descargar")
                with page.expect_download() as download:
                    link.click()
                saved = Path(download.value.path())
                print(f"   descargado: {download.value.suggested_filename}, {saved.stat().st_size / 1e6:.1f} MB, "
                      f"cabecera {saved.read_bytes()[:4]!r}; botón: {link.inner_text()}")
                shot(page, "05-exportar")

            with clock.step("Usar: chat lado a lado"):
                page.click("#ir-usar")
                page.click("#abrir-chat")
                page.wait_for_selector("#chat:not([hidden])", timeout=300_000)
                chat = page.frame_locator("#chat")
                chat.locator("body[data-listo='1']").wait_for(timeout=120_000)
                chat.locator("#comparar").check()
                question = "Mi hijo se ha tragado una pila de botón, ¿qué hago?"
                chat.locator("#entrada").fill(question)
                chat.locator("#enviar").click()
                chat.locator(".columna.base .msg.assistant[data-fin]").wait_for(timeout=300_000)
                chat.locator(".columna.afinado .msg.assistant[data-fin]").wait_for(timeout=300_000)
                print(f"   P: {question}")
                print("   afinado:", chat.locator(".columna.afinado .msg.assistant").inner_text())
                print("   base:   ", chat.locator(".columna.base .msg.assistant").inner_text())
                print("   aviso «no usar como consejo» visible:", page.is_visible("#paso-usar .consejo"))
                shot(page, "06-usar")

            with clock.step("Volver a entrar tras cerrar el navegador"):
                cookie = next(c for c in context.cookies() if c["name"].startswith("afinar_estudio_"))
                context.close()
                again = browser.new_context()
                again.add_cookies([cookie])
                back = again.new_page()
                status = back.goto(url.split("?")[0]).status
                back.wait_for_selector("body[data-listo='1']")
                print(f"   dirección sin token: HTTP {status}, estudio abierto; la cookie dura "
                      f"{(cookie['expires'] - time.time()) / 86400:.0f} días")
                again.close()
            browser.close()
    finally:
        studio.terminate()
        studio.wait(10)

    leaks = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.parent != folder / "datos"
             and (DNI.encode() in p.read_bytes() or PATIENT.encode() in p.read_bytes())]
    nulls = sum(bool(re.search(r"\b(null|undefined)\b", t)) for t in pages_text)
    print("\n== Resumen")
    for name, seconds in clock.times.items():
        print(f"   {name}: {seconds:.0f} s")
    print(f"   archivos (fuera de datos/) con el DNI o el nombre: {leaks or 'ninguno'}; páginas con «null»: {nulls}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
