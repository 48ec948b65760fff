"""`afinar estudio` through its HTTP API (FastAPI's TestClient, no browser, no real training): the security guard,
uploads, recipes, jobs run by a fake "python" that only writes what a training writes, the live events, the runs list,
the blind A/B rating, the rating of each answer and the printable summary. The real training path is test_studio_browser.py's."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import yaml
from fastapi.testclient import TestClient

from afinar.errors import AfinarError
from afinar.runs import EVAL_DIR, METRICS, RECIPE, RUN_INFO, STOP_REQUEST
from afinar.studio.app import MAX_JSON_BODY, StudioOptions, create_app
from afinar.studio.events import loss_reading
from afinar.studio.jobs import JobManager
from afinar.studio.workspace import NAME, RATINGS, Workspace

TOKEN = "t0k"
PORT = 7860
BASE_URL = f"http://127.0.0.1:{PORT}"
AUTH = {"X-Afinar-Token": TOKEN}
ROW_PHRASE = "cigüeña violeta"  # in every row of the test data: no answer of the studio may contain it
QUESTION_PHRASE = "pregunta apartada del faro"  # in the evaluation's questions: not in the printable summary

# A stand-in for the interpreter: `FAKE -m afinar train recetas/NAME.yaml …` writes what a training writes into
# ejecuciones/NAME (metrics.jsonl, the progress bar, afinar_run.json) and behaves as FAKE_MODE says:
#   ok    — writes FAKE_STEPS metric lines and exits 0
#   fail  — prints an afinar error (T016 with a suggestion) to stderr and exits 2
#   wait  — after the metrics, waits for the stop file (then records that it saw it in `visto`, waits for the test's
#           `soltar` and exits 0 as a stopped training) or for `soltar` alone (exits 0); gives up after FAKE_WAIT_S
#   child — like wait, but first starts a child process (its pid in `hijo.pid`), as `afinar train` starts the
#           supervised training
# Every start appends its arguments to `llamadas.jsonl` in the studio's folder (its working directory).
FAKE_PYTHON = r'''#!{python}
import json, os, subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
with open("llamadas.jsonl", "a", encoding="utf-8") as calls:
    calls.write(json.dumps(args) + "\n")
assert args[:2] == ["-m", "afinar"], args
mode = os.environ.get("FAKE_MODE", "ok")
if args[2] == "train" and "--output" in args:
    run = Path(args[args.index("--output") + 1]).name
else:
    run = Path(args[3]).stem
run_dir = Path("ejecuciones") / run
if mode == "fail":
    print("Cargando el modelo…", flush=True)
    sys.stderr.write("error T016: sin memoria\n  sugerencia: baja tokens_per_batch\n")
    sys.exit(2)
run_dir.mkdir(parents=True, exist_ok=True)
steps = int(os.environ.get("FAKE_STEPS", "4"))
with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics:
    for step in range(1, steps + 1):
        metrics.write(json.dumps({"step": step, "loss": round(3.0 - 0.25 * step, 4)}) + "\n")
        metrics.flush()
        sys.stdout.write(f"\rEntrenando:  {100 * step // steps}%|####      | {step}/{steps} [00:0{step}<00:01,  1.00paso/s]")
        sys.stdout.flush()
print(flush=True)
stopped = False
if mode == "child":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path("hijo.pid").write_text(str(child.pid))
if mode in ("wait", "child"):
    deadline = time.time() + float(os.environ.get("FAKE_WAIT_S", "60"))
    stop, release = run_dir / ".detener", Path("soltar")
    while time.time() < deadline and not release.exists():
        if stop.exists():
            Path("visto").write_text(str(stop.resolve()))
            stopped = True
            while time.time() < deadline and not release.exists():
                time.sleep(0.02)
            break
        time.sleep(0.02)
(run_dir / "afinar_run.json").write_text(json.dumps(
    {"steps": steps, "train_seconds": 1.5, "final_train_loss": 3.0 - 0.25 * steps, "stopped": stopped}))
print("Entrenamiento terminado.", flush=True)
'''


# --- fixtures and helpers -------------------------------------------------------------------------------------------


def make_fake_python(folder: Path) -> Path:
    path = folder / "python-falso"
    path.write_text(FAKE_PYTHON.replace("{python}", sys.executable), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class Studio:
    """The app on a fresh folder, a TestClient that speaks like the page (token header), and clean-up of any job a
    failing test leaves running."""

    def __init__(self, folder: Path, mode: str = "ok", **options):
        folder.mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(folder / "estudio")
        env = {"FAKE_MODE": mode, "FAKE_WAIT_S": "60", **options.pop("job_env", {})}
        python = options.pop("python", None) or str(make_fake_python(folder))
        self.options = StudioOptions(token=TOKEN, port=PORT, python=python, job_env=env, **options)
        self.app = create_app(self.workspace, self.options)
        self.client = TestClient(self.app, base_url=BASE_URL)

    @property
    def root(self) -> Path:
        return self.workspace.root

    def get(self, url: str, **kw):
        return self.client.get(url, headers={**AUTH, **kw.pop("headers", {})}, **kw)

    def post(self, url: str, **kw):
        return self.client.post(url, headers={**AUTH, **kw.pop("headers", {})}, **kw)

    def recipe(self, name: str = "prueba", **form) -> dict:
        answer = self.post("/api/recetas", json={"nombre": name, "datos": "afinar:primeros_auxilios", **form})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def train(self, recipe: str = "prueba", **form) -> dict:
        answer = self.post("/api/trabajos", json={"tipo": "entrenar", "receta": recipe, **form})
        assert answer.status_code == 202, answer.text
        return answer.json()

    def job(self, job_id: str) -> dict:
        answer = self.get(f"/api/trabajos/{job_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_end(self, job_id: str) -> dict:
        def ended():
            record = self.job(job_id)
            return record if record["estado"] != "en_curso" else None

        return wait_for(ended, f"el trabajo {job_id} no terminó")

    def close(self):
        (self.root / "soltar").touch()  # a waiting fake exits
        current = self.app.state.jobs.current()
        if current and current.get("estado") == "en_curso":
            with contextlib.suppress(AfinarError):  # it ended in between
                self.app.state.jobs.cancel(current["id"])
        wait_for(lambda: self.app.state.jobs.current() is None, "un trabajo siguió en curso al acabar la prueba")
        self.client.close()


@pytest.fixture
def studio(tmp_path):
    made = []

    def make(mode: str = "ok", **options) -> Studio:
        made.append(Studio(tmp_path / f"s{len(made)}", mode, **options))
        return made[-1]

    yield make
    for one in made:
        one.close()


def wait_for(predicate, what: str, timeout: float = 60.0):
    """Polls until `predicate` gives something true (a guard against hanging, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def error_of(answer) -> dict:
    body = answer.json()
    assert "error" in body, body
    return body["error"]


def rows(n: int) -> list[dict]:
    return [{"instruction": f"¿Qué hago con la {ROW_PHRASE} número {i}?",
             "output": f"Con la {ROW_PHRASE} {i}, enfría con agua y llama al 112."} for i in range(n)]


def jsonl(items: list[dict], broken_line: int | None = None) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False) for r in items]
    if broken_line:
        lines[broken_line - 1] = lines[broken_line - 1].replace('"output"', "output")  # unquoted key: D001
    return ("\n".join(lines) + "\n").encode("utf-8")


