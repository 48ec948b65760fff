"""`afinar estudio` in a real headless Chromium (Debian's `chromium` driven by Playwright), with real jobs on a tiny
random model: the whole path a nurse would click through, a reload in the middle of training, and the security
checks a browser makes possible (no token, a foreign page)."""
import json
import re
import threading
import time
from pathlib import Path

import pytest

from afinar.studio.app import StudioOptions, create_app
from afinar.studio.workspace import Workspace
from tests.conftest import qa_rows
from tests.unit.test_serve import Server, free_port
from tests.unit.test_web_page import browser  # noqa: F401 — the Chromium fixture

SECRET_PHRASE = "quemadura 17"  # text of one row: the page must never show it unless asked


class LiveStudio(Server):
    """The studio's app under uvicorn in a thread (jobs are real processes)."""

    def __init__(self, folder: Path, token: str = "tok-de-prueba", **options):
        port = free_port()  # before the app: the cookie's name carries it
        self.token = token
        self.workspace = Workspace(folder)
        self.app = create_app(self.workspace, StudioOptions(token=token, port=port, job_env={"OMP_NUM_THREADS": "1"},
                                                            **options))
        super().__init__(self.app, port)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        super().__enter__()
        return self

    def __exit__(self, *exc):
        current = self.app.state.jobs.current()
        if current:  # a failing test must not leave a training running
            self.app.state.jobs.cancel(current["id"])
        self.app.state.server.stop()
        super().__exit__(*exc)


