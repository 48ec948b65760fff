"""`--base ollama:NOMBRE`: a fake Ollama store laid out as Ollama writes it (manifests/…, blobs/sha256-…)."""
import hashlib
import json
import os
import stat
import types
from pathlib import Path

import pytest

from afinar import ollama_store as store_mod
from afinar.config import GenerationSection
from afinar.errors import AfinarError
from afinar.export import ollama as export_ollama
from afinar.ollama_store import (
    ADAPTER,
    MODEL,
    PARAMS,
    PROJECTOR,
    SYSTEM,
    TEMPLATE,
    OllamaName,
    find_model,
    list_models,
    list_names,
    parse_name,
    verify_digest,
)

DATA = Path(__file__).parents[1] / "data" / "ollama"
CHATML_GO = (DATA / "chatml" / "template.gotmpl").read_text(encoding="utf-8")
ZEPHYR_GO = (DATA / "zephyr" / "template.gotmpl").read_text(encoding="utf-8")
FAKE_GGUF = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4  # the magic is all find_model reads of it


def _blob(store: Path, content: bytes) -> dict:
    digest = hashlib.sha256(content).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(content)
    return {"digest": f"sha256:{digest}", "size": len(content)}


def add_model(store: Path, name: str, gguf: bytes | Path = FAKE_GGUF, template: str | None = CHATML_GO,
              params: dict | None = None, system: str | None = None, extra: list[tuple[str, bytes]] = ()) -> Path:
    """Write a model as `ollama pull` leaves it: blobs by digest and a schemaVersion 2 manifest."""
    host, namespace, model, tag = parse_name(name).parts
    if isinstance(gguf, Path):
        digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
        (store / "blobs").mkdir(parents=True, exist_ok=True)
        target = store / "blobs" / f"sha256-{digest}"
        if not target.exists():
            os.link(gguf, target)
        model_layer = {"digest": f"sha256:{digest}", "size": gguf.stat().st_size}
    else:
        model_layer = _blob(store, gguf)
    layers = [{"mediaType": MODEL, **model_layer}]
    for kind, content in [(TEMPLATE, template), (PARAMS, json.dumps(params) if params else None), (SYSTEM, system)]:
        if content is not None:
            layers.append({"mediaType": kind, **_blob(store, content.encode("utf-8"))})
    layers += [{"mediaType": kind, **_blob(store, content)} for kind, content in extra]
    config = _blob(store, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    manifest = store / "manifests" / host / namespace / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
                                    "layers": layers}), encoding="utf-8")
    return manifest


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "ollama-models"
    (folder / "manifests").mkdir(parents=True)
    monkeypatch.setenv("OLLAMA_MODELS", str(folder))
    return folder