def gone(pid: int) -> bool:
    """Ended (a zombie nobody has reaped yet counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sse_events(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        event: dict = {}
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field in ("id", "event", "data"):
                event[field] = value
        if "event" in event:
            event["data"] = json.loads(event["data"])
            events.append(event)
    return events


# --- 1. security ----------------------------------------------------------------------------------------------------


def test_without_token_api_is_401_json_and_page_is_spanish_html(studio):
    client = studio().client
    answer = client.get("/api/estado")
    assert answer.status_code == 401
    assert answer.json()["error"]["codigo"] == "E001"
    page = client.get("/")
    assert page.status_code == 401
    assert page.headers["content-type"].startswith("text/html")
    assert "no tiene la llave del estudio" in page.text and "acceso directo" in page.text and "lang=es" in page.text
    assert "afinar_estudio" not in page.headers.get("set-cookie", "")


def test_wrong_token_is_401(studio):
    client = studio().client
    assert client.get("/api/estado", headers={"X-Afinar-Token": "otro"}).status_code == 401
    assert client.get("/?token=otro").status_code == 401
    client.cookies.set(f"afinar_estudio_{PORT}", "otro")
    assert client.get("/api/estado").status_code == 401
    assert client.get("/").status_code == 401
    client.cookies.clear()
    assert client.get("/api/estado", headers={"X-Afinar-Token": ""}).status_code == 401


def test_page_link_sets_strict_httponly_cookie_and_csp(studio):
    client = studio().client
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"afinar_estudio_{PORT}={TOKEN};")
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert f'<meta name="afinar-token" content="{TOKEN}">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp
    assert page.headers["cache-control"] == "no-store"
    # from now on the cookie alone opens the page and every GET (the event stream relies on it)
    assert client.get("/api/estado").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/static/studio.js").status_code == 200


def test_cookie_alone_never_authorizes_a_post(studio):
    s = studio()
    s.client.get(f"/?token={TOKEN}")
    form = {"nombre": "prueba", "datos": "afinar:primeros_auxilios"}
    answer = s.client.post("/api/recetas", json=form)
    assert answer.status_code == 403
    assert error_of(answer)["codigo"] == "E004"
    assert not any(s.workspace.recipes.iterdir())
    assert s.client.post("/api/recetas", json=form, headers=AUTH).status_code == 200


def test_dns_rebinding_host_is_refused(studio):
    client = studio().client
    answer = client.get("/api/estado", headers={**AUTH, "Host": "evil.example:7860"})
    assert answer.status_code == 403
    assert error_of(answer)["codigo"] == "E002"
    assert client.get("/api/estado", headers={**AUTH, "Host": "localhost:7860"}).status_code == 200
    assert client.get("/api/estado", headers={**AUTH, "Host": f"127.0.0.1:{PORT}"}).status_code == 200


def test_foreign_origin_is_refused_same_origin_works(studio):
    s = studio()
    form = {"nombre": "prueba", "datos": "afinar:primeros_auxilios"}
    answer = s.post("/api/recetas", json=form, headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403
    assert error_of(answer)["codigo"] == "E003"
    assert not any(s.workspace.recipes.iterdir())
    answer = s.post("/api/recetas", json=form, headers={"Origin": BASE_URL})
    assert answer.status_code == 200, answer.text


def test_get_never_changes_state(studio):
    s = studio("wait")
    assert s.get("/api/trabajos").json() == {"actual": None, "trabajos": []}
    s.recipe()
    assert s.get("/api/trabajos").json()["actual"] is None
    assert list(s.workspace.jobs.iterdir()) == []
    assert not (s.root / "llamadas.jsonl").exists()  # nothing was started
    job = s.train()
    # the actions answer GET with 405 and do nothing
    assert s.get(f"/api/trabajos/{job['id']}/cancelar").status_code == 405
    assert s.get(f"/api/trabajos/{job['id']}/detener").status_code == 405
    assert s.job(job["id"])["estado"] == "en_curso"
    assert "cancelar_pedido" not in s.job(job["id"])
    assert not (s.workspace.runs / "prueba" / STOP_REQUEST).exists()


@pytest.mark.parametrize("path", ["/static/..%2Fapp.py", "/static/index.html", "/static/app.py",
                                  "/static/%2E%2E%2Fapp.py", "/static/__init__.py"])
def test_static_serves_only_its_two_files(studio, path):
    s = studio()
    answer = s.get(path)
    assert answer.status_code == 404
    assert "create_app" not in answer.text and "afinar-token" not in answer.text


def test_static_files_are_served(studio):
    s = studio()
    script = s.get("/static/studio.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "X-Afinar-Token" in script.text
    assert s.get("/static/studio.css").headers["content-type"].startswith("text/css")


def test_json_body_over_limit_is_413_declared_and_chunked(studio):
    s = studio()
    big = json.dumps({"nombre": "prueba", "datos": "afinar:primeros_auxilios",
                      "descripcion": "x" * (MAX_JSON_BODY + 10)}).encode()
    answer = s.post("/api/recetas", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert error_of(answer)["codigo"] == "E005"

    def chunks():
        for start in range(0, len(big), 16384):
            yield big[start:start + 16384]

    answer = s.post("/api/recetas", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert error_of(answer)["codigo"] == "E005"
    assert not any(s.workspace.recipes.iterdir())


def test_chunked_json_body_under_limit_is_accepted(studio):
    s = studio()
    body = json.dumps({"nombre": "prueba", "datos": "afinar:primeros_auxilios"}).encode()
    answer = s.post("/api/recetas", content=iter([body[:10], body[10:]]), headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert (s.workspace.recipes / "prueba.yaml").is_file()


@pytest.mark.parametrize("body", [{"tipo": "borrar"}, {"tipo": "entrenar", "receta": "prueba", "desconocido": 1}])
def test_invalid_request_body_is_a_spanish_400(studio, body):
    """The page reads {error: {codigo, mensaje}}: a body the forms reject must come back that way, not as FastAPI's
    English 422 {detail: [...]}."""
    s = studio()
    answer = s.post("/api/trabajos", json=body)
    assert answer.status_code == 400, answer.text
    assert error_of(answer)["codigo"] == "E006"


# --- 2. uploads -----------------------------------------------------------------------------------------------------


def datos_entries(s: Studio) -> list[str]:
    return sorted(p.name for p in s.workspace.data.iterdir())


def test_upload_lists_errors_by_line_without_row_text(studio):
    s = studio()
    answer = s.post("/api/datos", content=jsonl(rows(12), broken_line=3),
                    headers={"X-Nombre-Archivo": "mis_datos.jsonl"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    errors = result["validacion"]["errores"]
    assert [(e["linea"], e["codigo"]) for e in errors] == [(3, "D001")]
    assert errors[0]["arreglo"] and errors[0]["mensaje"]
    assert result["validacion"]["ejemplos"] == 11
    assert ROW_PHRASE not in answer.text and "cig" not in answer.text
    saved = s.workspace.data / f"{result['id']}.jsonl"
    assert saved.read_bytes() == jsonl(rows(12), broken_line=3)
    assert datos_entries(s) == [saved.name]
    listed = s.get("/api/datos").json()["subidos"]
    assert [d["id"] for d in listed] == [result["id"]]
    again = s.get(f"/api/datos/{result['id']}/validacion")
    assert again.status_code == 200 and again.json()["errores"] == errors
    assert ROW_PHRASE not in again.text


@pytest.mark.parametrize("content", [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\x00\x01\x02endobj\n",
                                     b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)),
                                     b"", b"no es json\ntampoco esto\n"])
def test_not_a_jsonl_is_refused_whole_and_nothing_is_kept(studio, content):
    s = studio()
    answer = s.post("/api/datos", content=content, headers={"X-Nombre-Archivo": "informe.pdf"})
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["codigo"] == "E014" and error["mensaje"] and error["sugerencia"]
    assert datos_entries(s) == []  # neither the file nor its temporary copy


def test_oversize_upload_is_413_declared_and_chunked(studio):
    s = studio(max_upload_bytes=1024)
    big = jsonl(rows(40))
    assert len(big) > 1024
    answer = s.post("/api/datos", content=big, headers={"X-Nombre-Archivo": "grande.jsonl"})
    assert answer.status_code == 413
    assert error_of(answer)["codigo"] == "E013"
    assert datos_entries(s) == []

    def chunks():
        for start in range(0, len(big), 200):
            yield big[start:start + 200]

    answer = s.post("/api/datos", content=chunks(), headers={"X-Nombre-Archivo": "grande.jsonl"})
    assert answer.status_code == 413
    assert error_of(answer)["codigo"] == "E013"
    assert datos_entries(s) == []
    small = jsonl(rows(2))
    assert len(small) < 1024
    assert s.post("/api/datos", content=small, headers={"X-Nombre-Archivo": "x.jsonl"}).status_code == 200


def test_upload_with_utf8_bom_is_a_jsonl(studio):
    """Windows editors save «UTF-8 con BOM»: the validator reads it (utf-8-sig on line 1), so the upload must not
    refuse it as «not a JSONL» before the validator sees it."""
    s = studio()
    content = "\ufeff".encode() + jsonl(rows(1))
    answer = s.post("/api/datos", content=content, headers={"X-Nombre-Archivo": "uno.jsonl"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["validacion"]["total_errores"] == 0


@pytest.mark.parametrize("filename", ["../../etc/passwd.jsonl", "..\\..\\win.jsonl", "/abs/ruta.jsonl", "", "..",
                                      "a b;rm -rf.jsonl"])
def test_client_filename_never_picks_the_path(studio, filename):
    s = studio()
    answer = s.post("/api/datos", content=jsonl(rows(6)), headers={"X-Nombre-Archivo": filename})
    assert answer.status_code == 200, answer.text
    dataset = answer.json()["id"]
    assert NAME.match(dataset) and "/" not in dataset and "\\" not in dataset
    files = [p for p in s.root.rglob("*") if p.is_file() and p.suffix == ".jsonl"]
    assert files == [s.workspace.data / f"{dataset}.jsonl"]
    assert not (s.root.parent / "etc").exists()


@pytest.mark.parametrize("filename", ["_notas.jsonl", "datos..v2.jsonl", "-.-raro.jsonl"])
def test_uploaded_dataset_id_can_be_used_afterwards(studio, filename):
    """The id the upload returns is what the page sends back (validation, recipe): the studio must accept it."""
    s = studio()
    answer = s.post("/api/datos", content=jsonl(rows(6)), headers={"X-Nombre-Archivo": filename})
    assert answer.status_code == 200, answer.text
    dataset = answer.json()["id"]
    assert s.get(f"/api/datos/{dataset}/validacion").status_code == 200
    recipe = s.post("/api/recetas", json={"nombre": "con-subidos", "datos": dataset})
    assert recipe.status_code == 200, recipe.text


def test_uploaded_name_sent_by_the_page_is_decoded(studio):
    """studio.js sends X-Nombre-Archivo as encodeURIComponent(file.name): the name shown must be the user's, not
    its %-escapes."""
    s = studio()
    answer = s.post("/api/datos", content=jsonl(rows(6)),
                    headers={"X-Nombre-Archivo": quote("Enfermería básica.jsonl", safe="")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"].startswith("Enfermeria-basica-")


# --- 3. recipes -----------------------------------------------------------------------------------------------------


def test_recipe_from_shipped_dataset_loads_with_preset_and_overrides(studio):
    from afinar.config import load_recipe
    from afinar.data.formats import shipped_dataset

    s = studio()
    answer = s.recipe("mi-modelo", preajuste="rapido", avanzado={"train.lr": 0.001, "lora.r": 8, "train.epochs": ""})
    assert answer["nombre"] == "mi-modelo" and answer["existe"] is False
    assert answer["comando"].endswith("afinar train recetas/mi-modelo.yaml")
    path = s.workspace.recipes / "mi-modelo.yaml"
    assert answer["yaml"] == path.read_text(encoding="utf-8")
    recipe = load_recipe(path)
    assert recipe.name == "mi-modelo"
    assert Path(recipe.data.sources[0].path) == shipped_dataset("primeros_auxilios")
    assert recipe.output_dir == "ejecuciones/mi-modelo"
    assert recipe.train.max_minutes == 5
    assert recipe.train.lr == 0.001  # the override, not the preset's 3e-3
    assert recipe.train.epochs == 3  # an empty override keeps the preset
    assert recipe.lora.r == 8
    assert recipe.checks == ["enfermeria"]  # the shipped dataset's checks


def test_recipe_presets_differ(studio):
    from afinar.config import load_recipe

    s = studio()
    s.recipe("lento", preajuste="cuidadoso")
    recipe = load_recipe(s.workspace.recipes / "lento.yaml")
    assert recipe.train.max_minutes == 60 and recipe.train.lr == 1e-3 and recipe.lora.r == 32


def test_recipe_from_uploaded_dataset_resolves_to_the_upload(studio):
    from afinar.config import load_recipe

    s = studio()
    dataset = s.post("/api/datos", content=jsonl(rows(6)), headers={"X-Nombre-Archivo": "propios.jsonl"}).json()["id"]
    s.recipe("propia", datos=dataset)
    recipe = load_recipe(s.workspace.recipes / "propia.yaml")
    assert Path(recipe.data.sources[0].path).resolve() == (s.workspace.data / f"{dataset}.jsonl").resolve()
    # relative to the recipe: the studio's folder can be copied elsewhere and trained from there
    written = yaml.safe_load((s.workspace.recipes / "propia.yaml").read_text(encoding="utf-8"))
    assert written["data"]["sources"][0]["path"] == f"../datos/{dataset}.jsonl"


@pytest.mark.parametrize("name", ["../x", "con espacio", "..", "a/b", "", "x" * 65, "ñandú"])
def test_bad_recipe_name_is_e010(studio, name):
    s = studio()
    answer = s.post("/api/recetas", json={"nombre": name, "datos": "afinar:primeros_auxilios"})
    assert answer.status_code == 400
    assert error_of(answer)["codigo"] == "E010"
    assert not any(s.workspace.recipes.iterdir())


def test_invalid_advanced_value_names_the_field(studio):
    s = studio()
    answer = s.post("/api/recetas", json={"nombre": "prueba", "datos": "afinar:primeros_auxilios",
                                          "avanzado": {"train.lr": -1}})
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["codigo"] == "R001" and "train.lr" in error["mensaje"]
    assert not any(s.workspace.recipes.iterdir())
    forbidden = s.post("/api/recetas", json={"nombre": "prueba", "datos": "afinar:primeros_auxilios",
                                             "avanzado": {"output_dir": "/tmp/fuera"}})
    assert forbidden.status_code == 400 and error_of(forbidden)["codigo"] == "E016"


def test_recipe_with_unknown_uploaded_dataset_is_refused(studio):
    s = studio()
    for datos, code, status in (("no-subido", "E011", 404), ("../../x", "E010", 400)):
        answer = s.post("/api/recetas", json={"nombre": "prueba", "datos": datos})
        assert (answer.status_code, error_of(answer)["codigo"]) == (status, code), datos
    assert not any(s.workspace.recipes.iterdir())


@pytest.mark.parametrize("datos", ["afinar:no_existe", "afinar:../../../../../../tmp/fuera"])
def test_recipe_with_unknown_shipped_dataset_is_refused(studio, datos):
    """Only the shipped datasets the studio lists (and no path: «no path sent by the browser reaches the file
    system»), refused when the recipe is written rather than when the training starts."""
    s = studio()
    answer = s.post("/api/recetas", json={"nombre": "prueba", "datos": datos})
    assert answer.status_code == 404, answer.text[:200]
    assert error_of(answer)["codigo"] == "E011"
    assert not any(s.workspace.recipes.iterdir())


def test_recipe_download(studio):
    s = studio()
    s.recipe("bajar")
    answer = s.get("/api/recetas/bajar.yaml")
    assert answer.status_code == 200
    assert answer.text == (s.workspace.recipes / "bajar.yaml").read_text(encoding="utf-8")
    assert 'attachment; filename="bajar.yaml"' == answer.headers["content-disposition"]
    assert s.get("/api/recetas/otra.yaml").status_code == 404


# --- 4. jobs --------------------------------------------------------------------------------------------------------


def test_training_job_runs_the_cli_command_and_ends(studio):
    s = studio("ok", job_env={"FAKE_STEPS": "5"})
    s.recipe()
    job = s.train()
    assert job["estado"] == "en_curso" and job["tipo"] == "entrenar" and job["ejecucion"] == "prueba"
    assert job["comando"] == "afinar train recetas/prueba.yaml"
    done = s.wait_end(job["id"])
    assert done["estado"] == "terminado" and done["codigo_salida"] == 0 and "error" not in done
    calls = [json.loads(line) for line in (s.root / "llamadas.jsonl").read_text().splitlines()]
    assert calls == [["-m", "afinar", "train", "recetas/prueba.yaml"]]
    assert s.get("/api/estado").json()["trabajo"] is None
    listed = s.get("/api/trabajos").json()
    assert listed["actual"] is None and [j["id"] for j in listed["trabajos"]] == [job["id"]]
    detail = s.get("/api/ejecuciones/prueba").json()
    assert detail["estado"] == "terminada" and detail["pasos"] == 5 and len(detail["metricas"]) == 5
    assert detail["ultimo_trabajo"]["id"] == job["id"]
    assert "Entrenamiento terminado." in detail["registro"]


def test_second_job_while_one_runs_is_409(studio):
    s = studio("wait")
    s.recipe("primera")
    s.recipe("segunda")
    first = s.train("primera")
    assert first["estado"] == "en_curso"
    answer = s.post("/api/trabajos", json={"tipo": "entrenar", "receta": "segunda"})
    assert answer.status_code == 409
    error = error_of(answer)
    assert error["codigo"] == "E020"
    assert "ya hay un trabajo en curso" in error["mensaje"] and "primera" in error["mensaje"]
    assert s.get("/api/estado").json()["trabajo"]["id"] == first["id"]
    assert len(list(s.workspace.jobs.glob("*.json"))) == 1
    # Measuring real steps now would measure them at half speed: refused the same way.
    measuring = s.post("/api/recetas/segunda/plan?medir=1")
    assert measuring.status_code == 409 and error_of(measuring)["codigo"] == "E020"


def test_failed_job_shows_the_error_and_its_suggestion(studio):
    s = studio("fail")
    s.recipe()
    job = s.train()
    done = s.wait_end(job["id"])
    assert done["estado"] == "fallido" and done["codigo_salida"] == 2
    assert done["error"]["codigo"] == "T016"
    assert done["error"]["mensaje"] == "sin memoria"
    assert done["error"]["sugerencia"] == "baja tokens_per_batch"
    diagnostics = s.get(f"/api/trabajos/{job['id']}/diagnostico")
    assert diagnostics.status_code == 200
    assert "Orden: afinar train recetas/prueba.yaml" in diagnostics.text
    assert "Error: T016: sin memoria — sugerencia: baja tokens_per_batch" in diagnostics.text
    assert "estado fallido" in diagnostics.text
    # the next job can start
    assert s.post("/api/trabajos", json={"tipo": "entrenar", "receta": "prueba"}).status_code == 202


def test_cancel_ends_the_job_and_its_children(studio):
    s = studio("child")
    s.recipe()
    job = s.train()
    child = int(wait_for(lambda: (s.root / "hijo.pid").is_file() and (s.root / "hijo.pid").read_text(),
                         "el falso no arrancó su hijo"))
    assert not gone(job["pid"]) and not gone(child)
    answer = s.post(f"/api/trabajos/{job['id']}/cancelar")
    assert answer.status_code == 200 and answer.json()["cancelar_pedido"]
    done = s.wait_end(job["id"])
    assert done["estado"] == "cancelado"
    wait_for(lambda: gone(job["pid"]), "el proceso del trabajo sigue vivo")
    wait_for(lambda: gone(child), "el hijo del trabajo sigue vivo")
    again = s.post(f"/api/trabajos/{job['id']}/cancelar")
    assert again.status_code == 400 and error_of(again)["codigo"] == "E025"
    assert s.get("/api/ejecuciones/prueba").json()["estado"] == "cancelada"


def test_stop_and_save_creates_the_stop_file_in_the_run_folder(studio):
    s = studio("wait")
    s.recipe()
    job = s.train()
    run_dir = s.workspace.runs / "prueba"
    wait_for(lambda: (run_dir / METRICS).is_file(), "el falso no escribió métricas")
    answer = s.post(f"/api/trabajos/{job['id']}/detener")
    assert answer.status_code == 200 and answer.json()["detener_pedido"]
    assert (run_dir / STOP_REQUEST).is_file()
    seen = wait_for(lambda: (s.root / "visto").is_file() and (s.root / "visto").read_text(),
                    "el entrenamiento no vio la petición de detener")
    assert Path(seen) == (run_dir / STOP_REQUEST).resolve()
    assert s.job(job["id"])["estado"] == "en_curso"
    (s.root / "soltar").touch()
    done = s.wait_end(job["id"])
    assert done["estado"] == "detenido"
    assert not (run_dir / STOP_REQUEST).exists()  # a later resume must not stop at once
    assert s.get("/api/ejecuciones/prueba").json()["estado"] == "detenida"


def test_stop_and_save_only_for_trainings_and_running_jobs(studio):
    s = studio("ok")
    s.recipe()
    job = s.train()
    s.wait_end(job["id"])
    answer = s.post(f"/api/trabajos/{job['id']}/detener")
    assert answer.status_code == 400 and error_of(answer)["codigo"] == "E025"
    assert s.post("/api/trabajos/no-existe/detener").status_code == 404
    assert s.post("/api/trabajos/..%2Fx/detener").status_code in (400, 404)


def test_existing_run_is_not_overwritten_without_asking(studio):
    s = studio("ok")
    s.recipe()
    (s.workspace.runs / "prueba").mkdir()
    (s.workspace.runs / "prueba" / "importante.txt").write_text("no lo pises")
    answer = s.post("/api/trabajos", json={"tipo": "entrenar", "receta": "prueba"})
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["codigo"] == "E027" and "prueba" in error["mensaje"] and error["sugerencia"]
    assert not (s.root / "llamadas.jsonl").exists()
    assert s.post("/api/recetas", json={"nombre": "prueba", "datos": "afinar:primeros_auxilios"}).json()["existe"]
    job = s.train(sobrescribir=True)
    assert job["argv"] == ["train", "recetas/prueba.yaml", "--sobrescribir"]
    s.wait_end(job["id"])


def test_training_an_unknown_recipe_is_refused(studio):
    s = studio()
    answer = s.post("/api/trabajos", json={"tipo": "entrenar", "receta": "nada"})
    assert answer.status_code in (400, 404) and error_of(answer)["codigo"] == "E015"
    answer = s.post("/api/trabajos", json={"tipo": "entrenar"})
    assert answer.status_code == 400 and error_of(answer)["codigo"] == "E026"
    answer = s.post("/api/trabajos", json={"tipo": "exportar", "ejecucion": "nada", "formato": "zip"})
    assert answer.status_code == 404 and error_of(answer)["codigo"] == "E012"
    assert not (s.root / "llamadas.jsonl").exists()


def test_deleted_run_folder_is_a_spanish_404_and_the_app_goes_on(studio):
    s = studio("ok")
    s.recipe()
    job = s.train()
    s.wait_end(job["id"])
    assert s.get("/api/ejecuciones/prueba").status_code == 200
    shutil.rmtree(s.workspace.runs / "prueba")
    answer = s.get("/api/ejecuciones/prueba")
    assert answer.status_code == 404
    error = error_of(answer)
    assert error["codigo"] == "E012" and "ya no existe" in error["mensaje"]
    for url in ("/api/ejecuciones/prueba/valoracion", "/api/ejecuciones/prueba/resumen",
                "/api/comparar?a=prueba&b=prueba"):
        assert s.get(url).status_code == 404, url
    assert s.get("/api/estado").status_code == 200
    assert s.get("/api/ejecuciones").json() == {"ejecuciones": []}
    assert s.job(job["id"])["estado"] == "terminado"


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _record(ws: Workspace, job_id: str, pid: int, run: str = "vieja", **extra) -> Path:
    path = ws.jobs / f"{job_id}.json"
    path.write_text(json.dumps({"id": job_id, "tipo": "entrenar", "ejecucion": run, "argv": ["train", "x"],
                                "comando": "afinar train x", "pid": pid, "inicio": time.time() - 5,
                                "estado": "en_curso", **extra}))
    return path


def test_recovery_marks_a_dead_job_interrumpido(tmp_path):
    ws = Workspace(tmp_path / "estudio")
    _record(ws, "20240101-000000-entrenar-vieja", _dead_pid())
    (ws.jobs / "20240101-000000-entrenar-vieja.log").write_text("Entrenando:  10%|#  | 1/10 [00:01<00:09]\n")
    manager = JobManager(ws, sys.executable)
    record = manager.get("20240101-000000-entrenar-vieja")
    assert record["estado"] == "interrumpido"
    assert record["error"]["mensaje"] and record["fin"] >= record["inicio"]
    assert manager.current() is None
    assert json.loads((ws.jobs / "20240101-000000-entrenar-vieja.json").read_text())["estado"] == "interrumpido"


def test_recovery_ignores_a_reused_pid_of_another_program(tmp_path):
    ws = Workspace(tmp_path / "estudio")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _record(ws, "20240101-000000-entrenar-vieja", other.pid)
        manager = JobManager(ws, sys.executable)
        assert manager.get("20240101-000000-entrenar-vieja")["estado"] == "interrumpido"
        assert manager.current() is None
        assert other.poll() is None  # not touched
    finally:
        other.kill()
        other.wait()


def test_recovery_adopts_a_live_job_and_sees_it_finish(tmp_path):
    ws = Workspace(tmp_path / "estudio")
    run_dir = ws.runs / "vieja"
    run_dir.mkdir()
    release = tmp_path / "soltar"
    waiting = "import sys, time, pathlib\nwhile not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.02)"
    live = subprocess.Popen([sys.executable, "-c", waiting, str(release), "afinar"])
    try:
        _record(ws, "20240101-000000-entrenar-vieja", live.pid)
        manager = JobManager(ws, sys.executable)
        assert manager.current()["id"] == "20240101-000000-entrenar-vieja"
        with pytest.raises(AfinarError) as conflict:
            manager.start("entrenar", "otra", ["train", "x"])
        assert conflict.value.code == "E020"
        (run_dir / RUN_INFO).write_text(json.dumps({"steps": 3, "train_seconds": 2.0}))
        release.touch()
        live.wait(30)
        wait_for(lambda: manager.current() is None, "el trabajo adoptado no terminó")
        assert manager.get("20240101-000000-entrenar-vieja")["estado"] == "terminado"
    finally:
        release.touch()
        live.kill()
        live.wait()


# --- 5. live events -------------------------------------------------------------------------------------------------


def test_events_of_a_finished_job_replay_every_step_then_end(studio):
    s = studio("ok", job_env={"FAKE_STEPS": "6"})
    s.recipe()
    job = s.train()
    s.wait_end(job["id"])
    with s.client.stream("GET", f"/api/trabajos/{job['id']}/eventos", headers=AUTH) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse_events("".join(stream.iter_text()))
    steps = [e for e in events if e["event"] == "paso"]
    assert [int(e["id"]) for e in steps] == [1, 2, 3, 4, 5, 6]
    assert [e["data"]["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert "baja" in steps[-1]["data"]["lectura"]
    assert events[-1]["event"] == "fin" and events[-1]["data"]["estado"] == "terminado"
    assert [e["event"] for e in events].count("fin") == 1
    progress = [e for e in events if e["event"] == "progreso"]
    assert progress and progress[-1]["data"]["n"] == 6 and progress[-1]["data"]["total"] == 6
    log = [line for e in events if e["event"] == "registro" for line in e["data"]["lineas"]]
    assert "Entrenamiento terminado." in log


def test_events_resume_after_last_event_id(studio):
    s = studio("ok", job_env={"FAKE_STEPS": "6"})
    s.recipe()
    job = s.train()
    s.wait_end(job["id"])
    with s.client.stream("GET", f"/api/trabajos/{job['id']}/eventos",
                         headers={**AUTH, "Last-Event-ID": "2"}) as stream:
        events = sse_events("".join(stream.iter_text()))
    assert [int(e["id"]) for e in events if e["event"] == "paso"] == [3, 4, 5, 6]
    assert events[-1]["event"] == "fin"
    # the reading under the chart still uses the whole curve, not only what was sent again
    reading = [e for e in events if e["event"] == "paso"][-1]["data"]["lectura"]
    assert reading == loss_reading([round(3.0 - 0.25 * i, 4) for i in range(1, 7)], [])


def test_events_with_the_cookie_only_and_unknown_job(studio):
    s = studio("ok", job_env={"FAKE_STEPS": "2"})
    s.recipe()
    job = s.train()
    s.wait_end(job["id"])
    s.client.get(f"/?token={TOKEN}")  # the page's EventSource sends only the cookie
    with s.client.stream("GET", f"/api/trabajos/{job['id']}/eventos") as stream:
        assert stream.status_code == 200
        events = sse_events("".join(stream.iter_text()))
    assert events[-1]["event"] == "fin"
    missing = s.get("/api/trabajos/no-existe/eventos")
    assert missing.status_code == 404 and error_of(missing)["codigo"] == "E022"


def test_loss_reading():
    falling = [3.0 - 0.2 * i for i in range(10)]
    assert loss_reading(falling, []).startswith("La pérdida (el error con tus ejemplos) baja (2,90 → 1,30)")
    assert "aprendiendo" in loss_reading(falling, [])
    assert "sobreajuste" not in loss_reading(falling, [2.0, 1.8, 1.7])
    assert "sobreajuste" in loss_reading(falling, [2.0, 1.5, 1.7])
    assert "apenas cambia" in loss_reading([2.0, 2.01, 1.99, 2.0, 2.0, 2.01, 2.0, 1.99], [])
    rising = loss_reading([1.0 + 0.1 * i for i in range(10)], [])
    assert rising.startswith("La pérdida sube") and "tasa de aprendizaje" in rising
    assert "NaN" in loss_reading([2.0, 1.9, math.nan, 1.8, 1.7, 1.6], [])
    assert "NaN" in loss_reading([2.0, math.inf], [])
    assert "pocos pasos" in loss_reading([3.0, 2.0], [])
    assert "pocos pasos" in loss_reading([], [])


# --- 6. runs list, blind rating, printable summary, comparison ------------------------------------------------------


def make_run(ws: Workspace, name: str, samples: int = 3, lr: float = 3e-3, data: Path | None = None) -> Path:
    """A finished run folder as training and eval leave it (only what the studio reads)."""
    run_dir = ws.runs / name
    (run_dir / EVAL_DIR).mkdir(parents=True)
    (run_dir / RUN_INFO).write_text(json.dumps({
        "steps": 6, "train_seconds": 90.0, "final_train_loss": 1.25, "final_eval_loss": 1.5, "base": "smollm2-135m",
        "chat_template": {"name": "chatml"}, "hardware": {"device": "cpu", "precision": "fp32"}, "method": "lora"}))
    (run_dir / METRICS).write_text("".join(json.dumps({"step": i, "loss": 3.0 - 0.25 * i}) + "\n" for i in range(1, 7)))
    if data is None:
        data = ws.data / "propios-0000aaaa.jsonl"
        data.write_bytes(jsonl(rows(8)))
    (run_dir / RECIPE).write_text(yaml.safe_dump({
        "name": name, "model": {"base": "smollm2-135m"},
        "data": {"sources": [{"path": str(data)}], "system_prompt": "Eres un asistente de primeros auxilios."},
        "lora": {"r": 16, "alpha": 32}, "train": {"lr": lr, "epochs": 3}, "output_dir": f"ejecuciones/{name}"}))
    (run_dir / "data_fingerprint.json").write_text(json.dumps({
        "files": {str(data): {"examples": 8, "sha256": "ab" * 32}}, "train_examples": 7, "val_examples": 1,
        "formats": {"instruction": 8}}))
    greedy = {"stop_rate": 0.5, "repetition": 0.1, "chrf": 0.3}
    (run_dir / EVAL_DIR / "metrics.json").write_text(json.dumps({
        "meta": {"finished": 1_700_000_000.0}, "shows_prompts": True, "loss": {"base": 2.5, "tuned": 1.5},
        "generation": {"greedy": {"base": greedy, "tuned": {**greedy, "chrf": 0.5}}}, "generated": samples,
        "examples": samples,
        "samples": [{"where": f"{data}:{i + 1}", "question": f"{QUESTION_PHRASE} {i}",
                     "outputs": {"greedy": {"base": {"text": f"respuesta B0 {i}"},
                                            "tuned": {"text": f"respuesta T1 {i}"}}}} for i in range(samples)]}))
    return run_dir


def test_runs_list_shows_a_finished_run(studio):
    s = studio()
    make_run(s.workspace, "hecha")
    (s.workspace.runs / "vacia").mkdir()
    listed = {r["nombre"]: r for r in s.get("/api/ejecuciones").json()["ejecuciones"]}
    assert set(listed) == {"hecha", "vacia"}
    run = listed["hecha"]
    assert run["estado"] == "terminada"
    assert run["chispa"] == [2.75, 2.5, 2.25, 2.0, 1.75, 1.5]
    assert run["pasos"] == 6 and run["duracion_s"] == 90.0 and run["perdida_final"] == 1.25
    assert run["evaluada"] is True and run["valorada"] is False
    assert listed["vacia"]["estado"] == "nueva" and listed["vacia"]["chispa"] == []


def test_blind_pairs_do_not_say_which_is_which(studio):
    s = studio()
    make_run(s.workspace, "hecha")
    answer = s.get("/api/ejecuciones/hecha/valoracion")
    assert answer.status_code == 200
    body = answer.json()
    assert body["resultado"] is None and body["preguntas_visibles"] is True
    assert [p["indice"] for p in body["pares"]] == [0, 1, 2]
    for i, pair in enumerate(body["pares"]):
        assert set(pair) == {"indice", "pregunta", "a", "b", "eleccion", "claves", "valoraciones"}
        assert {pair["a"], pair["b"]} == {f"respuesta B0 {i}", f"respuesta T1 {i}"}
        assert pair["eleccion"] is None and pair["claves"] is None and pair["valoraciones"] == {"a": None, "b": None}
    for word in ("afinado", "base", "tuned", "orden"):
        assert word not in answer.text, word


def test_rating_all_pairs_counts_by_the_hidden_order(studio):
    s = studio()
    run_dir = make_run(s.workspace, "hecha")
    choices = {0: "a", 1: "b", 2: "igual"}
    answers = []
    for index, choice in choices.items():
        answer = s.post("/api/ejecuciones/hecha/valoracion", json={"indice": index, "eleccion": choice})
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    assert [a["valoradas"] for a in answers] == [1, 2, 3]
    assert answers[0]["resultado"] is None and answers[1]["resultado"] is None
    order = json.loads((run_dir / RATINGS).read_text())["orden"]
    expected = {"afinado": 0, "base": 0, "igual": 1}
    expected[order[0]] += 1  # "a" is the first of the hidden order
    expected[{"afinado": "base", "base": "afinado"}[order[1]]] += 1  # "b" the other one
    result = answers[-1]["resultado"]
    assert {k: result[k] for k in expected} == expected and result["total"] == 3
    assert f"afinado en {expected['afinado']} de 3" in result["texto"]
    after = s.get("/api/ejecuciones/hecha/valoracion").json()
    assert after["resultado"] == result and [p["eleccion"] for p in after["pares"]] == ["a", "b", "igual"]
    assert s.get("/api/ejecuciones/hecha").json()["valoracion"] == result
    assert {r["nombre"]: r for r in s.get("/api/ejecuciones").json()["ejecuciones"]}["hecha"]["valorada"] is True


def test_the_pairs_the_expert_sees_are_the_ones_counted(studio):
    """Choosing, in what GET showed, the tuned answer every time must count as «afinado» every time (and a reload
    before rating must not swap A and B)."""
    s = studio()
    make_run(s.workspace, "hecha", samples=24)
    shown = s.get("/api/ejecuciones/hecha/valoracion").json()["pares"]
    assert s.get("/api/ejecuciones/hecha/valoracion").json()["pares"] == shown
    result = None
    for pair in shown:
        pick = "a" if pair["a"].startswith("respuesta T1") else "b"
        result = s.post("/api/ejecuciones/hecha/valoracion", json={"indice": pair["indice"], "eleccion": pick}).json()
    assert result["resultado"]["afinado"] == 24, result


def test_invalid_rating_is_refused(studio):
    s = studio()
    run_dir = make_run(s.workspace, "hecha")
    for form, code in (({"indice": 0, "eleccion": "c"}, "E031"), ({"indice": 3, "eleccion": "a"}, "E032"),
                       ({"indice": -1, "eleccion": "a"}, "E032")):
        answer = s.post("/api/ejecuciones/hecha/valoracion", json=form)
        assert answer.status_code == 400 and error_of(answer)["codigo"] == code, form
    assert not (run_dir / RATINGS).exists()
    shutil.rmtree(run_dir / EVAL_DIR)
    answer = s.get("/api/ejecuciones/hecha/valoracion")
    assert answer.status_code == 404 and error_of(answer)["codigo"] == "E030"


def test_printable_summary_has_both_cards_and_no_row_text(studio):
    s = studio()
    make_run(s.workspace, "hecha")
    s.post("/api/ejecuciones/hecha/valoracion", json={"indice": 0, "eleccion": "igual"})
    answer = s.get("/api/ejecuciones/hecha/resumen")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    text = answer.text
    assert "Tarjeta de datos" in text and "Tarjeta del modelo" in text
    assert "propios-0000aaaa.jsonl" in text and "abababababababab" in text
    assert "Valoración a ciegas" in text and "te parecieron iguales en 1" in text
    assert ROW_PHRASE not in text and "cig" not in text
    assert QUESTION_PHRASE not in text and "respuesta T1" not in text
    (s.workspace.runs / "sin-entrenar").mkdir()
    unfinished = s.get("/api/ejecuciones/sin-entrenar/resumen")
    assert unfinished.status_code == 404 and error_of(unfinished)["codigo"] == "E033"


def test_compare_lists_recipe_differences(studio):
    s = studio()
    make_run(s.workspace, "rapida", lr=3e-3)
    make_run(s.workspace, "lenta", lr=1e-3, data=s.workspace.data / "propios-0000aaaa.jsonl")
    answer = s.get("/api/comparar", params={"a": "rapida", "b": "lenta"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["diferencias"] == [{"clave": "train.lr", "a": 3e-3, "b": 1e-3}]
    assert body["a"]["nombre"] == "rapida" and body["b"]["nombre"] == "lenta"
    assert len(body["a"]["metricas"]) == 6 and body["a"]["evaluacion"]["perdida"] == {"base": 2.5, "tuned": 1.5}
    same = s.get("/api/comparar", params={"a": "rapida", "b": "rapida"}).json()
    assert same["diferencias"] == []
    assert s.get("/api/comparar", params={"a": "rapida", "b": "../x"}).status_code == 400


# --- issue 30: privacy that acts, errors for people, a way back in --------------------------------------------------

DNI_ROW = {"instruction": "La paciente Rosario Gómez, DNI 12345678Z, se quemó: ¿qué hago?",
           "output": "Enfría la quemadura con agua corriente durante 20 minutos."}


def data_with_dni_and_duplicates(path: Path) -> Path:
    """8 rows, the 3rd with a DNI and a patient's name, and rows 1 and 2 copied once more: 1 line, 2 duplicates."""
    items = rows(8)
    items[2] = DNI_ROW
    path.write_bytes(jsonl(items + [items[0], items[1]]))
    return path