def write_rows(path: Path, rows: list[dict], broken_line: int | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if broken_line:
        lines[broken_line - 1] = lines[broken_line - 1].replace('"output"', "output")  # unquoted key: D001
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def new_job(page, click: str) -> None:
    """Click what starts a job and wait until the panel shows that job (not the previous one's final state)."""
    before = page.get_attribute("#panel-trabajo", "data-trabajo")
    page.click(click)
    wait_until(lambda: page.get_attribute("#panel-trabajo", "data-trabajo") not in (None, before), 30, "el trabajo nuevo")


def state_is(page, *states: str, timeout: float = 180_000) -> str:
    selector = ", ".join(f"#trabajo-estado[data-estado='{s}']" for s in states)
    page.wait_for_selector(selector, timeout=timeout)
    return page.get_attribute("#trabajo-estado", "data-estado")


def points(page) -> int:
    return int(page.get_attribute("#grafica", "data-puntos"))


def wait_until(condition, timeout: float = 180, what: str = "") -> None:
    """Polls from Python: the studio's Content-Security-Policy forbids the eval that page.wait_for_function needs
    (and the tests keep the policy on, so a page that broke it would fail here)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no llegó: {what}"
        time.sleep(0.2)


def test_whole_path_in_the_browser(browser, tmp_path, tiny_base):  # noqa: F811
    with LiveStudio(tmp_path / "estudio") as studio:
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(f"{studio.url}/?token={studio.token}")
        page.wait_for_selector("body[data-listo='1']")
        assert "token" not in page.url  # taken out of the address bar

        # --- Datos: a file with an error on line 3 is shown by line and field, never with the row's text
        rows = qa_rows(40)
        page.set_input_files("#archivo", str(write_rows(tmp_path / "con-error.jsonl", rows, broken_line=3)))
        page.click("#subir")
        problem = page.wait_for_selector(".problema.error[data-linea='3'][data-codigo='D001']")
        assert "Cómo arreglarlo" in problem.inner_text()
        page.set_input_files("#archivo", str(write_rows(tmp_path / "bien.jsonl", rows)))
        page.click("#subir")
        wait_until(lambda: "40 ejemplos que se pueden usar, 0 líneas con errores" in page.inner_text("#validacion"), 60, "validación")
        page.click("#ver-informe")
        page.wait_for_selector("#informe-datos li", timeout=120_000)
        assert SECRET_PHRASE not in page.content()
        page.click("#ver-ejemplos")  # asked for: now text is shown, with the trained tokens marked
        page.wait_for_selector("#ejemplos pre.ejemplo mark", timeout=60_000)

        # --- Modelo: base = the tiny model's folder; enough epochs that only «Detener» ends it
        page.click("#ir-modelo")
        page.fill("#nombre", "prueba")
        page.select_option("#base", "otra")
        page.fill("#base-otra", str(tiny_base))
        page.click("#avanzado summary")
        page.fill("#minutos", "0")
        page.fill("#epocas", "2000")
        page.fill("#lr", "0.01")
        page.fill("#lora-r", "4")
        page.click("#guardar-receta")
        page.wait_for_selector("#plan-veredicto", timeout=180_000)
        assert "GB de memoria" in page.inner_text("#plan-veredicto")
        assert "sin medir" in page.inner_text("#plan")
        page.click("#medir-plan")  # real steps of this recipe on this machine
        wait_until(lambda: "(medido aquí)" in page.inner_text("#plan"), 180, "el plan medido")
        page.click("#para-informaticos-modelo summary")
        assert "afinar train recetas/prueba.yaml" in page.inner_text("#comando")
        recipe = page.request.get(f"{studio.url}/api/recetas/prueba.yaml", headers={"X-Afinar-Token": studio.token})
        assert recipe.ok and "name: prueba" in recipe.text()

        # --- Entrenar: live chart; a reload replays the progress; «Detener y guardar»; «Reanudar»
        page.click("#ir-entrenar")
        new_job(page, "#empezar")
        wait_until(lambda: points(page) >= 3, 180, "3 puntos en la gráfica")
        assert page.inner_text("#lectura")
        before = points(page)
        page.reload()
        page.wait_for_selector("body[data-listo='1']")
        wait_until(lambda: points(page) >= before, 60, "la gráfica repuesta tras recargar")
        assert page.is_visible("#grafica")  # back on the same step (#entrenar in the address)
        page.click("#detener")
        assert state_is(page, "detenido", "fallido") == "detenido", page.inner_text("#panel-trabajo")
        stopped_at = points(page)
        info = json.loads((studio.workspace.runs / "prueba" / "afinar_run.json").read_text())
        assert info["stopped"] and info["steps"] >= stopped_at
        new_job(page, "#reanudar")
        wait_until(lambda: points(page) > stopped_at, 180, "pasos tras reanudar")
        page.click("#detener")
        assert state_is(page, "detenido", "fallido") == "detenido", page.inner_text("#panel-trabajo")
        assert json.loads((studio.workspace.runs / "prueba" / "afinar_run.json").read_text())["steps"] > info["steps"]

        # --- Evaluar: report, blind rating, printable summary
        page.click("#ir-evaluar")
        page.fill("#preguntas", "2")
        new_job(page, "#evaluar")
        assert state_is(page, "terminado", "fallido") == "terminado", page.inner_text("#panel-trabajo")
        page.wait_for_selector("#veredicto")  # the verdict first; the loss table is folded
        page.click("#empezar-valoracion")
        page.wait_for_selector(".par")
        cards = page.locator(".par")
        assert cards.count() == 2
        for i in range(2):
            cards.nth(i).locator(".elegir[data-eleccion='a']").click()
        wait_until(lambda: "Preferiste" in page.inner_text("#resultado-valoracion"), 30, "resultado de la valoración")
        summary = page.request.get(studio.url + page.get_attribute("#resumen-imprimible", "href"))
        assert summary.ok and "Tarjeta de datos" in summary.text() and "Valoración a ciegas" in summary.text()
        assert "Preferiste" in summary.text() and SECRET_PHRASE not in summary.text()

        # --- Exportar: a format with its usage line
        page.click("#ir-exportar")
        new_job(page, ".exportar[data-formato='safetensors']")
        assert state_is(page, "terminado", "fallido") == "terminado", page.inner_text("#panel-trabajo")
        page.wait_for_selector(".destino[data-formato='safetensors'] a.descargar")
        assert "afinar chat" in page.text_content(".destino[data-formato='safetensors'] .resultado")

        # --- Usar: the chat page of `afinar serve --con-base`, base and tuned side by side
        page.click("#ir-usar")
        page.click("#abrir-chat")
        page.wait_for_selector("#chat:not([hidden])", timeout=180_000)
        chat = page.frame_locator("#chat")
        chat.locator("body[data-listo='1']").wait_for(timeout=60_000)
        chat.locator("#entrada").fill("¿Qué hago con una quemadura?")
        chat.locator("#enviar").click()
        chat.locator(".msg.assistant[data-fin]").first.wait_for(timeout=60_000)

        # --- Ejecuciones: the run with its state and loss sparkline; the API for scripts
        page.click("#ir-ejecuciones")
        row = page.wait_for_selector("#lista-ejecuciones tr[data-ejecucion='prueba']")
        assert "detenido" in row.inner_text() and row.query_selector("svg.chispa polyline")
        runs = page.request.get(f"{studio.url}/api/ejecuciones", headers={"X-Afinar-Token": studio.token}).json()
        assert runs["ejecuciones"][0]["nombre"] == "prueba" and runs["ejecuciones"][0]["evaluada"]


def test_security_in_the_browser(browser, tmp_path):  # noqa: F811
    with LiveStudio(tmp_path / "estudio") as studio:
        context = browser.new_context()
        page = context.new_page()
        answer = page.goto(f"{studio.url}/")  # without the token the command printed
        assert answer.status == 401 and "no tiene la llave del estudio" in page.inner_text("body")
        answer = page.goto(f"{studio.url}/?token=otro")
        assert answer.status == 401
        assert page.request.get(f"{studio.url}/api/estado").status == 401

        page.goto(f"{studio.url}/?token={studio.token}")  # now the cookie is set in this browser
        page.wait_for_selector("body[data-listo='1']")
        # Keyboard only: Tab to a step and Enter opens it.
        page.focus("#ir-datos")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        assert page.is_visible("#paso-modelo") and not page.is_visible("#paso-datos")
        page.click("#ir-datos")
        # Not a JSONL (a PDF): a Spanish message in the page, nothing kept, the studio goes on.
        pdf = tmp_path / "informe.pdf"
        pdf.write_bytes(b"%PDF-1.4\n\x00\x01\x02 binario")
        page.set_input_files("#archivo", str(pdf))
        page.click("#subir")
        page.wait_for_selector("#aviso:not([hidden])")
        assert "E014" in page.inner_text("#aviso") and ".jsonl" in page.inner_text("#aviso")
        assert not list(studio.workspace.data.iterdir())
        # Another page (another origin: same machine, other port) tries to use the studio with that cookie.
        evil = LiveEvilPage(studio.url)
        with evil:
            other = context.new_page()
            other.goto(evil.url)
            wait_until(lambda: other.evaluate("window.result") is not None, 20, "la página ajena")
            assert other.evaluate("window.result").startswith("bloqueado")
        assert studio.app.state.jobs.current() is None and not list(studio.workspace.recipes.iterdir())
        refused = page.request.post(f"{studio.url}/api/recetas", headers={"Origin": "http://evil.example",
                                                                          "X-Afinar-Token": studio.token},
                                    data={"nombre": "x", "datos": "afinar:primeros_auxilios"})
        assert refused.status == 403
        context.close()


class LiveEvilPage:
    """A page on another port that POSTs to the studio as a cross-site attacker would (the browser sends the studio's
    same-site cookie, and its own Origin)."""

    def __init__(self, target: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        script = (f"<script>fetch('{target}/api/recetas', {{method: 'POST', credentials: 'include', mode: 'no-cors', "
                  "headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({nombre: 'robada', datos: "
                  "'afinar:primeros_auxilios'})}).then(() => window.result = 'bloqueado (opaco)', "
                  "e => window.result = 'bloqueado: ' + e)</script>")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = script.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def finished_run(runs: Path, name: str, lr: float, losses: list[float]) -> None:
    """A run folder as training leaves it (what «Ejecuciones» reads), without training."""
    import yaml

    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"name": name, "train": {"lr": lr, "epochs": 1}}), encoding="utf-8")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": v}) + "\n"
                                                  for i, v in enumerate(losses)), encoding="utf-8")
    (folder / "afinar_run.json").write_text(json.dumps({"steps": len(losses), "train_seconds": 61.0,
                                                        "final_train_loss": losses[-1], "stopped": False}),
                                            encoding="utf-8")


def test_runs_list_opens_and_compares_two_runs(browser, tmp_path):  # noqa: F811
    with LiveStudio(tmp_path / "estudio") as studio:
        finished_run(studio.workspace.runs, "primera", 2e-3, [4.0, 3.5, 3.1, 2.9])
        finished_run(studio.workspace.runs, "segunda", 1e-3, [4.0, 3.8, 3.6, 3.5, 3.4])
        page = browser.new_page()
        page.goto(f"{studio.url}/?token={studio.token}#ejecuciones")
        page.wait_for_selector("body[data-listo='1']")
        page.wait_for_selector("#lista-ejecuciones tr[data-ejecucion='segunda']")
        rows = page.locator("#lista-ejecuciones tbody tr")
        assert rows.count() == 2
        assert "terminado" in page.inner_text("tr[data-ejecucion='primera']")
        assert "2,900" in page.inner_text("tr[data-ejecucion='primera']")  # final loss, Spanish decimals
        assert page.locator("tr[data-ejecucion='segunda'] svg.chispa polyline").count() == 1
        assert page.is_disabled("#comparar")
        page.check("tr[data-ejecucion='primera'] input.marcar")
        page.check("tr[data-ejecucion='segunda'] input.marcar")
        page.click("#comparar")
        page.wait_for_selector("#comparacion table")
        compared = page.inner_text("#comparacion")
        assert "train.lr" in compared and "0.002" in compared and "0.001" in compared
        page.click("tr[data-ejecucion='primera'] button.abrir")
        page.wait_for_selector("#detalle-ejecucion h3")
        assert "primera" in page.inner_text("#detalle-ejecucion") and "metrics.jsonl" in page.inner_text("#detalle-ejecucion")
        assert page.inner_text("#ctx-ejecucion") == "primera"  # the run the other steps now work on


# --- the nurse's path (issue 30) -------------------------------------------------------------------------------------

DNI_TEXT = "12345678Z"  # a valid DNI (its letter checks out): the pre-flight check flags it
PATIENT = "Rosario Gómez"
# What a nurse does not know: shown only inside an explained term, a folded «detalles», a code or a list of choices.
JARGON = ["JSONL", "messages", "instruction", "tokens", "mediana", "p90", "max_length", "política", "Jaccard", "fuga",
          "<|im_start|>", "Hub", ".gguf", "chatml", "zephyr", "LoRA", "rango", "tasa de aprendizaje", "lote", "GiB",
          "gradient_checkpointing", "YAML", "checkpoint", "fp32", "bf16", "AVX512", "micro-lote", "chrF", "greedy",
          "voraz", "perplejidad", "3-gramas", "SHA-256", "logits", "safetensors", "q8_0", "Modelfile", "ONNX", "top_p",
          "API"]


def visible_text(html: str) -> str:
    """The page's text a person reads without opening anything: not in [hidden], a closed <details> (its summary
    counts), an explained term, a code, a <pre>, a <select>'s options, <script>/<style>/<svg>."""
    from html.parser import HTMLParser

    skip_tags = {"script", "style", "pre", "code", "select", "svg", "textarea", "template", "title", "head"}
    void = {"br", "img", "input", "meta", "link", "hr", "wbr", "source", "col", "area", "base"}

    class Reader(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack: list[tuple[str, bool | str]] = []  # (tag, hides its content: True, "closed" details, False)
            self.parts: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag in void:
                return
            a = dict(attrs)
            classes = (a.get("class") or "").split()
            hides = ("hidden" in a or tag in skip_tags or "termino" in classes or "codigo" in classes
                     or ("closed" if tag == "details" and "open" not in a else False))
            self.stack.append((tag, hides))

        def handle_endtag(self, tag):
            while self.stack:
                if self.stack.pop()[0] == tag:
                    break

        def handle_data(self, data):
            for index, (tag, hides) in enumerate(self.stack):
                through_summary = tag == "details" and index + 1 < len(self.stack) and self.stack[index + 1][0] == "summary"
                if hides is True or (hides == "closed" and not through_summary):
                    return
            self.parts.append(data)

    reader = Reader()
    reader.feed(html)
    return " ".join(reader.parts)


def jargon_in(page) -> list[str]:
    import re

    text = visible_text(page.content())
    return [w for w in JARGON if re.search(rf"(?<![\w.-]){re.escape(w)}(?![\w-])", text)]


def nurse_file(path: Path, bad_line: bool) -> tuple[Path, int]:
    """30 first-aid examples, one of them (in the held-out part) with a patient's name and DNI, two of them copied
    once more (duplicates) and, if asked, one line that is not valid JSON. Returns the file and the DNI's line."""
    from afinar.config import DataSection, DataSource
    from afinar.data.validate import gather

    rows = [{"pregunta": f"¿Qué hago ante la quemadura número {i} en la mano?",
             "respuesta": f"Enfría la zona {i} con agua corriente durante 20 minutos y cúbrela con un paño limpio."}
            for i in range(30)]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + [json.dumps(rows[4], ensure_ascii=False),
                                                                 json.dumps(rows[9], ensure_ascii=False)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    held_out = gather(DataSection(sources=[DataSource(path=str(path))])).val  # the split is by position
    dni_line = held_out[0].line
    rows[dni_line - 1] = {"pregunta": f"La paciente {PATIENT}, DNI {DNI_TEXT}, se quemó la mano: ¿qué hago?",
                          "respuesta": "Enfría la quemadura con agua corriente durante 20 minutos."}
    lines[dni_line - 1] = json.dumps(rows[dni_line - 1], ensure_ascii=False)
    if bad_line:
        lines.insert(len(lines), '{"pregunta": "¿Y una torcedura?", respuesta: "Reposo y frío."}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert dni_line in {e.line for e in gather(DataSection(sources=[DataSource(path=str(path))])).val}
    return path, dni_line


def shot(page, name: str) -> None:
    """Screenshots of each step for a person to read (AFINAR_CAPTURAS=carpeta)."""
    import os

    folder = os.environ.get("AFINAR_CAPTURAS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def no_null(page) -> None:
    """No "null", "undefined" or "NaN %" the page's own code wrote. The models' answers and the examples' text
    (`.respuesta`) are left out: a random test model may well write the word "null"."""
    import re

    text = page.inner_text("body")
    for written in page.locator(".respuesta").all_inner_texts():
        text = text.replace(written, "")
    found = re.search(r"\b(null|undefined|NaN %)\b", text)
    assert not found, text[max(0, found.start() - 300) : found.end() + 100]


def test_the_nurse_path(browser, tmp_path, smol_tokenizer_base):  # noqa: F811
    """Issue 30's «done means», walked as a nurse would: her file holds a DNI, two duplicates and a bad line."""
    with LiveStudio(tmp_path / "estudio") as studio:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(f"{studio.url}/?token={studio.token}")
        page.wait_for_selector("body[data-listo='1']")
        shot(page, "01-inicio")

        # Guardar with no data chosen: one sentence, never "null".
        page.click("#ir-modelo")
        page.click("#guardar-receta")
        page.wait_for_selector("#aviso:not([hidden])")
        assert "Elige primero tus ejemplos" in page.inner_text("#aviso")
        no_null(page)
        page.click("#ir-datos")

        # --- Datos: the bad line is named by its number; the corrected file is kept
        with_bad, _ = nurse_file(tmp_path / "mis-ejemplos.jsonl", bad_line=True)
        page.set_input_files("#archivo", str(with_bad))
        page.click("#subir")
        page.wait_for_selector(".problema.error[data-linea='33'][data-codigo='D001']")
        assert "Cómo arreglarlo" in page.inner_text("#validacion")
        good, dni_line = nurse_file(tmp_path / "mis-ejemplos-bien.jsonl", bad_line=False)
        page.set_input_files("#archivo", str(good))
        page.click("#subir")
        wait_until(lambda: "30 ejemplos que se pueden usar, 0 líneas con errores" in page.inner_text("#validacion"), 60,
                   "la validación del archivo corregido")
        # The line with personal data: named by number and kind, never shown; the person chooses.
        flagged = page.wait_for_selector(f"#privados li[data-linea='{dni_line}']")
        assert "DNI" in flagged.inner_text() and DNI_TEXT not in page.content()
        flagged.query_selector(".mantener-linea").click()
        assert "nunca se muestra" in flagged.inner_text()
        # The checks of the domain are ticked for first-aid data, with the reason.
        assert page.is_checked("input[name=comprobacion][value=enfermeria]")
        page.click("#ver-informe")
        page.wait_for_selector("#revision-personales")
        assert page.inner_text("#revision-personales").startswith("1 línea(s) con posibles datos personales")
        assert page.inner_text("#revision-duplicados").startswith("2 ejemplo(s) repetido(s)")
        assert DNI_TEXT not in page.content() and PATIENT not in page.content()
        no_null(page)
        assert jargon_in(page) == []
        shot(page, "02-datos")

        # --- Modelo: a name with a space is refused in one sentence; the base is a local folder
        page.click("#ir-modelo")
        page.fill("#nombre", "primeros auxilios")
        page.click("#guardar-receta")
        page.wait_for_selector("#aviso:not([hidden])")
        assert "sin espacios" in page.inner_text("#aviso")
        no_null(page)
        page.fill("#nombre", "primeros-auxilios")
        page.select_option("#base", "otra")
        page.fill("#base-otra", str(smol_tokenizer_base))
        page.click("#avanzado summary")
        page.fill("#minutos", "0")
        page.fill("#epocas", "2")
        page.fill("#lr", "0.01")
        page.fill("#lora-r", "4")
        page.click("#guardar-receta")
        page.wait_for_selector("#plan-veredicto", timeout=180_000)
        assert "GB de memoria" in page.inner_text("#plan-veredicto")
        page.click("#avanzado summary")  # closed again, as she would leave it
        no_null(page)
        assert jargon_in(page) == []
        shot(page, "03-modelo")

        # --- Entrenar
        page.click("#ir-entrenar")
        new_job(page, "#empezar")
        assert "en curso" in page.inner_text("#estado")
        assert state_is(page, "terminado", "fallido") == "terminado", page.inner_text("#panel-trabajo")
        wait_until(lambda: points(page) >= 2, 30, "la curva")
        # A second training while... none runs now: «Sustituir» is what E027 suggests, and it exists.
        page.click("#empezar")
        page.wait_for_selector("#aviso:not([hidden])")
        assert "Sustituir el que ya existe" in page.inner_text("#aviso") and page.is_visible("#sobrescribir")
        page.click("#aviso button")
        no_null(page)
        assert jargon_in(page) == []
        shot(page, "04-entrenar")

        # --- Evaluar: the status line and the bar follow the evaluation; the DNI question is never generated
        page.click("#ir-evaluar")
        page.fill("#preguntas", "5")
        new_job(page, "#evaluar")
        seen = set()
        while page.get_attribute("#trabajo-estado", "data-estado") == "en_curso":
            seen.add(page.inner_text("#eta"))
            time.sleep(0.05)
        assert "Evaluación" in page.inner_text("#estado")  # not the training's end any more
        assert any(t.startswith(("Preparando la evaluación", "Generando respuestas")) for t in seen), seen
        assert state_is(page, "terminado", "fallido") == "terminado", page.inner_text("#panel-trabajo")
        page.wait_for_selector("#veredicto")  # the verdict first; the loss table is folded
        said = page.inner_text("#evaluacion-cuantas")
        assert "Pediste 5" in said and "datos personales" in said, said
        page.click("#empezar-valoracion")
        page.wait_for_selector(".par")
        cards = page.locator(".par")
        for i in range(cards.count()):
            cards.nth(i).locator(".elegir[data-eleccion='a']").click()
        wait_until(lambda: "Preferiste" in page.inner_text("#resultado-valoracion"), 30, "el recuento")
        assert DNI_TEXT not in page.content() and PATIENT not in page.content()
        # A pressed rating button keeps white on blue when hovered.
        page.hover(".elegir[aria-pressed='true']")
        assert page.evaluate("getComputedStyle(document.querySelector(\".elegir[aria-pressed='true']\")).color") == "rgb(255, 255, 255)"
        page.hover("#ir-evaluar")
        assert page.evaluate("getComputedStyle(document.querySelector('#ir-evaluar')).color") == "rgb(255, 255, 255)"
        no_null(page)
        assert jargon_in(page) == []
        shot(page, "05-evaluar")
        summary = page.request.get(studio.url + page.get_attribute("#resumen-imprimible", "href")).text()
        assert "NO SE PUDO" not in summary
        assert re.search(r"Líneas con posibles datos personales[^<]*</td><td>1 \(DNI", summary), summary
        assert re.search(r"Ejemplos repetidos exactamente[^<]*</td><td>2<", summary)
        assert DNI_TEXT not in summary and PATIENT not in summary
        (tmp_path / "resumen.html").write_text(summary, encoding="utf-8")

        # --- Exportar: the download button serves the GGUF that LM Studio opens
        page.click("#ir-exportar")
        new_job(page, ".exportar[data-formato='gguf']")
        assert state_is(page, "terminado", "fallido", timeout=600_000) == "terminado", page.inner_text("#panel-trabajo")
        link = page.wait_for_selector(".destino[data-formato='gguf'] a.descargar")
        with page.expect_download() as download:
            link.click()
        saved = Path(download.value.path())
        assert saved.read_bytes()[:4] == b"GGUF" and download.value.suggested_filename.endswith("-q8_0.gguf")
        no_null(page)
        assert jargon_in(page) == []
        shot(page, "06-exportar")

        # --- Usar: the embedded base is not used here, so no «no usar como consejo»; the chat opens
        page.click("#ir-usar")
        page.click("#abrir-chat")
        page.wait_for_selector("#chat:not([hidden])", timeout=180_000)
        page.frame_locator("#chat").locator("body[data-listo='1']").wait_for(timeout=60_000)
        no_null(page)
        assert jargon_in(page) == []
        shot(page, "07-usar")

        # --- No saved file outside her own uploads holds the DNI or the name (reports, ratings, logs, recipes…)
        for path in studio.workspace.root.rglob("*"):
            if path.is_file() and path.parent != studio.workspace.data:
                text = path.read_bytes()
                assert DNI_TEXT.encode() not in text and PATIENT.encode() not in text, path

        # --- The way back in after closing the browser: the cookie outlives it (30 days), a bare address works
        cookie = next(c for c in context.cookies() if c["name"].startswith("afinar_estudio_"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > time.time() + 29 * 86400
        context.close()
        reopened = browser.new_context()
        reopened.add_cookies([cookie])  # what a browser restores from its profile: persistent cookies only
        again = reopened.new_page()
        assert again.goto(f"{studio.url}/").status == 200
        again.wait_for_selector("body[data-listo='1']")
        reopened.close()
        stranger = browser.new_page()  # another browser without the cookie: told how to get back in
        assert stranger.goto(f"{studio.url}/").status == 401
        assert "acceso directo" in stranger.inner_text("body")
        stranger.close()


# --- issue 26: the evaluation says first whether the answers are right; the expert rates each answer -----------------

FAKE_DATA_REPORT = {  # what the pre-flight check answers, with a sentence repeated in 61 % of the answers
    "personal_data": {"lines": 0, "by_kind": {}}, "duplicates": {"exact": 0, "near_prompts": {"count": 0}},
    "tokens": {"available": False}, "language": {"non_spanish_share": 0.0}, "leakage": {"exact": 0, "near": 0},
    "short_answers": {"count": 0}, "resumen": ["Errores: 0 · avisos: 0"],
    "repeated_sentences": [{"sentence": "Consulte siempre a su médico.", "count": 37, "share": 0.61}],
}


def test_the_verdict_comes_first_and_an_answer_is_rated(browser, tmp_path, monkeypatch):  # noqa: F811
    from afinar.studio import app as studio_app
    from afinar.studio.cards import HUMAN_RATINGS
    from tests.unit.test_studio import QUESTION_PHRASE, VERDICT_TEXT, evaluated_run

    monkeypatch.setattr(studio_app, "_data_report", lambda *args: FAKE_DATA_REPORT)
    with LiveStudio(tmp_path / "estudio") as studio:
        run_dir = evaluated_run(studio.workspace, "hecha")
        page = browser.new_page()
        page.goto(f"{studio.url}/?token={studio.token}")
        page.wait_for_selector("body[data-listo='1']")

        # --- Datos: a sentence in most answers is a warning, with the sentence only and what to do
        page.click("#usar-incluido")
        page.wait_for_selector("#ver-informe:not([disabled])")
        page.click("#ver-informe")
        repeated = page.wait_for_selector("#informe-datos li.aviso.repetida")
        assert ("61 % de las respuestas contienen «Consulte siempre a su médico.»: el modelo aprenderá a repetirla"
                in repeated.inner_text())
        assert "Cómo arreglarlo" in repeated.inner_text()

        # --- Evaluar: the verdict sentence first, then the key points table; loss and the rest folded
        page.click("#ir-ejecuciones")
        page.click("tr[data-ejecucion='hecha'] button.abrir")
        page.wait_for_selector("#detalle-ejecucion h3")
        page.click("#detalle-ejecucion button:has-text('Evaluar')")
        verdict = page.wait_for_selector("#veredicto")
        assert verdict.inner_text() == VERDICT_TEXT and "bueno" in verdict.get_attribute("class")
        assert page.locator("#resumen-evaluacion > *").first.get_attribute("id") == "veredicto"
        assert "Puntos clave cubiertos" in page.inner_text("#tabla-correccion")
        assert not page.is_visible("#tabla-evaluacion")  # inside «Detalles técnicos», closed
        page.click("#detalles-evaluacion summary")
        assert page.is_visible("#tabla-evaluacion")
        page.click("#detalles-evaluacion summary")

        # --- Blind rating: nothing of the key points before the choice; after it, what is missing and the danger
        page.click("#empezar-valoracion")
        first = page.locator(".par[data-indice='0']")
        first.wait_for()
        assert first.locator(".hallazgos, .calificar").count() == 0
        first.locator(".elegir[data-eleccion='igual']").click()
        first.locator(".calificar").first.wait_for()
        tuned = "a" if first.locator("[data-respuesta='a'] .respuesta").inner_text().startswith("Enfría") else "b"
        base = "b" if tuned == "a" else "a"
        assert "Peligro: aconseja «mantequilla»" in first.locator(f"[data-respuesta='{base}'] .hallazgos").inner_text()
        assert "Le falta este punto clave: «agua corriente»" in first.locator(f"[data-respuesta='{base}']").inner_text()
        assert "Dice todos los puntos clave" in first.locator(f"[data-respuesta='{tuned}']").inner_text()
        # She rates the tuned answer (still called only A or B), with a note.
        mine = first.locator(f"[data-respuesta='{tuned}'] .calificar")
        mine.locator(".nota-valoracion").fill("Completa y segura.")
        mine.locator(".calificacion[data-valoracion='correcta']").click()
        page.wait_for_selector("#tabla-valoraciones")
        assert page.inner_text("#tabla-valoraciones tr[data-valoracion='correcta']").split() == ["Correctas", "0", "1"]
        assert mine.locator(".calificacion[data-valoracion='correcta']").get_attribute("aria-pressed") == "true"
        saved = json.loads((run_dir / HUMAN_RATINGS).read_text())["respuestas"]
        assert [(e["modelo"], e["valoracion"], e["nota"]) for e in saved] == [("tuned", "correcta", "Completa y segura.")]
        assert json.loads((run_dir / "informe" / "metrics.json").read_text())["human_ratings"]["tuned"]["correcta"] == 1
        assert page.is_visible("#descargar-valoraciones")
        shot(page, "evaluar-claves")
        download = page.request.get(studio.url + page.get_attribute("#descargar-valoraciones", "href"))
        assert download.ok and json.loads(download.text().splitlines()[0])["valoracion"] == "correcta"

        # --- The last choice reveals which model wrote each answer, with her rating kept
        page.locator(".par[data-indice='1'] .elegir[data-eleccion='a']").click()
        wait_until(lambda: "Preferiste" in page.inner_text("#resultado-valoracion"), 30, "el recuento")
        revealed = page.wait_for_selector("#respuestas .par.revelada[data-indice='0']")
        assert page.locator("#valoracion .calificar").count() == 0  # rated from now on where the model is named
        assert "Tu modelo" in revealed.inner_text() and "Modelo de partida" in revealed.inner_text()
        assert revealed.query_selector("[data-modelo='afinado'] .calificacion[aria-pressed='true']").inner_text() == "Correcta"
        revealed.query_selector("[data-modelo='base'] .calificacion[data-valoracion='peligrosa']").click()
        wait_until(lambda: page.inner_text("#tabla-valoraciones tr[data-valoracion='peligrosa']").split()
                   == ["Peligrosas", "1", "0"], 20, "la valoración del modelo de partida")
        shot(page, "evaluar-reveladas")
        no_null(page)
        assert jargon_in(page) == []

        # Reloaded, the verdict is still first and her counts are there; no jargon, no "null".
        page.reload()
        page.wait_for_selector("body[data-listo='1']")
        page.click("#ir-evaluar")
        page.wait_for_selector("#tabla-valoraciones")
        assert page.locator("#resumen-evaluacion > *").first.inner_text() == VERDICT_TEXT
        no_null(page)
        assert jargon_in(page) == []
        assert QUESTION_PHRASE not in page.inner_text("#resumen-evaluacion")


# --- Datos: a spreadsheet, the table editor, the drafts review (short: no job, no model) ----------------------------


def test_a_spreadsheet_is_previewed_mapped_used_and_edited_in_a_table(browser, tmp_path):  # noqa: F811
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["Pregunta", "Respuesta", "Notas"])
    for i in range(12):
        sheet.append([f"¿Qué hago ante la quemadura número {i}?", f"Enfría la zona {i} con agua corriente 20 minutos.",
                      f"Protocolo {i}"])
    path = tmp_path / "Ejemplos de enfermería.xlsx"
    book.save(path)
    with LiveStudio(tmp_path / "estudio") as studio:
        page = browser.new_page()
        page.goto(f"{studio.url}/?token={studio.token}")
        page.wait_for_selector("body[data-listo='1']")
        assert page.is_disabled("#abrir-editor")
        page.set_input_files("#archivo", str(path))
        page.click("#subir")
        page.wait_for_selector("#tabla-vista:not([hidden]) #tabla-filas tbody tr")
        assert page.locator("#tabla-filas tbody tr").count() == 10  # the first rows
        assert "¿qué hay en cada columna?" in page.inner_text("#tabla-vista")
        assert page.eval_on_selector("#columna-pregunta", "e => e.value") == "Pregunta"
        assert page.eval_on_selector("#columna-contexto", "e => e.value") == ""
        page.select_option("#columna-contexto", "Notas")  # her choice: the notes are context
        page.click("#usar-columnas")
        wait_until(lambda: "12 ejemplos que se pueden usar, 0 líneas con errores" in page.inner_text("#validacion"), 30,
                   "la validación de la tabla")
        assert page.is_hidden("#tabla-vista")
        dataset = studio.workspace.datasets()[0]["id"]
        assert "Protocolo 0" in (studio.workspace.data / f"{dataset}.jsonl").read_text(encoding="utf-8")

        page.click("#abrir-editor")
        answer = page.wait_for_selector("#editor-tabla tr[data-linea='1'] textarea[data-campo='respuesta']")
        assert "Página 1 de 1 (12 ejemplos)" in page.inner_text("#editor-pagina")
        answer.fill("Enfría la zona con agua corriente durante 20 minutos y cúbrela con un paño limpio.")
        assert "1 cambio sin guardar" in page.inner_text("#editor-pendientes")
        page.click("#editor-tabla tr[data-linea='2'] .borrar-fila")
        page.click("#editor-guardar")
        wait_until(lambda: "Guardado: 11 ejemplos" in page.inner_text("#estado"), 30, "el guardado")
        text = (studio.workspace.data / f"{dataset}.jsonl").read_text(encoding="utf-8")
        assert "paño limpio" in text and "número 1?" not in text
        # An empty answer is refused, naming the row; the file stays as it was.
        page.fill("#editor-tabla tr[data-linea='3'] textarea[data-campo='respuesta']", "")
        page.click("#editor-guardar")
        page.wait_for_selector("#aviso:not([hidden])")
        assert "línea 3" in page.inner_text("#aviso") and "respuesta" in page.inner_text("#aviso")
        assert (studio.workspace.data / f"{dataset}.jsonl").read_text(encoding="utf-8") == text
        assert jargon_in(page) == []


def test_drafts_are_reviewed_with_the_keyboard_and_clicks(browser, tmp_path):  # noqa: F811
    with LiveStudio(tmp_path / "estudio") as studio:
        folder = studio.workspace.root / "borradores"
        folder.mkdir()
        drafts = [{"id": f"p{i}-1", "estado": "sin revisar", "pregunta": f"¿Qué hago ante la quemadura {i}?",
                   "respuesta": f"Agua corriente {i}.", "fuente": {"archivo": "protocolo.pdf", "pagina": i + 1,
                                                                   "seccion": None, "pasaje": f"p{i}",
                                                                   "texto": f"Pasaje {i}: enfriar con agua."},
                   "profesor": {"modelo": "qwen2.5:7b", "url": "http://127.0.0.1:11434/v1"},
                   **({"datos_personales": ["teléfono"]} if i == 0 else {})} for i in range(4)]
        (folder / "protocolo.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in drafts),
                                                encoding="utf-8")
        page = browser.new_page()
        page.goto(f"{studio.url}/?token={studio.token}")
        page.wait_for_selector("body[data-listo='1']")
        assert "Permitir un servidor fuera de este equipo" in page.inner_text("#borradores")
        page.click("#abrir-borradores")
        page.wait_for_selector("#borrador-titulo")
        counts = lambda: page.inner_text("#recuento")  # noqa: E731
        assert page.get_attribute("#recuento", "role") == "status"
        assert "Sin revisar: 4" in counts() and "Borrador 1 de 4" in page.inner_text("#borrador-titulo")
        assert page.inner_text("#borrador-pasaje") == "Pasaje 0: enfriar con agua."
        assert "protocolo.pdf, página 1" in page.inner_text("#borrador-fuente")
        assert page.is_visible("#marca-personal") and "datos personales" in page.inner_text("#marca-personal")
        page.keyboard.press("a")  # aceptar (the focus is on the draft's title, not in a text box)
        wait_until(lambda: "Aceptados: 1" in counts(), 10, "aceptar con «a»")
        assert "Borrador 2 de 4" in page.inner_text("#borrador-titulo")
        page.keyboard.press("c")  # corregir: the texts become editable, and typing there is only typing
        page.wait_for_selector("textarea#borrador-pregunta")
        page.keyboard.press("End")
        page.keyboard.type(" Dadas las circunstancias")  # a, d, c typed in the text box: no shortcut fires
        page.fill("#borrador-respuesta", "Agua corriente durante 20 minutos.")
        assert "Sin revisar: 3" in counts()
        page.click("#guardar-correccion")
        wait_until(lambda: "Corregidos: 1" in counts(), 10, "la corrección")
        saved = [json.loads(x) for x in (folder / "protocolo.jsonl").read_text(encoding="utf-8").splitlines()]
        assert saved[1]["pregunta"].endswith("Dadas las circunstancias") and saved[1]["estado"] == "corregido"
        page.click("#descartar-borrador")
        wait_until(lambda: "Descartados: 1" in counts(), 10, "descartar con un clic")
        page.keyboard.press("z")  # deshacer
        wait_until(lambda: "Descartados: 0" in counts() and "Sin revisar: 2" in counts(), 10, "deshacer con «z»")
        assert "Borrador 3 de 4" in page.inner_text("#borrador-titulo")
        page.focus("#descartar-borrador")
        page.keyboard.press("Enter")
        wait_until(lambda: "Descartados: 1" in counts(), 10, "descartar con Enter")
        page.keyboard.press("d")
        wait_until(lambda: "Sin revisar: 0" in counts(), 10, "descartar con «d»")
        assert page.is_visible("#fin-revision") and page.is_enabled("#usar-revisados")
        page.click("#usar-revisados")
        wait_until(lambda: "2 ejemplos que se pueden usar" in page.inner_text("#validacion"), 30, "los revisados")
        assert "revisados" in page.inner_text("#estado")
        dataset = studio.workspace.datasets()[0]["id"]
        assert page.eval_on_selector("#subidos", "e => e.value") == dataset
        assert jargon_in(page) == []
