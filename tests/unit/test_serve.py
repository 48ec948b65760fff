"""`afinar serve`: the OpenAI contract (official client), personalities, limits, auth and quiet logs."""
import logging
import socket
import threading
import time

import httpx
import pytest

from afinar.errors import AfinarError
from afinar.inference.engines import Sampling, TransformersEngine
from afinar.inference.server import Limits, ServeOptions, check_bind, create_app, request_hostname
from afinar.runs import open_ref
from tests.conftest import train_tiny_run

QUESTION = "¿Qué hago con una quemadura?"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base):
    """Two personalities on one base: adapters trained apart, so their answers differ."""
    folder = tmp_path_factory.mktemp("serve")
    (folder / "a").mkdir(); (folder / "b").mkdir()
    first = train_tiny_run(folder / "a", tiny_base, "enfermeria", 16, {"max_steps": 3, "seed": 1, "lr": 5e-2},
                           generation={"temperature": 0.0, "max_new_tokens": 12})
    (first / "informe").mkdir(exist_ok=True)
    (first / "informe" / "index.html").write_text("<h1>Informe de prueba</h1>", encoding="utf-8")
    second = train_tiny_run(folder / "b", tiny_base, "tutor_algoritmos", 16, {"max_steps": 3, "seed": 2, "lr": 5e-2},
                            data={"system_prompt": "Eres un tutor de algoritmos."},
                            generation={"temperature": 0.0, "max_new_tokens": 12})
    return first, second


@pytest.fixture(scope="module")
def engine(runs):
    return TransformersEngine([open_ref(r) for r in runs])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An app under uvicorn in a thread, on `port` (a free one if not given)."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "el servidor no arrancó"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def url(engine):
    app = create_app(engine, ServeOptions(limits=Limits(max_body_bytes=4096, max_prompt_tokens=200, max_tokens=64)))
    with Server(app) as base:
        yield base


def client(url, key="sin-clave"):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def expected(runs, which, question=QUESTION, max_tokens=12):
    """The answer of one adapter alone, from its own single-personality engine."""
    single = TransformersEngine([open_ref(runs[which])])
    personality = next(iter(single.personalities.values()))
    from afinar.data.templates import with_system

    messages = with_system([{"role": "user", "content": question}], personality.system_prompt)
    return single.complete(personality.id, messages, Sampling(temperature=0.0, max_tokens=max_tokens))


def test_models_health_and_personalities(url):
    ids = [m.id for m in client(url).models.list().data]
    assert ids == ["enfermeria", "tutor-algoritmos"]
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "engine": "transformers", "models": ids}
    info = httpx.get(f"{url}/api/personalidades").json()
    assert info[1]["system_prompt"] == "Eres un tutor de algoritmos." and info[0]["temperature"] == 0.0
    # the page links a run's evaluation report when there is one
    assert info[0]["informe"] == "/informe/enfermeria" and info[1]["informe"] is None
    assert "Informe de prueba" in httpx.get(f"{url}/informe/enfermeria").text
    assert httpx.get(f"{url}/informe/tutor-algoritmos").status_code == 404
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "afinar · chat" in page.text and 'lang="es"' in page.text


def test_non_streaming_answer_and_usage(url, runs, engine):
    reply = client(url).chat.completions.create(model="enfermeria", messages=[{"role": "user", "content": QUESTION}],
                                                temperature=0, max_tokens=12)
    want = expected(runs, 0)
    assert reply.choices[0].message.content == want.text and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == ("stop" if want.stopped else "length")
    assert reply.usage.prompt_tokens == want.prompt_tokens and reply.usage.completion_tokens == want.completion_tokens
    assert reply.usage.total_tokens == want.prompt_tokens + want.completion_tokens


