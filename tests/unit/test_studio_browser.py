"""`afinar estudio` in a real headless Chromium (Debian's `chromium` driven by Playwright), with real jobs on a tiny
random model: the whole path a nurse would click through, a reload in the middle of training, and the security
checks a browser makes possible (no token, a foreign page)."""
import json
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
        wait_until(lambda: "40 ejemplos válidos, 0 errores" in page.inner_text("#validacion"), 60, "validación")
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
        assert "GiB" in page.inner_text("#plan-veredicto")
        assert "sin medir" in page.inner_text("#plan")
        page.click("#medir-plan")  # real steps of this recipe on this machine
        wait_until(lambda: "(medido aquí)" in page.inner_text("#plan"), 180, "el plan medido")
        page.click("#ver-comando")
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
        page.wait_for_selector("#tabla-evaluacion")
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
        page.wait_for_selector(".exportacion[data-formato='safetensors'] pre.uso")
        assert "afinar chat" in page.inner_text(".exportacion[data-formato='safetensors']")

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
        assert "detenida" in row.inner_text() and row.query_selector("svg.chispa polyline")
        runs = page.request.get(f"{studio.url}/api/ejecuciones", headers={"X-Afinar-Token": studio.token}).json()
        assert runs["ejecuciones"][0]["nombre"] == "prueba" and runs["ejecuciones"][0]["evaluada"]


def test_security_in_the_browser(browser, tmp_path):  # noqa: F811
    with LiveStudio(tmp_path / "estudio") as studio:
        context = browser.new_context()
        page = context.new_page()
        answer = page.goto(f"{studio.url}/")  # without the token the command printed
        assert answer.status == 401 and "Falta el token" in page.inner_text("body")
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
        assert "terminada" in page.inner_text("tr[data-ejecucion='primera']")
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
