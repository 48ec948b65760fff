"""The studio's model step as a user clicks it, in Chromium: the shipped first-aid examples → 2. Modelo → save →
«Comparar otros modelos de partida» (the bases catalog, GET /api/bases) → «Usar este» on Qwen2.5-0.5B. Prints the
table as the page shows it and how long it took, and what the plan card says after the base changed.

    .venv/bin/python bench/studio_bases.py

Needs Debian's chromium (make test-deps) and the `test` extra (Playwright). Offline, the plan of a Hub base ends in M003
after ~25 s (huggingface_hub retries); the loop below waits up to 60 s for it.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from playwright.sync_api import sync_playwright

work = tempfile.mkdtemp(prefix="afinar-bases-")
studio = subprocess.Popen([sys.executable, "-m", "afinar", "estudio", "--no-abrir", "--puerto", "7872", "--carpeta", work],
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
url = studio.stdout.readline().split(": ", 1)[1].strip()
try:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="es-ES").new_page()
        page.on("dialog", lambda d: d.accept())
        for _ in range(100):
            try:
                page.goto(url)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.2)
        page.wait_for_selector("body[data-listo='1']")
        page.click("#usar-incluido")
        page.wait_for_selector("#validacion:has-text('0 líneas con errores')", timeout=120_000)
        page.click("#ir-modelo")
        page.fill("#nombre", "primeros-auxilios")
        page.click("#guardar-receta")
        page.wait_for_selector("#plan-veredicto", timeout=600_000)
        t = time.monotonic()
        page.click("#ver-bases")
        page.wait_for_selector("#tabla-bases tbody tr", timeout=600_000)
        print(f"tabla en {time.monotonic() - t:.1f} s")
        print(page.inner_text("#bases"))
        page.screenshot(path=os.path.join(work, "bases.png"), full_page=True)
        page.click("tr[data-base='Qwen/Qwen2.5-0.5B-Instruct'] .usar-base")
        for _ in range(120):
            text = page.inner_text("#plan") + " " + page.inner_text("#mensaje") if page.query_selector("#mensaje") else page.inner_text("#plan")
            if "Calculando" not in text:
                break
            time.sleep(0.5)
        page.screenshot(path=os.path.join(work, "tras-usar.png"), full_page=True)
        print("base elegida:", page.eval_on_selector("#base", "e => e.value"), "|", page.eval_on_selector("#base-otra", "e => e.value"))
        print("plan:", page.inner_text("#plan")[:600].replace("\n", " | "))
        print("avisos:", [e.inner_text() for e in page.query_selector_all(".error, .problema, [role=alert]")][:3])
        print("receta:", [line for line in page.inner_text("#receta-yaml").splitlines() if "base" in line][:2])
    print("capturas en", work)
finally:
    studio.terminate()