def test_streaming_gives_the_same_text_and_usage(url, runs):
    stream = client(url).chat.completions.create(
        model="tutor-algoritmos", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=12,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = expected(runs, 1)
    assert text.strip() == want.text
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    # Really streamed, piece by piece; a tiny model's answer that is one run of partial UTF-8 bytes can only come
    # out whole (the server never sends half a character), so the count needs at least two words to mean anything.
    assert len(pieces) >= 2 or len(want.text.split()) < 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop" if want.stopped else "length"]
    assert chunks[-1].usage.completion_tokens == want.completion_tokens


def test_interleaved_requests_to_two_personalities_each_get_their_adapter(url, runs):
    want = {"enfermeria": expected(runs, 0).text, "tutor-algoritmos": expected(runs, 1).text}
    assert want["enfermeria"] != want["tutor-algoritmos"]  # otherwise this test could not tell them apart
    got: list[tuple[str, str]] = []

    def ask(model, stream):
        c = client(url)
        if stream:
            parts = c.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                              temperature=0, max_tokens=12, stream=True)
            got.append((model, "".join(p.choices[0].delta.content or "" for p in parts if p.choices).strip()))
        else:
            r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                          temperature=0, max_tokens=12)
            got.append((model, r.choices[0].message.content))

    threads = [threading.Thread(target=ask, args=(m, i % 3 == 0)) for i, m in
               enumerate(["enfermeria", "tutor-algoritmos"] * 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 8
    for model, text in got:
        assert text == want[model], model


def test_errors_follow_the_openai_shape(url):
    import openai

    c = client(url)
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="no-existe", messages=[{"role": "user", "content": "hola"}])
    assert "no-existe" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="enfermeria", messages=[{"role": "user", "content": "hola"}], max_tokens=65)
    assert "límite" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:  # 200 prompt tokens at most
        c.chat.completions.create(model="enfermeria", messages=[{"role": "user", "content": "0 1 2 3 4 5 6 7 8 9 " * 30}])
    assert "tokens" in str(info.value)
    response = httpx.post(f"{url}/v1/chat/completions", content=b"{" + b" " * 5000 + b"}",
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "enfermeria", "messages": []})
    assert response.status_code == 400 and "messages" in response.json()["error"]["message"]


