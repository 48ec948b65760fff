"""The optional judge of `afinar eval` (evaluate/judge.py): a fake OpenAI-compatible server in a thread plays every
way a judge answers or fails; one plumbing run goes through the real `afinar serve` of the embedded model."""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from afinar.errors import AfinarError
from afinar.evaluate.judge import (
    NO_VERDICT,
    VERDICTS,
    agreement,
    api_base,
    cache_key,
    check_url,
    judge_answers,
    parse_reply,
    user_prompt,
)

QUESTION = "Paciente de 70 años con una quemadura en la mano, ¿qué hago?"


def item(answer="Enfría con agua 20 minutos.", verdict=None, question=QUESTION):
    """One evaluation item; `verdict` is a marker the fake judge reads back ([[incompleta]])."""
    return {"question": question, "reference": "Enfriar con agua corriente 20 minutos; no poner hielo.",
            "answer": answer + (f" [[{verdict}]]" if verdict else ""),
            "claves": [["agua corriente", "agua del grifo"], ["20 minutos", "veinte minutos"]],
            "peligros": ["hielo", "mantequilla"]}


def completion(content: str) -> dict:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "juez",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def verdict_json(body: dict, style: str = "json") -> str:
    user = body["messages"][-1]["content"]
    found = re.search(r"\[\[(\w+)\]\]", user)
    verdict = found.group(1) if found else "correcta"
    if style == "prosa":  # a chatty judge: prose around a fenced object, keys and verdict in other case/accents
        return f'Vale, aquí va mi valoración:\n```json\n{{"Veredicto": "{verdict.upper()}", "Motivo": "Da los puntos."}}\n```\nEspero que ayude.'
    return json.dumps({"veredicto": verdict, "motivo": "Da los puntos clave."})


class FakeJudge(BaseHTTPRequestHandler):
    """POST /v1/chat/completions; the model name picks the behaviour."""

    def log_message(self, *args):  # quiet
        pass

    def send(self, status: int, payload, content_type="application/json", headers=None):
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            seen = sum(r["body"]["model"] == model for r in server.requests)
        if self.path != "/v1/chat/completions":
            return self.send(404, {"error": {"message": "no"}})
        if model == "juez":
            return self.send(200, completion(verdict_json(body)))
        if model == "prosa":
            return self.send(200, completion(verdict_json(body, "prosa")))
        if model == "basura":
            return self.send(200, completion("Creo que está bastante bien, la verdad."))
        if model == "html":  # not even a chat completion
            return self.send(200, "<html>hola</html>", "text/html")
        if model == "falla-una-vez" and seen == 1:
            return self.send(500, {"error": {"message": "caído"}}, headers={"retry-after-ms": "10"})
        if model == "falla-una-vez":
            return self.send(200, completion(verdict_json(body)))
        if model == "lento":
            server.release.wait(10)
            return self.send(200, completion(verdict_json(body)))
        if model == "sin-formato":
            if "response_format" in body:
                return self.send(400, {"error": {"message": "response_format no soportado", "type": "invalid_request_error"}})
            return self.send(200, completion(verdict_json(body)))
        if model == "rechaza":  # a 400 that is not about response_format (a prompt too long, say)
            return self.send(400, {"error": {"message": "demasiado largo", "type": "invalid_request_error"}})
        return self.send(404, {"error": {"message": "modelo desconocido", "code": "model_not_found"}})


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # the hung request's thread is not waited for

    def handle_error(self, request, client_address):  # the client gave up on the hung request: nothing to say
        pass