@pytest.mark.parametrize("text, parts, shown", [
    ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest"), "llama3.2:latest"),
    ("ollama:qwen2.5:0.5b", ("registry.ollama.ai", "library", "qwen2.5", "0.5b"), "qwen2.5:0.5b"),
    ("  ollama:smollm2:135m ", ("registry.ollama.ai", "library", "smollm2", "135m"), "smollm2:135m"),
    ("usuario/modelo:v1", ("registry.ollama.ai", "usuario", "modelo", "v1"), "usuario/modelo:v1"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
     ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"), "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
    ("https://hf.co/unsloth/gemma-3-1b-it-GGUF", ("hf.co", "unsloth", "gemma-3-1b-it-GGUF", "latest"),
     "hf.co/unsloth/gemma-3-1b-it-GGUF:latest"),
    ("registry.ollama.ai/library/phi3:mini", ("registry.ollama.ai", "library", "phi3", "mini"), "phi3:mini"),
])
def test_names_are_parsed_like_ollama(text, parts, shown):
    name = parse_name(text)
    assert name.parts == parts and str(name) == shown


@pytest.mark.parametrize("text", ["", "ollama:", "a/b/c/d", "modelo:", "mo delo", "a:b:c", "ns.x/modelo",
                                  "modelo+Q4_0", "modelo@sha256-00", "../modelo", "x" * 129])
def test_names_ollama_refuses_are_refused(text):
    with pytest.raises(AfinarError) as info:
        parse_name(text)
    assert info.value.code == "M021" and "ollama:NOMBRE" in info.value.hint


def test_tuned_name_keeps_the_tag():
    assert parse_name("llama3.2:1b").tuned() == "llama3.2-afinado:1b"
    assert parse_name("qwen2.5").tuned() == "qwen2.5-afinado"
    assert export_ollama.ollama_model_name("ollama:hf.co/u/Repo-GGUF:Q8_0", "mini") == "Repo-GGUF-afinado:Q8_0"
    assert export_ollama.ollama_model_name("smollm2-135m", "mini") == "mini"


def test_finds_the_gguf_blob_template_params_and_system(store):
    params = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.6, "num_ctx": 4096}
    add_model(store, "smollm2:135m", params=params, system="Eres un asistente.")
    model = find_model("ollama:smollm2:135m")
    assert model.name == "smollm2:135m" and model.size == len(FAKE_GGUF)
    assert model.gguf.parent == store / "blobs" and model.gguf.read_bytes() == FAKE_GGUF
    assert model.template == CHATML_GO and model.params == params and model.system == "Eres un asistente."
    verify_digest(model)  # the blob's SHA-256 is its name
    # Ollama compares names without case; a default tag and the full form find the same manifest.
    assert find_model("SmolLM2:135M").gguf == find_model("registry.ollama.ai/library/smollm2:135m").gguf == model.gguf


def test_ollama_models_is_respected_and_the_user_store_is_the_default(tmp_path, monkeypatch):
    home = tmp_path / "home"
    user_store = home / ".ollama" / "models"
    add_model(user_store, "casa:latest")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    assert store_mod.store_dir() == user_store and find_model("casa").name == "casa:latest"
    elsewhere = tmp_path / "disco" / "models"
    add_model(elsewhere, "fuera:1b")
    monkeypatch.setenv("OLLAMA_MODELS", f'"{elsewhere}" ')  # quoted and spaced, as Ollama's envconfig tolerates
    assert store_mod.store_dir() == elsewhere and [m.name for m in list_models()] == ["fuera:1b"]
    with pytest.raises(AfinarError) as info:
        find_model("casa")
    assert info.value.code == "M022"


def test_no_store_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
    monkeypatch.setattr(store_mod, "SERVICE_STORE", tmp_path / "usr-share-ollama")
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    with pytest.raises(AfinarError) as info:
        find_model("ollama:llama3.2")
    assert info.value.code == "M020" and str(tmp_path / "home" / ".ollama" / "models") in info.value.message
    assert "OLLAMA_MODELS" in info.value.hint
    assert list_models() == []  # the list is just empty
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-existe"))
    with pytest.raises(AfinarError) as info:
        store_mod.store_dir()
    assert info.value.code == "M020" and "no-existe" in info.value.message and "OLLAMA_MODELS" in info.value.hint


def test_the_service_store_is_looked_at_when_the_user_has_none(tmp_path, monkeypatch):
    if not store_mod.sys.platform.startswith("linux"):
        pytest.skip("the service install is Linux's")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
    service = tmp_path / "usr-share-ollama"
    add_model(service, "servicio:latest")
    monkeypatch.setattr(store_mod, "SERVICE_STORE", service)
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    assert find_model("servicio").name == "servicio:latest"
    if os.geteuid() != 0:  # root reads anything
        (service / "manifests").chmod(0)
        try:
            with pytest.raises(AfinarError) as info:
                store_mod.store_dir()
            assert info.value.code == "M020" and "sin permiso" in info.value.message and "ollama" in info.value.hint
        finally:
            (service / "manifests").chmod(stat.S_IRWXU)