def test_summary_counts_the_runs_data_from_any_working_folder(studio, tmp_path, monkeypatch):
    """The run's recipe names its data relative to the studio's folder (where its jobs run): the printable summary
    finds it from wherever the studio was started, and says so when the check could not run (never zeros)."""
    s = studio()
    data = data_with_dni_and_duplicates(s.workspace.data / "propios-0000aaaa.jsonl")
    run_dir = make_run(s.workspace, "hecha", data=data)
    recipe = yaml.safe_load((run_dir / RECIPE).read_text())
    recipe["data"]["sources"] = [{"path": "recetas/../datos/propios-0000aaaa.jsonl"}]  # as `afinar train` saves it
    (run_dir / RECIPE).write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)  # not the studio's folder
    text = s.get("/api/ejecuciones/hecha/resumen").text
    assert "Líneas con posibles datos personales (correos, teléfonos, DNI, nombres…)</td><td>1 (DNI: 1" in text
    assert "Ejemplos repetidos exactamente (copias de otro)</td><td>2<" in text
    assert "NO SE PUDO" not in text and "12345678Z" not in text and "Rosario" not in text
    assert "No usar como consejo" in text  # the run starts from the embedded 135M base
    data.unlink()
    text = s.get("/api/ejecuciones/hecha/resumen").text
    assert "NO SE PUDO HACER" in text and "propios-0000aaaa.jsonl" in text
    assert "Líneas con posibles datos personales" not in text and "Ejemplos repetidos" not in text