@pytest.fixture(scope="module")
def fake():
    server = QuietServer(("127.0.0.1", 0), FakeJudge)
    server.requests, server.lock, server.release = [], threading.Lock(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def url(fake):
    fake.requests.clear()
    return f"http://127.0.0.1:{fake.server_address[1]}"


def run(items, url, model, tmp_path, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("retries", 0)
    kw.setdefault("timeout", 10)
    return judge_answers(items, url, model, cache_dir=tmp_path / "juez", **kw)


# --- talking to a judge -------------------------------------------------------------------------------------------

def test_verdicts_are_parsed_and_the_request_is_the_rubric(url, fake, tmp_path, monkeypatch):
    monkeypatch.delenv("AFINAR_JUEZ_API_KEY", raising=False)
    items = [item("a", "correcta"), item("b", "incompleta"), item("c", "incorrecta"), item("d", "peligrosa")]
    result = run(items, url + "/v1", "juez", tmp_path)
    assert [v["verdict"] for v in result.verdicts] == list(VERDICTS)
    assert result.verdicts[0]["reason"] == "Da los puntos clave."
    assert (result.answered, result.failures, result.cached, result.note) == (4, 0, 0, None)
    assert result.counts() == {"correcta": 1, "incompleta": 1, "incorrecta": 1, "peligrosa": 1, NO_VERDICT: 0}
    request = fake.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sin-clave"
    body = request["body"]
    assert body["temperature"] == 0 and body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and '"veredicto"' in system["content"] and "peligrosa" in system["content"]
    for text in (QUESTION, "Enfriar con agua corriente", "agua corriente / agua del grifo", "- hielo", "a [[correcta]]"):
        assert text in user["content"]
    assert json.dumps(result.summary())  # serialisable for metrics.json


def test_url_without_v1_and_the_api_key_from_the_environment(url, fake, tmp_path, monkeypatch):
    monkeypatch.setenv("AFINAR_JUEZ_API_KEY", "clave-del-juez")
    result = run([item()], url + "/", "juez", tmp_path)
    assert result.verdicts == [{"verdict": "correcta", "reason": "Da los puntos clave."}]
    assert fake.requests[0]["path"] == "/v1/chat/completions" and fake.requests[0]["auth"] == "Bearer clave-del-juez"
    assert api_base("http://h:1") == api_base("http://h:1/v1/") == api_base("http://h:1/v1/chat/completions") == "http://h:1/v1"
    assert api_base("http://h:11434/api/v1") == "http://h:11434/api/v1"


def test_json_inside_prose_with_other_case_and_accents(url, tmp_path):
    result = run([item("x", "peligrosa"), item("y", "incompleta")], url, "prosa", tmp_path)
    assert [v["verdict"] for v in result.verdicts] == ["peligrosa", "incompleta"]
    assert result.verdicts[0]["reason"] == "Da los puntos."


def test_garbage_is_sin_veredicto_and_not_cached(url, fake, tmp_path):
    result = run([item("x"), item("y")], url, "basura", tmp_path)
    assert [v["verdict"] for v in result.verdicts] == [NO_VERDICT, NO_VERDICT]
    assert "JSON" in result.verdicts[0]["reason"]
    assert result.failures == 2 and result.failure_kinds == {"formato": 2} and not result.stopped
    assert "No se pudo usar el juez" in result.note and "sin veredicto" in result.note
    again = run([item("x")], url, "basura", tmp_path)
    assert again.cached == 0 and len(fake.requests) == 3  # asked again: a failure is not remembered
    html = run([item("x")], url, "html", tmp_path)
    assert html.verdicts[0]["verdict"] == NO_VERDICT and html.failure_kinds == {"formato": 1}


def test_a_500_is_retried(url, fake, tmp_path):
    result = run([item("x", "incompleta")], url, "falla-una-vez", tmp_path, retries=2)
    assert result.verdicts[0]["verdict"] == "incompleta" and result.note is None
    assert len(fake.requests) == 2
    fake.requests.clear()
    no_retry = run([item("y")], url, "otro-modelo", tmp_path)  # 404: the note suggests the model name
    assert no_retry.failure_kinds == {"http": 1} and "404" in no_retry.verdicts[0]["reason"]
    assert "modelo" in no_retry.verdicts[0]["reason"]


def test_a_hang_longer_than_the_timeout(url, tmp_path):
    started = time.monotonic()
    result = run([item("x")], url, "lento", tmp_path, timeout=0.5)
    assert time.monotonic() - started < 5
    assert result.verdicts[0]["verdict"] == NO_VERDICT and result.failure_kinds == {"tiempo": 1}
    assert "0.5 s" in result.verdicts[0]["reason"] and "tiempo" in result.note


def test_a_server_without_json_mode_is_asked_without_it(url, fake, tmp_path):
    result = run([item("x", "incorrecta"), item("y", "correcta")], url, "sin-formato", tmp_path)
    assert [v["verdict"] for v in result.verdicts] == ["incorrecta", "correcta"]
    # one refused request, then plain ones: the fallback is remembered for the next items
    assert ["response_format" in r["body"] for r in fake.requests] == [True, False, False]
    fake.requests.clear()
    refused = run([item("x"), item("y")], url, "rechaza", tmp_path)
    assert refused.failure_kinds == {"http": 2} and "400" in refused.verdicts[0]["reason"]
    assert ["response_format" in r["body"] for r in fake.requests] == [True, False, True, False]  # still tried


def test_the_cache_avoids_asking_again(url, fake, tmp_path):
    items = [item("a", "incompleta"), item("b", "peligrosa")]
    first = run(items, url, "juez", tmp_path)
    assert len(fake.requests) == 2 and first.cached == 0
    files = sorted((tmp_path / "juez").glob("*.json"))
    assert [f.stem for f in files] == sorted(cache_key("juez", i) for i in items)
    assert all(QUESTION not in f.read_text(encoding="utf-8") for f in files)  # a hash names it, no text kept
    assert not [f for f in (tmp_path / "juez").iterdir() if f.name.startswith(".")]  # atomic: no temp files left
    second = run(items, url.replace("127.0.0.1", "localhost"), "juez", tmp_path)  # the URL is not in the key
    assert second.verdicts == first.verdicts and second.cached == 2 and second.answered == 2
    assert len(fake.requests) == 2  # no new request
    changed = run([item("a otra", "correcta"), items[1]], url, "juez", tmp_path)
    assert len(fake.requests) == 3 and changed.cached == 1
    assert cache_key("otro-juez", items[0]) != cache_key("juez", items[0])
    (tmp_path / "juez" / f"{cache_key('juez', items[0])}.json").write_text("{roto", encoding="utf-8")
    run(items[:1], url, "juez", tmp_path)
    assert len(fake.requests) == 4  # a broken entry is asked again


def test_no_text_of_the_examples_is_printed_or_logged(url, tmp_path, capsys, caplog):
    caplog.set_level("DEBUG")
    run([item("respuesta-secreta", "correcta"), item("otra-secreta")], url, "basura", tmp_path, progress=True)
    run([item("respuesta-secreta")], "http://127.0.0.1:9", "juez", tmp_path, progress=True)
    out = capsys.readouterr()
    everything = out.out + out.err + caplog.text
    assert "Juez: valorando respuestas" in out.err
    assert logging.getLogger("openai").level == logging.NOTSET  # the judge's quieting of the client is undone
    assert "secreta" not in everything and "quemadura" not in everything


# --- an unusable judge --------------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: nothing listens there


def test_an_unreachable_judge_gives_up_quickly_and_says_so(tmp_path):
    items = [item(str(i)) for i in range(6)]
    started = time.monotonic()
    result = run(items, f"http://127.0.0.1:{closed_port()}", "juez", tmp_path, retries=1)
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # 3 tries (each retried once), then no more calls
    assert [v["verdict"] for v in result.verdicts] == [NO_VERDICT] * 6
    assert result.stopped and result.failure_kinds == {"conexion": 3, "omitida": 3}
    assert result.answered == 0 and result.failures == 6
    assert result.note.startswith("No se pudo usar el juez") and "no se pudo conectar" in result.note
    assert "3 fallos seguidos" in result.note and "sigue sin juez" in result.note
    assert "no se preguntó" in result.verdicts[-1]["reason"]


def test_cached_verdicts_survive_an_unreachable_judge(url, tmp_path):
    run([item("a", "incompleta")], url, "juez", tmp_path)
    result = run([item("a", "incompleta"), item("b")], f"http://127.0.0.1:{closed_port()}", "juez", tmp_path)
    assert [v["verdict"] for v in result.verdicts] == ["incompleta", NO_VERDICT]
    assert result.cached == 1 and result.failures == 1
    assert result.note.startswith("El juez (juez en http://127.0.0.1:") and "1 de 2" in result.note


def test_remote_urls_need_permission():
    for local in ("http://127.0.0.1:8000", "http://127.3.4.5", "http://localhost:11434/v1", "https://LOCALHOST.",
                  "http://[::1]:8000/v1", "http://[::ffff:127.0.0.1]:80"):
        check_url(local, allow_remote=False)
    for remote in ("http://example.com:8000", "http://192.168.1.10:8000/v1", "https://api.openai.com/v1",
                   "http://[2001:db8::1]:80", "http://127.0.0.1.example.com"):
        with pytest.raises(AfinarError) as info:
            check_url(remote, allow_remote=False)
        assert info.value.code == "J001" and "saldrían de este equipo" in info.value.message
        assert "--permitir-remoto" in info.value.hint
        check_url(remote, allow_remote=True)  # allowed: no connection is made to check
    for bad in ("127.0.0.1:8000", "ftp://127.0.0.1", "http://", "http://127.0.0.1:notaport"):
        with pytest.raises(AfinarError) as info:
            check_url(bad, allow_remote=True)
        assert info.value.code == "J002"


def test_judge_answers_refuses_a_remote_judge_before_sending_anything(tmp_path):
    with pytest.raises(AfinarError) as info:
        run([item()], "http://example.com:8000", "juez", tmp_path)
    assert info.value.code == "J001"


def test_without_the_openai_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openai", None)  # import fails as if not installed
    with pytest.raises(AfinarError) as info:
        run([item()], "http://127.0.0.1:9", "juez", tmp_path)
    assert info.value.code == "J003" and "pip install openai" in info.value.hint
    assert run([], "http://127.0.0.1:9", "juez", tmp_path).verdicts == []  # nothing to ask: no client needed


# --- pieces -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, verdict", [
    ('{"veredicto": "correcta", "motivo": "bien"}', "correcta"),
    ('Mi respuesta: {"veredicto": "Incompleta", "motivo": "falta"} fin', "incompleta"),
    ('```json\n{"VEREDICTO": "PELIGROSO"}\n```', "peligrosa"),
    ('{"verdict": "incorrecta."}', "incorrecta"),
    ('{"otra": 1} y luego {"veredicto": "correcta"}', "correcta"),
    ('{"veredicto": {"x": 1}} {"veredicto": "incompleta"}', "incompleta"),
    ('{"veredicto": "regular", "motivo": "ni fu ni fa"}', NO_VERDICT),
    ('["correcta"]', NO_VERDICT),
    ("correcta", NO_VERDICT),
    ('{"veredicto": "correcta"', NO_VERDICT),
    ("", NO_VERDICT),
    (None, NO_VERDICT),
])
def test_parse_reply(text, verdict):
    got, reason = parse_reply(text)
    assert got == verdict
    if got == NO_VERDICT:
        assert reason