def test_a_missing_name_lists_what_is_there(store):
    for i in range(12):
        add_model(store, f"modelo{i:02d}:1b")
    with pytest.raises(AfinarError) as info:
        find_model("ollama:llama3.2:3b")
    message = info.value.message
    assert info.value.code == "M022" and "llama3.2:3b" in message
    assert "modelo00:1b" in message and "modelo09:1b" in message and "modelo10:1b" not in message and "2 más" in message
    assert "ollama pull llama3.2:3b" in info.value.hint


def test_missing_blob_wrong_size_and_bad_manifest(store):
    manifest = add_model(store, "roto:latest")
    model = find_model("roto")
    model.gguf.write_bytes(FAKE_GGUF[:-10])
    with pytest.raises(AfinarError) as info:
        find_model("roto")
    assert info.value.code == "M024" and "manifiesto dice" in info.value.message and "ollama pull roto" in info.value.hint
    model.gguf.unlink()
    with pytest.raises(AfinarError) as info:
        find_model("roto")
    assert info.value.code == "M024" and "falta" in info.value.message
    manifest.write_text("{no es json", encoding="utf-8")
    with pytest.raises(AfinarError) as info:
        find_model("roto")
    assert info.value.code == "M023" and "ollama pull" in info.value.hint
    assert list_models() == [] and list_names() == ["roto:latest"]  # listed by name, not offered as a base


def test_a_digest_that_does_not_match_is_caught_on_request(store):
    add_model(store, "cambiado:latest")
    model = find_model("cambiado")
    model.gguf.write_bytes(FAKE_GGUF[:-1] + b"!")  # same size, other bytes: only hashing sees it
    with pytest.raises(AfinarError) as info:
        verify_digest(model)
    assert info.value.code == "M024" and "SHA-256" in info.value.message


def test_adapter_projector_and_non_gguf_models_are_refused(store):
    add_model(store, "con-lora:latest", extra=[(ADAPTER, b"GGUF-lora")])
    add_model(store, "llava:7b", extra=[(PROJECTOR, b"GGUF-clip")])
    add_model(store, "safetensors:latest", gguf=b"\x00" * 64)
    for name, code, words in [("con-lora", "M025", "adaptador LoRA"), ("llava:7b", "M025", "visión"),
                              ("safetensors", "M026", "no es un archivo GGUF")]:
        with pytest.raises(AfinarError) as info:
            find_model(name)
        assert info.value.code == code and words in info.value.message, name
    assert [m.name for m in list_models()] == ["safetensors:latest"]  # the list does not read the GGUF's magic


def test_list_models_is_cheap_and_sorted(store, monkeypatch):
    add_model(store, "zeta:1b")
    add_model(store, "alfa:latest", params={"temperature": 0.2})
    add_model(store, "hf.co/usuario/Repo-GGUF:Q4_K_M", template=None)
    monkeypatch.setattr("afinar.ollama_store.file_sha256", lambda *a: pytest.fail("list_models must not hash"))
    models = list_models()
    assert [m.name for m in models] == ["alfa:latest", "hf.co/usuario/Repo-GGUF:Q4_K_M", "zeta:1b"]
    assert models[0].params == {"temperature": 0.2} and models[1].template is None
    assert all(m.gguf.is_file() and m.size == len(FAKE_GGUF) for m in models)


# --- the Ollama template against the GGUF's ---------------------------------------------------------------------

LEGACY_CHATML = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
                 "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")


def test_template_comparison(tokenizer):
    assert export_ollama.template_differences(CHATML_GO, tokenizer) == []
    assert export_ollama.template_differences(LEGACY_CHATML, tokenizer) == []  # .System/.Prompt/.Response, run per turn
    differences = export_ollama.template_differences(ZEPHYR_GO, tokenizer)
    assert len(differences) == 2 and differences[0][0].startswith("<|user|>")
    with pytest.raises(ValueError):
        export_ollama.template_differences("{{ .Messages | unaFuncion }}", tokenizer)