def test_upload_without_a_usable_example_is_not_kept_and_says_why_once(studio):
    s = studio()
    items = [{"question": f"¿Qué hago {i}?", "answer": "Llama al 112."} for i in range(4)]
    answer = s.post("/api/datos", content=jsonl(items), headers={"X-Nombre-Archivo": "mal.jsonl"})
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["codigo"] == "E017" and error["mensaje"].count("no se ha guardado") == 1
    assert "formato no reconocido en 4 línea(s)" in error["mensaje"] and '"pregunta" y "respuesta"' in error["sugerencia"]
    assert not list(s.workspace.data.iterdir())  # neither the file nor a partial one
    # The Spanish field names a person writes are a format afinar reads.
    spanish = [{"pregunta": f"¿Qué hago {i}?", "respuesta": "Enfría con agua y llama al 112."} for i in range(4)]
    answer = s.post("/api/datos", content=jsonl(spanish), headers={"X-Nombre-Archivo": "bien.jsonl"})
    assert answer.status_code == 200 and answer.json()["validacion"]["ejemplos"] == 4


def test_flagged_lines_are_listed_by_number_and_can_be_removed(studio):
    s = studio()
    answer = s.post("/api/datos", content=data_with_dni_and_duplicates(s.root / "x.jsonl").read_bytes(),
                    headers={"X-Nombre-Archivo": "mios.jsonl"})
    body = answer.json()
    assert body["validacion"]["datos_personales"] == [{"linea": 3, "tipos": ["DNI", "nombre tras «paciente»"]}]
    assert "12345678Z" not in answer.text and "Rosario" not in answer.text
    path = s.workspace.dataset_path(body["id"])
    # Duplicates are named by line, not by the file's full path.
    assert any(p["codigo"] == "D009" and "de la línea 1" in p["mensaje"] for p in body["validacion"]["avisos"])
    removed = s.post(f"/api/datos/{body['id']}/quitar", json={"lineas": [3]})
    assert removed.status_code == 200, removed.text
    assert removed.json()["datos_personales"] == [] and removed.json()["quitadas"] == 1
    assert "12345678Z" not in path.read_text(encoding="utf-8") and len(path.read_text().splitlines()) == 9
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary file left
    shipped = s.post("/api/datos/afinar:primeros_auxilios/quitar", json={"lineas": [1]})
    assert shipped.status_code == 400 and error_of(shipped)["codigo"] == "E018"