def test_the_prompt_without_keypoints_or_dangers():
    prompt = user_prompt({"question": "¿P?", "reference": "R", "answer": "A", "claves": [], "peligros": []})
    assert "no se han indicado" in prompt and "¿P?" in prompt and "\nA\n" in prompt


def test_agreement():
    judge = ["correcta", "incompleta", NO_VERDICT, "peligrosa", "incorrecta"]
    keypoints = ["correcta", "correcta", "correcta", "peligrosa", "sin claves"]
    assert agreement(judge, keypoints) == pytest.approx(2 / 3, abs=1e-4)
    assert agreement([{"verdict": "correcta", "reason": ""}], ["correcta"]) == 1.0
    assert agreement([NO_VERDICT], ["sin claves"]) is None and agreement([], []) is None
    with pytest.raises(ValueError):
        agreement(["correcta"], [])


# --- plumbing through the real `afinar serve` ---------------------------------------------------------------------

@pytest.mark.slow  # 30 s to minutes on two shared CPU cores: starting the server, then three 64-token generations
def test_plumbing_through_afinar_serve_of_the_embedded_model(tmp_path):
    """PLUMBING ONLY: the judge's requests go through the real `afinar serve` (a subprocess on the embedded
    SmolLM2-135M) and every item comes back with a verdict or «sin veredicto», no transport failure. What the model
    says is not checked: a 135M model is not a competent judge."""
    from afinar.models import resolve_base

    base = resolve_base("smollm2-135m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "afinar", "serve", str(base), "--port", str(port)],
                                   stdout=sink, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text(encoding="utf-8", errors="replace")[-2000:]
            assert time.monotonic() < deadline, "afinar serve no arrancó"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        items = [item("Enfría la quemadura con agua corriente durante 20 minutos."),
                 item("Pon hielo y mantequilla en la quemadura."),
                 item("Llama a tu médico.")]
        result = judge_answers(items, url, model, timeout=300, retries=0, cache_dir=tmp_path / "juez", progress=False,
                               max_tokens=64)
        print(f"\njuez {model}: {result.counts()} fallos={result.failure_kinds} {result.seconds:.1f} s")
        assert len(result.verdicts) == 3
        assert all(v["verdict"] in (*VERDICTS, NO_VERDICT) for v in result.verdicts)
        assert set(result.failure_kinds) <= {"formato"}  # reached the server and got replies every time
        judged = [i for i, v in zip(items, result.verdicts) if v["verdict"] != NO_VERDICT]
        assert run(judged, url, model, tmp_path).cached == len(judged)  # whatever it said, it is cached now
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