def test_check_template_warns_once_and_never_refuses(tiny_base, capsys):
    model = store_mod.OllamaModel("zephyr:latest", Path("x"), ZEPHYR_GO, {}, 1, digest="a" * 64)
    assert export_ollama.check_template(model, tiny_base)
    out = capsys.readouterr().out
    assert "aviso" in out and "zephyr:latest" in out and "Se entrena con la plantilla del GGUF" in out
    assert export_ollama.check_template(model, tiny_base) == [] and capsys.readouterr().out == ""  # once per GGUF
    same = store_mod.OllamaModel("chatml:latest", Path("x"), CHATML_GO, {}, 1, digest="b" * 64)
    assert export_ollama.check_template(same, tiny_base) == [] and capsys.readouterr().out == ""
    odd = store_mod.OllamaModel("raro:latest", Path("x"), "{{ json .Messages }}", {}, 1, digest="c" * 64)
    assert export_ollama.check_template(odd, tiny_base) == []
    assert "no se pudo comparar" in capsys.readouterr().out


def test_resolve_base_converts_the_blob_of_a_real_gguf(smol_tokenizer_base, tmp_path, monkeypatch, capsys):
    """A real GGUF (llama.cpp's converter on a tiny model with SmolLM2's tokenizer) in the store: `ollama:NAME` is the
    GGUF → HF conversion of its blob, cached; Ollama's ChatML template lacks SmolLM2's default system prompt: a warning."""
    from afinar.export.gguf import convert
    from afinar.models import load_tokenizer, resolve_base

    gguf = convert(smol_tokenizer_base, tmp_path / "tiny.gguf", outtype="f32", progress=False)
    folder = tmp_path / "ollama"
    add_model(folder, "smol:tiny", gguf=gguf, params={"stop": ["<|im_end|>"]})
    monkeypatch.setenv("OLLAMA_MODELS", str(folder))
    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))  # converted apart from the user's cache
    converted = Path(resolve_base("ollama:smol:tiny"))
    assert (converted / "config.json").is_file() and converted.parent == tmp_path / "home" / "models"
    assert converted.name.startswith("ollama-smol-tiny-")  # named after the model, not the blob's hash
    assert load_tokenizer(converted).chat_template == load_tokenizer(smol_tokenizer_base).chat_template
    # Where training starts (train.py), Ollama's Go template is compared with the GGUF's own: a warning, never a stop.
    export_ollama.check_template(find_model("ollama:smol:tiny"), converted)
    out = capsys.readouterr().out
    assert "aviso: la plantilla de Ollama de smol:tiny" in out
    assert resolve_base("ollama:smol:tiny") == str(converted)  # cached, no second conversion
    assert "Convirtiendo" not in capsys.readouterr().out


# --- putting the tuned model back in Ollama --------------------------------------------------------------------------

def _fake_ollama(bin_dir: Path, log: Path, fail: str | None = None) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "ollama"
    body = f'echo "{fail}" >&2; exit 1' if fail else '[ -f Modelfile ] || exit 3'
    script.write_text(f'#!/bin/sh\necho "$@" > "{log}"\npwd >> "{log}"\n{body}\n', encoding="utf-8")
    script.chmod(0o755)


def _job(tmp_path, base: str):
    from afinar.export.run import _Job

    ref = types.SimpleNamespace(path=tmp_path / "run", system_prompt="Eres un asistente.", generation=GenerationSection(),
                                recipe=types.SimpleNamespace(name="mini", model=types.SimpleNamespace(base=base)))
    job = _Job(ref, tmp_path / "export", ["ollama"], "fp16", ["q8_0"], False, False)
    (tmp_path / "export" / "gguf").mkdir(parents=True)
    return job, {"q8_0": {"path": tmp_path / "export" / "gguf" / "mini-q8_0.gguf"}}