def test_recipe_for_a_file_without_examples_is_refused(studio):
    s = studio()
    (s.workspace.data / "vacio-0000aaaa.jsonl").write_bytes(jsonl([{"question": "x", "answer": "y"}]))
    answer = s.post("/api/recetas", json={"nombre": "x", "datos": "vacio-0000aaaa"})
    assert answer.status_code == 400 and error_of(answer)["codigo"] == "E017"
    assert not list(s.workspace.recipes.iterdir())


def test_a_running_job_is_said_before_an_existing_run(studio):
    """While a job runs, «ya existe, marca Sustituir» would only lead to E020: E020 is said first."""
    s = studio("wait")
    s.recipe("primera")
    (s.workspace.runs / "primera").mkdir(parents=True)
    s.recipe("segunda")
    s.train("segunda")
    answer = s.post("/api/trabajos", json={"tipo": "entrenar", "receta": "primera"})
    assert answer.status_code == 409 and error_of(answer)["codigo"] == "E020"
    (s.root / "soltar").touch()
    wait_for(lambda: s.app.state.jobs.current() is None, "el trabajo no acabó")
    answer = s.post("/api/trabajos", json={"tipo": "entrenar", "receta": "primera"})
    assert answer.status_code == 400 and error_of(answer)["codigo"] == "E027"
    assert "Sustituir el que ya existe" in error_of(answer)["sugerencia"]