def test_api_key_cors_and_bind_rules(engine):
    import openai

    app = create_app(engine, ServeOptions(api_key="clave-secreta", cors=["http://localhost:4200"]))
    with Server(app) as base:
        with pytest.raises(openai.AuthenticationError):
            client(base, "otra").models.list()
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert [m.id for m in client(base, "clave-secreta").models.list().data] == ["enfermeria", "tutor-algoritmos"]
        allowed = httpx.options(f"{base}/v1/models", headers={"Origin": "http://localhost:4200",
                                                               "Access-Control-Request-Method": "GET"})
        assert allowed.headers.get("access-control-allow-origin") == "http://localhost:4200"
        other = httpx.options(f"{base}/v1/models", headers={"Origin": "http://evil.example",
                                                             "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in other.headers
    with pytest.raises(AfinarError) as info:
        check_bind("0.0.0.0", None)
    assert info.value.code == "S001"
    check_bind("0.0.0.0", "clave")
    check_bind("127.0.0.1", None)
    with pytest.raises(AfinarError) as info:
        create_app(engine, ServeOptions(cors=["*"]))
    assert info.value.code == "S002"


def test_logs_hold_no_message_content_unless_asked(engine, caplog):
    secret = "paciente Ramírez con DNI 12345678Z"
    for log_content in (False, True):
        caplog.clear()
        app = create_app(engine, ServeOptions(log_content=log_content))
        with caplog.at_level(logging.INFO, logger="afinar.serve"), Server(app) as base:
            client(base).chat.completions.create(model="enfermeria", messages=[{"role": "user", "content": secret}],
                                                 max_tokens=4)
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "POST /v1/chat/completions → 200" in logged
        assert (secret in logged) is log_content


def test_host_origin_and_chunked_bodies_are_checked(engine):
    """DNS rebinding (a foreign Host on a loopback server), a foreign page's Origin, and a chunked body with no
    declared size: refused, the chunked one as soon as it passes the limit."""
    from afinar.inference.server import LOOPBACK

    app = create_app(engine, ServeOptions(limits=Limits(max_body_bytes=4096), allowed_hosts=LOOPBACK | {"127.0.0.1"}))
    with Server(app) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        rebound = httpx.get(f"{base}/v1/models", headers={"Host": f"ataque.example:{base.rsplit(':', 1)[1]}"})
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
        foreign = httpx.post(f"{base}/v1/chat/completions", content=b'{"model": "enfermeria"}',
                             headers={"Origin": "http://ataque.example", "Content-Type": "text/plain"})
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
        same = httpx.post(f"{base}/v1/chat/completions", json={"model": "enfermeria", "messages": []},
                          headers={"Origin": base})
        assert same.status_code == 400  # past the guard: the empty messages are the route's error

        def chunks(count):
            for _ in range(count):
                yield b" " * 1024

        chunked = httpx.post(f"{base}/v1/chat/completions", content=chunks(8), headers={"Content-Type": "application/json"})
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"

    # serve() on loopback refuses other Host names; elsewhere (with a key) any
    assert request_hostname("[::1]:8000") == "::1" and request_hostname("LocalHost") == "localhost"


def test_an_endless_chunked_body_is_cut_off_at_the_limit(engine):
    """At the ASGI level, a body that never ends: the server stops reading once past the limit and answers 413
    (before this, the whole body was read first: it would have pulled all 1000 chunks)."""
    import asyncio

    app = create_app(engine, ServeOptions(limits=Limits(max_body_bytes=4096)))
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        if len(pulled) > 1000:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    assert len(pulled) <= 4096 // 1024 + 2


# --- `afinar serve --con-base`: the base model beside the runs --------------------------------------------------


@pytest.fixture(scope="module")
def base_engine(runs):
    return TransformersEngine([open_ref(r) for r in runs], with_base=True)


def ask(engine, model_id, question=QUESTION, max_tokens=12):
    from afinar.data.templates import with_system

    messages = with_system([{"role": "user", "content": question}], engine.personalities[model_id].system_prompt)
    return engine.complete(model_id, messages, Sampling(temperature=0.0, max_tokens=max_tokens))


def plain_base_answer(run, base_folder, question=QUESTION, max_tokens=12):
    """The base model loaded on its own (no PEFT at all), prompted the way the run is (its chat format and system
    prompt), greedy: what the `base` personality must say."""
    import torch

    from afinar.config import GenerationSection
    from afinar.data.chat_format import stops_of
    from afinar.data.templates import with_system
    from afinar.inference.engines import transformers_stream
    from afinar.models import load_model, load_tokenizer

    ref = open_ref(run)
    tokenizer = load_tokenizer(str(run))
    model = load_model(str(base_folder), dtype=torch.float32).eval()
    messages = with_system([{"role": "user", "content": question}], ref.system_prompt)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    *_, reply = transformers_stream(model, tokenizer, prompt, GenerationSection(temperature=0.0, max_new_tokens=max_tokens),
                                    stops=stops_of(tokenizer, run))
    return reply


def test_con_base_adds_a_base_personality_marked_in_the_api(base_engine, runs):
    assert list(base_engine.personalities) == ["enfermeria", "tutor-algoritmos", "base"]
    base, first = base_engine.personalities["base"], base_engine.personalities["enfermeria"]
    # a fair comparison: the first run's system prompt and generation settings
    assert base.is_base and base.system_prompt == first.system_prompt == "Eres un asistente."
    assert base.generation == first.generation and base.report is None
    with Server(create_app(base_engine, ServeOptions())) as url:
        assert [m.id for m in client(url).models.list().data] == ["enfermeria", "tutor-algoritmos", "base"]
        info = {p["id"]: p for p in httpx.get(f"{url}/api/personalidades").json()}
        assert {k: p["es_base"] for k, p in info.items()} == {"enfermeria": False, "tutor-algoritmos": False, "base": True}
        assert info["base"]["system_prompt"] == "Eres un asistente." and info["base"]["temperature"] == 0.0
        reply = client(url).chat.completions.create(model="base", messages=[{"role": "user", "content": QUESTION}],
                                                    temperature=0, max_tokens=12)
        assert reply.choices[0].message.content == plain_base_answer(runs[0], open_ref(runs[0]).base_path).text
    # without the flag, nothing changes
    plain = TransformersEngine([open_ref(runs[0])])
    assert list(plain.personalities) == ["enfermeria"] and not plain.personalities["enfermeria"].is_base


def test_base_answers_like_the_base_model_loaded_alone(base_engine, runs, tiny_base):
    got, want = ask(base_engine, "base"), plain_base_answer(runs[0], tiny_base)
    assert (got.text, got.completion_tokens, got.stopped) == (want.text, want.completion_tokens, want.stopped)
    assert got.text  # something to compare
    tuned = ask(base_engine, "enfermeria")
    assert tuned.text == expected(runs, 0).text
    assert tuned.text != got.text  # the adapter changes the answer: the base really is computed without it


def test_base_and_tuned_requests_never_mix_adapter_state(base_engine, runs):
    from afinar.data.templates import with_system

    want = {"enfermeria": expected(runs, 0).text, "tutor-algoritmos": expected(runs, 1).text,
            "base": ask(base_engine, "base").text}
    assert len(set(want.values())) == 3
    before = ask(base_engine, "enfermeria").text
    ask(base_engine, "base")
    assert ask(base_engine, "enfermeria").text == before == want["enfermeria"]
    # a base answer left half-way (the client went away) still puts the adapters back on
    messages = with_system([{"role": "user", "content": QUESTION}], "Eres un asistente.")
    pieces = base_engine.stream("base", messages, Sampling(temperature=0.0, max_tokens=12))
    next(pieces)
    pieces.close()
    assert base_engine.model.get_model_status().enabled is True
    assert ask(base_engine, "tutor-algoritmos").text == want["tutor-algoritmos"]
    assert base_engine.lock.acquire(timeout=1)  # and the lock was released
    base_engine.lock.release()

    # concurrent requests over HTTP, base among them, streaming or not: each gets its own weights
    got: list[tuple[str, str]] = []
    with Server(create_app(base_engine, ServeOptions())) as url:
        def request(model, stream):
            c = client(url)
            kwargs = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                      "max_tokens": 12}
            if stream:
                parts = c.chat.completions.create(stream=True, **kwargs)
                got.append((model, "".join(p.choices[0].delta.content or "" for p in parts if p.choices).strip()))
            else:
                got.append((model, c.chat.completions.create(**kwargs).choices[0].message.content))

        threads = [threading.Thread(target=request, args=(m, i % 2 == 0)) for i, m in
                   enumerate(["base", "enfermeria", "base", "tutor-algoritmos"] * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(got) == 8

    def same(text):  # a stream never sends half a character: a tiny model's trailing partial byte is left out
        return text.rstrip("\ufffd").strip()

    for model, text in got:
        assert same(text) == same(want[model]), model


def test_base_id_does_not_clash_with_a_run_called_base():
    from afinar.inference.engines import base_personality_id

    assert base_personality_id({"enfermeria"}) == "base"
    assert base_personality_id({"base", "enfermeria"}) == "base-original"
    assert base_personality_id({"base", "base-original"}) == "base-original-2"


def test_con_base_is_refused_for_gguf_and_onnx_exports(tmp_path):
    """An export holds only the tuned model: S013, before anything is loaded (these files are empty)."""
    from afinar.inference.engines import load_engine

    onnx = tmp_path / "export"
    (onnx / "onnx").mkdir(parents=True)
    (onnx / "onnx" / "model.onnx").write_bytes(b"")
    gguf = tmp_path / "gguf" / "modelo-q8_0.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    for source, kind in ((onnx, "ONNX"), (gguf, "GGUF")):
        with pytest.raises(AfinarError) as info:
            load_engine([source], with_base=True)
        assert info.value.code == "S013" and kind in str(info.value)
        assert "afinar serve RUN --con-base" in (info.value.hint or "")


def test_con_base_on_a_merged_folder_loads_the_base_beside_it(runs, tiny_base, tmp_path):
    """A merged (or full) model has no adapter to turn off: the base is a second model, from afinar_merge.json;
    a copy without that file cannot say which base it came from (S014)."""
    import shutil

    from afinar.merge import merge

    merged = merge(runs[0], tmp_path / "fusionado")
    engine = TransformersEngine([open_ref(merged)], with_base=True)
    assert list(engine.personalities) == ["enfermeria", "base"] and engine.base_model is not None
    assert ask(engine, "base").text == plain_base_answer(runs[0], tiny_base).text
    assert ask(engine, "enfermeria").text == expected(runs, 0).text
    copy = shutil.copytree(merged, tmp_path / "copia")
    (copy / "afinar_merge.json").unlink()
    with pytest.raises(AfinarError) as info:
        TransformersEngine([open_ref(copy)], with_base=True)
    assert info.value.code == "S014"