@pytest.mark.skipif(os.name == "nt", reason="a /bin/sh script stands in for ollama")
def test_export_suggests_and_runs_ollama_create(tiny_base, tmp_path, monkeypatch, capsys):
    log = tmp_path / "ollama-args.txt"
    _fake_ollama(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # Base from Ollama, no --ollama-crear, `ollama` not on PATH: NAME-afinado is suggested, nothing is run.
    monkeypatch.setattr("afinar.export.run.shutil.which", lambda name: None)
    job, results = _job(tmp_path / "a", "ollama:llama3.2:1b")
    job.ollama(tiny_base, results)
    assert "ollama create llama3.2-afinado:1b -f Modelfile" in capsys.readouterr().out
    assert job.checks["ollama"]["crear"].endswith("ollama create llama3.2-afinado:1b -f Modelfile") and not log.exists()
    monkeypatch.undo()
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # The same with `ollama` on PATH: it goes back to Ollama by itself as NAME-afinado.
    job, results = _job(tmp_path / "a2", "ollama:llama3.2:1b")
    job.ollama(tiny_base, results)
    assert log.read_text(encoding="utf-8").splitlines()[0] == "create llama3.2-afinado:1b -f Modelfile"
    assert job.checks["ollama"]["creado_en_ollama"] == "llama3.2-afinado:1b" and not job.failed
    log.unlink()
    # A base not from Ollama is never put there without --ollama-crear.
    job, results = _job(tmp_path / "a3", "smollm2-135m")
    job.ollama(tiny_base, results)
    assert not log.exists() and "creado_en_ollama" not in job.checks["ollama"]
    # --ollama-crear NAME: the fake ollama is run in the Modelfile's folder.
    job, results = _job(tmp_path / "b", "smollm2-135m")
    job.ollama_name = "primeros-auxilios"
    job.ollama(tiny_base, results)
    args, cwd = log.read_text(encoding="utf-8").splitlines()
    assert args == "create primeros-auxilios -f Modelfile" and Path(cwd) == tmp_path / "b" / "export" / "gguf"
    assert job.checks["ollama"]["creado_en_ollama"] == "primeros-auxilios" and not job.failed
    assert "ollama run primeros-auxilios" in capsys.readouterr().out
    # It fails (Ollama not running): X043 with its last line, the Modelfile stays.
    _fake_ollama(tmp_path / "bin", log, fail="Error: could not connect to ollama app, is it running?")
    job, results = _job(tmp_path / "c", "ollama:qwen2.5")
    job.ollama_name = "qwen2.5-afinado"
    job.ollama(tiny_base, results)
    exc = job.failed["ollama-create"]
    assert exc.code == "X043" and "could not connect" in exc.message and "en marcha" in exc.hint
    assert (tmp_path / "c" / "export" / "gguf" / "Modelfile").is_file() and "ollama" in job.written
    # Done by itself (base from Ollama, no --ollama-crear), the same failure is a warning: the export stands.
    job, results = _job(tmp_path / "d", "ollama:qwen2.5")
    job.ollama(tiny_base, results)
    assert not job.failed and "X043" in job.checks["ollama"]["aviso"] and "ollama" in job.written
    assert "aviso: no se pudo crear qwen2.5-afinado" in capsys.readouterr().out


def test_ollama_create_needs_the_program_and_a_valid_name(tmp_path, monkeypatch):
    from afinar.cli import parse_args

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AfinarError) as info:
        export_ollama.require_ollama("mi-modelo")
    assert info.value.code == "X042" and "PATH" in info.value.message
    with pytest.raises(AfinarError) as info:
        export_ollama.require_ollama("mal nombre")
    assert info.value.code == "X042" and "no es un nombre" in info.value.message
    args = parse_args(["export", "runs/x", "--ollama-crear", "mi-modelo"])
    assert args.ollama_name == "mi-modelo" and "formats" not in vars(args)


def test_ollama_name_type_is_hashable():
    assert len({OllamaName("h", "n", "m", "t"), OllamaName("h", "n", "m", "t")}) == 1