def test_download_serves_the_file_or_a_zip_of_what_the_export_needs(studio):
    import io
    import zipfile

    s = studio()
    run_dir = make_run(s.workspace, "hecha")
    export = run_dir / "export"
    (export / "gguf").mkdir(parents=True)
    (export / "gguf" / "hecha-q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    (export / "gguf" / "hecha-f16.gguf").write_bytes(b"GGUF" + b"\1" * 100)
    (export / "gguf" / "Modelfile").write_text("FROM hecha-q8_0.gguf\nPARAMETER stop <|im_end|>\n")
    (export / "onnx" / "onnx").mkdir(parents=True)
    (export / "onnx" / "config.json").write_text("{}")
    (export / "onnx" / "onnx" / "model.onnx").write_bytes(b"onnx")
    (export / "afinar_export.json").write_text(json.dumps({"exports": {
        "gguf-q8_0": {"ruta": "gguf/hecha-q8_0.gguf", "bytes": 104}, "ollama": {"ruta": "gguf/Modelfile", "bytes": 40,
                                                              "comprobado": {"from": "hecha-q8_0.gguf"}},
        "onnx": {"ruta": "onnx", "bytes": 10}, "trampa": {"ruta": "../recipe.yaml", "bytes": 1}}}))
    gguf = s.get("/api/ejecuciones/hecha/descargar/gguf-q8_0")
    assert gguf.status_code == 200 and gguf.content[:4] == b"GGUF" and len(gguf.content) == 104
    assert 'filename="hecha-q8_0.gguf"' in gguf.headers["content-disposition"]
    ollama = zipfile.ZipFile(io.BytesIO(s.get("/api/ejecuciones/hecha/descargar/ollama").content))
    assert sorted(ollama.namelist()) == ["Modelfile", "hecha-q8_0.gguf"]  # not the f16 beside it
    onnx = zipfile.ZipFile(io.BytesIO(s.get("/api/ejecuciones/hecha/descargar/onnx").content))
    assert sorted(onnx.namelist()) == ["config.json", "onnx/model.onnx"]
    for key in ("trampa", "no-existe"):
        refused = s.get(f"/api/ejecuciones/hecha/descargar/{key}")
        assert refused.status_code == 404 and error_of(refused)["codigo"] == "E035"


def test_a_stopped_and_resumed_run_is_one_run_from_its_first_start(studio):
    s = studio()
    make_run(s.workspace, "hecha")
    for job_id, kind, start, end in (("1-entrenar-hecha", "entrenar", 1000.0, 1060.0),
                                     ("2-reanudar-hecha", "reanudar", 2000.0, 2030.0),
                                     ("3-evaluar-hecha", "evaluar", 3000.0, 3100.0)):
        (s.workspace.jobs / f"{job_id}.json").write_text(json.dumps({
            "id": job_id, "tipo": kind, "ejecucion": "hecha", "inicio": start, "fin": end, "estado": "terminado"}))
    listed = {r["nombre"]: r for r in s.get("/api/ejecuciones").json()["ejecuciones"]}["hecha"]
    assert listed["fecha"] == 1000.0 and listed["duracion_s"] == 90.0 and listed["tramos"] == 2
    detail = s.get("/api/ejecuciones/hecha").json()
    assert detail["duracion_s"] == 90.0 and detail["base_incluida"] is True


def test_state_offers_the_guides_bases_and_checks_are_suggested_by_topic(studio):
    s = studio()
    bases = {b["id"]: b for b in s.get("/api/estado").json()["bases"]}
    assert {"smollm2-135m", "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct",
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "microsoft/phi-2"} <= set(bases)
    assert bases["microsoft/phi-2"]["plantilla"] == "tutor-phi2" and bases["smollm2-135m"]["descarga_gb"] == 0
    for dataset, expected in (("primeros_auxilios", ["enfermeria"]), ("epicrisis", ["epicrisis"]),
                              ("tutor_algoritmos", ["tutor"]), ("ciencias_biologia", [])):
        checked = s.get(f"/api/datos/afinar:{dataset}/validacion").json()
        assert checked["comprobaciones_sugeridas"] == expected, dataset


def test_recipe_for_a_file_with_bad_lines_is_refused_in_one_sentence(studio):
    s = studio()
    (s.workspace.data / "mixto-0000aaaa.jsonl").write_bytes(jsonl(rows(6), broken_line=4))
    answer = s.post("/api/recetas", json={"nombre": "x", "datos": "mixto-0000aaaa"})
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["codigo"] == "E019" and "1 línea(s) con errores (la primera, la 4:" in error["mensaje"]
    assert ROW_PHRASE not in answer.text and not list(s.workspace.recipes.iterdir())


# --- issue 26: is an answer right (key points, dangers) and the expert's rating of each answer -----------------------

VERDICT_TEXT = "Tu modelo responde mejor: cubre más puntos clave (80 % frente a 40 %) y no es más peligroso."


def evaluated_run(ws: Workspace, name: str = "hecha", shows: bool = True, keypoints: bool = True) -> Path:
    """A run whose metrics.json is complete (as `afinar eval` writes it after issue 26: the report can be rendered
    again), with key points on the first question only when `keypoints`."""
    run_dir = make_run(ws, name, samples=2)
    (run_dir / "loss.png").write_bytes(b"\x89PNG fake")  # the report embeds it: no plotting in the test
    greedy = {"stop_rate": 0.5, "repetition": 0.1, "spanish": 1.0, "words": 20.0, "chrf": 0.3}

    def row(text, category, missing, dangers):
        out = {"text": text, "stopped": True, "tokens": 12, "findings": {}}
        if keypoints:
            out["keypoints"] = {"covered": 0.5 if missing else 1.0, "complete": not missing, "dangerous": bool(dangers),
                                "missing": missing, "dangers": dangers, "category": category}
        return out

    samples = []
    for i in range(2):
        sample = {"where": f"datos/propios.jsonl:{i + 1}",
                  "outputs": {"greedy": {"base": row(f"Pon mantequilla en la quemadura {i}.", "peligrosa", ["agua corriente"], ["mantequilla"]),
                                         "tuned": row(f"Enfría con agua corriente {i} durante 20 minutos.", "correcta", [], [])}}}
        if shows:
            sample.update(question=f"{QUESTION_PHRASE} {i}", reference=f"Enfría la zona con agua corriente durante 20 minutos. No pongas hielo {i}.")
            if keypoints and i == 0:
                sample.update(claves=[["agua corriente", "agua fría"], ["20 minutos"]], peligros=["mantequilla"])
        samples.append(sample)
    side = {"covered": 0.4, "complete": 0.0, "dangerous": 1.0, "complete_count": 0, "dangerous_count": 2,
            "with_keypoints": 1}
    metrics = {
        "schema": 2, "run": f"ejecuciones/{name}", "recipe": name, "base": "smollm2-135m", "split": "val", "examples": 2,
        "generated": 2, "requested": 2, "withheld_personal": 0, "loss": {"base": 2.5, "tuned": 1.5},
        "generation": {"greedy": {"base": greedy, "tuned": {**greedy, "chrf": 0.5}}}, "checks": {}, "checks_detail": {},
        "forgetting": {"examples": 4, "base": 3.0, "tuned": 3.1, "ratio": 1.03, "threshold": 0.1, "flagged": False},
        "checkpoints": [], "best_checkpoint": None, "samples": samples, "shows_prompts": shows,
        "correctness": {"pass": "greedy", "answers": 2, "base": side,
                        "tuned": {"covered": 0.8, "complete": 1.0, "dangerous": 0.0, "complete_count": 1,
                                  "dangerous_count": 0, "with_keypoints": 1}} if keypoints else None,
        "verdict": {"value": "mejor", "text": VERDICT_TEXT, "more_dangerous": False} if keypoints
        else {"value": "sin_medida", "text": "Sin puntos clave no se puede decir si responde mejor.", "more_dangerous": False},
        "meta": {"eval_seconds": 3.0, "run_info": {}, "data_fingerprint": {}, "recipe_yaml": ""},  # as run.py: no end time
    }
    (run_dir / EVAL_DIR / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False))
    (run_dir / EVAL_DIR / "index.html").write_text("informe viejo")
    return run_dir


def rate(s: Studio, run: str = "hecha", **form):
    return s.post(f"/api/ejecuciones/{run}/valoraciones", json={"indice": 0, "respuesta": "afinado",
                                                                 "valoracion": "correcta", **form})


def test_rating_an_answer_is_stored_by_its_hash_counted_and_the_report_rewritten(studio):
    from afinar.evaluate.report import render_html
    from afinar.studio.cards import HUMAN_RATINGS

    s = studio()
    run_dir = evaluated_run(s.workspace)
    metrics = json.loads((run_dir / EVAL_DIR / "metrics.json").read_text())
    tuned_text = metrics["samples"][0]["outputs"]["greedy"]["tuned"]["text"]
    answer = rate(s, nota="  Bien: dice el agua y el tiempo.  ")
    assert answer.status_code == 200, answer.text
    zeros = dict.fromkeys(("correcta", "incompleta", "incorrecta", "peligrosa"), 0)
    assert answer.json()["resumen"] == {"rated": 1, "base": zeros, "tuned": {**zeros, "correcta": 1}}
    saved = json.loads((run_dir / HUMAN_RATINGS).read_text())["respuestas"]
    assert len(saved) == 1 and saved[0]["donde"] == "datos/propios.jsonl:1" and saved[0]["modelo"] == "tuned"
    assert saved[0]["sha256"] == hashlib.sha256(tuned_text.encode()).hexdigest()
    assert saved[0]["nota"] == "Bien: dice el agua y el tiempo." and saved[0]["valoracion"] == "correcta"
    # Rated again: replaced, not added. The base answer of question 2 as dangerous; A of question 2 via the hidden order.
    assert rate(s, valoracion="incompleta").status_code == 200
    assert rate(s, indice=1, respuesta="base", valoracion="peligrosa").status_code == 200
    order = json.loads((run_dir / RATINGS).read_text())["orden"] if (run_dir / RATINGS).exists() else None
    assert order is None  # rating an answer does not vote in the blind A/B
    pair = s.get("/api/ejecuciones/hecha/valoracion").json()["pares"][1]
    letter = "a" if pair["a"].startswith("Enfría") else "b"  # the tuned answer of question 2
    last = rate(s, indice=1, respuesta=letter, valoracion="incorrecta").json()["resumen"]
    assert last == {"rated": 3, "base": {**zeros, "peligrosa": 1}, "tuned": {**zeros, "incompleta": 1, "incorrecta": 1}}
    assert s.get("/api/ejecuciones/hecha/valoracion").json()["pares"][1]["valoraciones"][letter] == {
        "valoracion": "incorrecta", "nota": ""}
    # metrics.json carries the summary (the rest as `afinar eval` wrote it) and the page is rendered from it again.
    after = json.loads((run_dir / EVAL_DIR / "metrics.json").read_text())
    assert after["human_ratings"] == last
    assert {k: v for k, v in after.items() if k not in ("human_ratings", "run")} == {
        k: v for k, v in metrics.items() if k != "run"}
    # "run" as `afinar eval` wrote it is relative to the folder it ran in, not to this process's: made this run's path
    # so that the report finds its loss chart.
    assert after["run"] == str(run_dir)
    page = (run_dir / EVAL_DIR / "index.html").read_text()
    assert page != "informe viejo"
    assert page == render_html(after, base64.b64encode(b"\x89PNG fake").decode())
    assert "Valoración de personas (3 respuestas)" in page  # the report's own table of her ratings
    # The studio's evaluation summary and the printable card count them too.
    assert s.get("/api/ejecuciones/hecha").json()["evaluacion"]["valoraciones"] == last
    card = s.get("/api/ejecuciones/hecha/resumen").text
    assert "Valoración de cada respuesta por la persona experta" in card and "3 respuestas valoradas" in card
    assert "<td>Peligrosas</td><td>1</td><td>0</td>" in card and "<td>Incorrectas</td><td>0</td><td>1</td>" in card
    # A cookie alone (a cross-site form) never rates: the header is needed, as for every action.
    s.client.cookies.set(s.options.cookie, TOKEN)
    refused = s.client.post("/api/ejecuciones/hecha/valoraciones",
                            json={"indice": 0, "respuesta": "base", "valoracion": "correcta"})
    s.client.cookies.clear()
    assert refused.status_code == 403 and error_of(refused)["codigo"] == "E004"


def test_a_new_evaluation_with_other_answers_inherits_no_rating(studio):
    s = studio()
    run_dir = evaluated_run(s.workspace)
    assert rate(s).status_code == 200
    path = run_dir / EVAL_DIR / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.pop("human_ratings")
    path.write_text(json.dumps(metrics))  # evaluated again, the same answers: the rating still counts
    assert s.get("/api/ejecuciones/hecha").json()["evaluacion"]["valoraciones"]["rated"] == 1
    metrics["samples"][0]["outputs"]["greedy"]["tuned"]["text"] = "Otra respuesta distinta."
    path.write_text(json.dumps(metrics))
    assert s.get("/api/ejecuciones/hecha").json()["evaluacion"]["valoraciones"] is None
    assert s.get("/api/ejecuciones/hecha/valoraciones.jsonl").text == ""


def test_ratings_export_is_one_example_per_rated_answer(studio):
    s = studio()
    evaluated_run(s.workspace)
    rate(s, nota="Completa.")
    rate(s, indice=1, respuesta="base", valoracion="peligrosa")
    answer = s.get("/api/ejecuciones/hecha/valoraciones.jsonl")
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == 'attachment; filename="hecha-valoraciones.jsonl"'
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [(x["modelo"], x["valoracion"]) for x in lines] == [("afinado", "correcta"), ("base", "peligrosa")]
    first, second = lines
    assert set(first) == {"pregunta", "respuesta_de_referencia", "respuesta", "modelo", "valoracion", "nota",
                          "claves_propuestas", "claves_borrador"}
    assert first["pregunta"] == f"{QUESTION_PHRASE} 0" and first["respuesta"].startswith("Enfría con agua corriente 0")
    assert first["respuesta_de_referencia"].startswith("Enfría la zona") and first["nota"] == "Completa."
    # Question 1 has key points: they are proposed as they are. Question 2 has none: a draft from its reference.
    assert first["claves_propuestas"] == [["agua corriente", "agua fría"], ["20 minutos"]]
    assert first["claves_borrador"] is False
    assert second["claves_borrador"] is True
    assert second["claves_propuestas"] == [["enfría zona corriente 20 minutos"], ["no pongas hielo 1"]]
    # The downloaded lines are examples afinar reads (pregunta + respuesta).
    from afinar.config import DataSection, DataSource
    from afinar.data.formats import CODES  # noqa: F401 — the module that parses them loads
    from afinar.data.validate import gather

    path = s.root / "nuevas.jsonl"
    path.write_text(answer.text, encoding="utf-8")
    prepared = gather(DataSection(sources=[DataSource(path=str(path))]))
    assert len(prepared.train) + len(prepared.val) == 2 and not prepared.errors


def test_ratings_of_a_run_whose_texts_are_not_shown_are_not_exported(studio):
    s = studio()
    evaluated_run(s.workspace, "privada", shows=False)
    assert rate(s, "privada").status_code == 200  # rating is allowed: the answers are what the blind rating shows
    answer = s.get("/api/ejecuciones/privada/valoraciones.jsonl")
    assert answer.status_code == 403
    error = error_of(answer)
    assert error["codigo"] == "E036" and "no se pueden descargar" in error["mensaje"]
    assert QUESTION_PHRASE not in answer.text and "Enfría" not in answer.text
    assert s.get("/api/ejecuciones/privada").json()["evaluacion"]["muestra_textos"] is False


@pytest.mark.parametrize(("form", "code", "words"), [
    ({"valoracion": "regular"}, "E037", "valoración no válida"),
    ({"valoracion": ""}, "E037", "valoración no válida"),
    ({"nota": "x" * 501}, "E037", "caben 500"),
    ({"respuesta": "c"}, "E037", "respuesta no válida"),
    ({"indice": 2}, "E032", "no hay pregunta 2"),
    ({"indice": -1}, "E032", "no hay pregunta -1"),
    ({"valoracion": ["correcta"]}, "E006", "petición no válida"),
    ({"extra": 1}, "E006", "petición no válida"),
])
def test_a_bad_rating_is_a_spanish_error_and_nothing_is_written(studio, form, code, words):
    from afinar.studio.cards import HUMAN_RATINGS

    s = studio()
    run_dir = evaluated_run(s.workspace)
    before = (run_dir / EVAL_DIR / "metrics.json").read_bytes()
    answer = rate(s, **form)
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["codigo"] == code and words in error["mensaje"], error
    assert not (run_dir / HUMAN_RATINGS).exists()
    assert (run_dir / EVAL_DIR / "metrics.json").read_bytes() == before
    assert (run_dir / EVAL_DIR / "index.html").read_text() == "informe viejo"


def test_rating_an_answer_while_its_run_is_evaluated_is_refused(studio):
    from afinar.studio.cards import HUMAN_RATINGS

    s = studio()
    run_dir = evaluated_run(s.workspace)
    jobs = s.app.state.jobs
    jobs.current = lambda: {"id": "x", "tipo": "evaluar", "ejecucion": "hecha"}
    try:
        answer = rate(s)
    finally:
        del jobs.current
    assert answer.status_code == 409 and error_of(answer)["codigo"] == "E020"
    assert not (run_dir / HUMAN_RATINGS).exists()


def test_key_points_are_shown_only_after_the_blind_choice(studio):
    s = studio()
    evaluated_run(s.workspace)
    pairs = s.get("/api/ejecuciones/hecha/valoracion").json()["pares"]
    assert all(p["claves"] is None for p in pairs)
    assert "agua corriente" not in json.dumps([p["claves"] for p in pairs])
    assert s.get("/api/ejecuciones/hecha/respuestas").json() == {"respuestas": [], "pendientes": 2,
                                                                   "preguntas_visibles": True}
    chosen = s.post("/api/ejecuciones/hecha/valoracion", json={"indice": 0, "eleccion": "igual"}).json()
    tuned = "a" if pairs[0]["a"].startswith("Enfría") else "b"
    base = "b" if tuned == "a" else "a"
    assert chosen["claves"][tuned] == {"categoria": "correcta", "cubiertas": 1.0, "completa": True, "faltan": [],
                                       "peligros": [], "faltan_ocultas": 0, "peligros_ocultos": 0, "juez": None}
    assert chosen["claves"][base]["faltan"] == ["agua corriente"] and chosen["claves"][base]["peligros"] == ["mantequilla"]
    again = s.get("/api/ejecuciones/hecha/valoracion").json()["pares"]
    assert again[0]["claves"] == chosen["claves"] and again[1]["claves"] is None
    revealed = s.get("/api/ejecuciones/hecha/respuestas").json()
    assert revealed["pendientes"] == 1 and [q["indice"] for q in revealed["respuestas"]] == [0]
    question = revealed["respuestas"][0]
    assert question["afinado"]["texto"].startswith("Enfría") and question["base"]["claves"]["categoria"] == "peligrosa"
    assert question["claves"] == [["agua corriente", "agua fría"], ["20 minutos"]] and question["peligros"] == ["mantequilla"]


def test_the_evaluation_says_first_whether_the_answers_are_right(studio):
    s = studio()
    evaluated_run(s.workspace)
    evaluated_run(s.workspace, "sin-claves", keypoints=False)
    summary = s.get("/api/ejecuciones/hecha").json()["evaluacion"]
    assert summary["veredicto"]["text"] == VERDICT_TEXT and summary["correccion"]["tuned"]["complete_count"] == 1
    assert summary["perdida"] == {"base": 2.5, "tuned": 1.5}  # still there, for «Detalles técnicos» and «Comparar»
    card = s.get("/api/ejecuciones/hecha/resumen").text
    assert card.index(VERDICT_TEXT) < card.index("Puntos clave cubiertos") < card.index("Detalles técnicos") < card.index("Pérdida en preguntas apartadas")
    assert "<td>Respuestas peligrosas (con un consejo peligroso)</td><td>100 % (2 de 2)</td><td>0 % (0 de 2)</td>" in card
    assert "class='veredicto bueno'" in card
    assert QUESTION_PHRASE not in card and "agua corriente" not in card  # numbers only: no question, no key point
    none = s.get("/api/ejecuciones/sin-claves").json()["evaluacion"]
    assert none["correccion"] is None and none["veredicto"]["value"] == "sin_medida"
    card = s.get("/api/ejecuciones/sin-claves/resumen").text
    assert "Sin puntos clave, afinar no puede saber si las respuestas son correctas" in card
    assert "campo «claves»" in card and "Cómo escribir claves" in card and "Puntos clave cubiertos" not in card


@pytest.mark.parametrize(("verdict", "expected"), [
    ({"value": "peor", "more_dangerous": False}, "malo"), ({"value": "mejor", "more_dangerous": True}, "malo"),
    ({"value": "mejor", "more_dangerous": False}, "bueno"), ({"value": "igual", "more_dangerous": False}, ""),
    (None, ""),
])
def test_verdict_colour(verdict, expected):
    from afinar.studio.cards import verdict_class

    assert verdict_class(verdict) == expected


def test_draft_key_points_keep_the_order_and_its_negation():
    from afinar.studio.cards import draft_keypoints

    assert draft_keypoints("Enfría la zona con agua corriente durante 20 minutos. No pongas hielo ni pomadas.") == [
        ["enfría zona corriente 20 minutos"], ["no pongas hielo pomadas"]]
    assert draft_keypoints("") == [] and draft_keypoints("Sí. Y eso.") == []


def test_rating_an_answer_keeps_the_blind_choices(studio):
    """The report is rewritten with each rating of an answer: the blind A/B choices (and the hidden order) must not
    take that for a new evaluation, also when an earlier studio saved them under the file's time."""
    s = studio()
    run_dir = evaluated_run(s.workspace)
    shown = s.get("/api/ejecuciones/hecha/valoracion").json()["pares"]
    assert s.post("/api/ejecuciones/hecha/valoracion", json={"indice": 0, "eleccion": "a"}).status_code == 200
    assert rate(s).status_code == 200
    after = s.get("/api/ejecuciones/hecha/valoracion").json()["pares"]
    assert [p["eleccion"] for p in after] == ["a", None] and [(p["a"], p["b"]) for p in after] == [
        (p["a"], p["b"]) for p in shown]
    saved = json.loads((run_dir / RATINGS).read_text())
    saved["evaluacion"] = (run_dir / EVAL_DIR / "metrics.json").stat().st_mtime  # as the studio before issue 26
    (run_dir / RATINGS).write_text(json.dumps(saved))
    assert rate(s, indice=1, respuesta="base").status_code == 200
    assert [p["eleccion"] for p in s.get("/api/ejecuciones/hecha/valoracion").json()["pares"]] == ["a", None]
    assert s.get("/api/ejecuciones/hecha").json()["valoracion"]["total"] == 1
    # Evaluated again with other answers: a new blind rating (nothing of the old one is counted).
    metrics = json.loads((run_dir / EVAL_DIR / "metrics.json").read_text())
    metrics["samples"][0]["outputs"]["greedy"]["tuned"]["text"] = "Otra respuesta distinta."
    (run_dir / EVAL_DIR / "metrics.json").write_text(json.dumps(metrics))
    assert [p["eleccion"] for p in s.get("/api/ejecuciones/hecha/valoracion").json()["pares"]] == [None, None]


def test_the_evaluation_says_whether_answers_can_be_used_and_what_a_usable_model_takes(studio):
    """On the embedded base: the verdict's companion lines, from the key points and from this machine's own steps."""
    s = studio()
    run_dir = evaluated_run(s.workspace)
    (run_dir / "afinar_run.json").write_text(json.dumps({"base": "smollm2-135m", "steps": 100, "train_seconds": 200.0}))
    usable, bigger = s.get("/api/ejecuciones/hecha").json()["evaluacion"]["que_hace_falta"]
    assert "80 % de los puntos clave" in usable and "1 de 1 respuestas completas" in usable
    assert "No son consejos" not in usable  # 80 % covered and no dangerous answer
    # 2.0 s a step here × 100 steps, scaled by parameters: 494/135 and 1544/135 times as long
    assert "≈ 12 min 12 s con Qwen/Qwen2.5-0.5B-Instruct" in bigger and "2.0 s por paso" in bigger
    (run_dir / "afinar_run.json").write_text(json.dumps({"base": "Qwen/Qwen2.5-1.5B-Instruct", "steps": 10,
                                                          "train_seconds": 60.0}))
    assert len(s.get("/api/ejecuciones/hecha").json()["evaluacion"]["que_hace_falta"]) == 1  # no scaling from a big base


def test_an_evaluation_with_a_judge_passes_it_on_and_a_remote_one_needs_her_permission(studio):
    s = studio("ok")
    evaluated_run(s.workspace)
    form = {"tipo": "evaluar", "ejecucion": "hecha", "preguntas": 2, "juez_modelo": "qwen2.5:7b"}
    remote = s.post("/api/trabajos", json={**form, "juez_url": "http://192.168.1.20:11434/v1"})
    assert remote.status_code >= 400 and error_of(remote)["codigo"] == "J001"
    assert "saldrían" in error_of(remote)["mensaje"] or "salir" in error_of(remote)["mensaje"]
    assert not list(s.workspace.jobs.glob("*.json"))  # nothing started
    half = s.post("/api/trabajos", json={"tipo": "evaluar", "ejecucion": "hecha", "juez_url": "http://127.0.0.1:1/v1"})
    assert half.status_code >= 400 and error_of(half)["codigo"] == "J004"
    job = s.post("/api/trabajos", json={**form, "juez_url": "http://192.168.1.20:11434/v1", "juez_remoto": True}).json()
    s.wait_end(job["id"])
    call = json.loads((s.root / "llamadas.jsonl").read_text().splitlines()[-1])
    assert call[-5:] == ["--juez", "http://192.168.1.20:11434/v1", "--juez-modelo", "qwen2.5:7b", "--permitir-remoto"]


def test_hidden_key_points_are_counted_not_shown():
    from afinar.studio.cards import _keypoints_view

    row = {"keypoints": {"covered": 0.5, "complete": False, "dangerous": True, "missing": [], "dangers": [],
                         "missing_count": 1, "dangers_count": 1, "category": "peligrosa"}}
    view = _keypoints_view(row)
    assert (view["faltan"], view["faltan_ocultas"], view["peligros_ocultos"]) == ([], 1, 1)


PLAN_PYTHON = r'''#!{python}
import json, sys
from pathlib import Path

args = sys.argv[1:]
Path("llamadas.jsonl").open("a", encoding="utf-8").write(json.dumps(args) + "\n")
assert args[2] == "plan" and "--bases" in args and "--json" in args, args
print(json.dumps({"memory": {"verdict": "cabe"}, "bases": [
    {"key": "smollm2-135m", "label": "SmolLM2 135M", "kind": "incluido", "verdict": "cabe", "current": True,
     "memory_bytes": 2 * 2**30, "step_seconds": 2.0, "total_seconds": 120.0},
    {"key": "Qwen/Qwen2.5-1.5B-Instruct", "label": "Qwen2.5 1,5B", "kind": "hub", "verdict": "no cabe",
     "download_bytes": 3087467144, "memory_bytes": 30 * 2**30, "step_seconds": 30.0, "total_seconds": 1800.0}]}))
'''


def test_bases_endpoint_lists_the_catalog_of_afinar_plan(studio, tmp_path):
    python = tmp_path / "python-plan"
    python.write_text(PLAN_PYTHON.replace("{python}", sys.executable), encoding="utf-8")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    s = studio("ok", python=str(python))
    s.recipe("con-bases")
    answer = s.get("/api/bases?receta=con-bases")
    assert answer.status_code == 200, answer.text
    catalog = answer.json()
    assert [b["key"] for b in catalog["bases"]] == ["smollm2-135m", "Qwen/Qwen2.5-1.5B-Instruct"]
    assert catalog["bases"][1]["verdict"] == "no cabe" and catalog["bases"][0]["current"]
    assert "--bases" in catalog["comando"]
    call = json.loads((s.root / "llamadas.jsonl").read_text().splitlines()[-1])
    assert call[2:] == ["plan", "recetas/con-bases.yaml", "--no-calibrar", "--json", "--bases"]
    missing = s.get("/api/bases?receta=no-existe")
    assert missing.status_code == 404 and error_of(missing)["codigo"] == "E015"
    page = s.get("/static/studio.js").text
    assert "/api/bases?receta=" in page and "Usar este" in page
