"""GGUF with llama.cpp's own converter and quantiser, checked in llama-cpp-python (tiny models)."""
import dataclasses
import io
import json
import shutil
import tarfile

import pytest

from afinar.errors import AfinarError
from afinar.export import gguf
from afinar.export.reference import COMPARED_TOKENS, greedy_reference


@pytest.fixture(scope="module")
def reference(smol_tokenizer_base):
    return greedy_reference(smol_tokenizer_base, "Eres un asistente.", 1.1, 48)


@pytest.fixture(scope="module")
def exported(smol_tokenizer_base, reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    results, failed = gguf.export_gguf(smol_tokenizer_base, folder, "tiny", ["q8_0"], reference, progress=False)
    assert failed == {}
    return folder, results


def test_a_failed_quantisation_is_recorded_and_the_others_kept(smol_tokenizer_base, reference, tmp_path, monkeypatch):
    real = gguf.quantize

    def quantize(src, dst, kind, progress=True):
        if kind == "q4_k_m":
            raise AfinarError("X025", "llama.cpp no pudo cuantizar a q4_k_m: prueba", where=str(src))
        return real(src, dst, kind, progress=progress)

    monkeypatch.setattr(gguf, "quantize", quantize)
    results, failed = gguf.export_gguf(smol_tokenizer_base, tmp_path, "t", ["q4_k_m", "q8_0"], reference, progress=False)
    assert set(results) == {"f16", "q8_0"} and set(failed) == {"q4_k_m"} and failed["q4_k_m"].code == "X025"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-f16.gguf", "t-q8_0.gguf"]


def test_f16_and_q8_0_load_in_llama_cpp_and_match_transformers(exported, reference):
    folder, results = exported
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-f16.gguf", "tiny-q8_0.gguf"]  # no temp files left
    f16, q8 = results["f16"], results["q8_0"]
    assert f16["primeros_tokens_iguales"] == f16["comparados"] == COMPARED_TOKENS
    assert f16["max_abs_logits"] < 0.1
    # With the recipe's repetition penalty, the f16 file follows transformers for many tokens, not just the first.
    assert f16["respuesta_igual_hasta"] >= COMPARED_TOKENS
    assert f16["eos"] == q8["eos"] == 2 and f16["prompt_tokens_iguales"]
    assert q8["path"].stat().st_size < 0.75 * f16["path"].stat().st_size
    # The tiny random model never ends its answer, in transformers or in llama.cpp: the check says so, it does not lie.
    assert reference.stopped is False and f16["se_detiene"] is False


def test_metadata_carries_the_tuned_template_and_eos(exported, smol_tokenizer_base):
    from gguf import GGUFReader

    from afinar.gguf_import import _field

    reader = GGUFReader(str(exported[0] / "tiny-q8_0.gguf"))
    config = json.loads((smol_tokenizer_base / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = (smol_tokenizer_base / "chat_template.jinja")
    expected = template.read_text(encoding="utf-8") if template.is_file() else config["chat_template"]
    assert _field(reader, "tokenizer.chat_template") == expected
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 2


def test_verification_refuses_a_wrong_template_or_a_file_that_does_not_stop(exported, reference):
    path = exported[0] / "tiny-f16.gguf"
    with pytest.raises(AfinarError) as info:
        gguf.verify(path, dataclasses.replace(reference, chat_template="{{ otra }}"), "f16")
    assert info.value.code == "X026" and "plantilla" in info.value.message
    with pytest.raises(AfinarError) as info:
        gguf.verify(path, dataclasses.replace(reference, eos_ids={5}), "f16")
    assert info.value.code == "X026" and "eos" in info.value.message
    # As if transformers had ended its answer: a GGUF that runs on is refused.
    with pytest.raises(AfinarError) as info:
        gguf.verify(path, dataclasses.replace(reference, stopped=True), "q8_0")
    assert info.value.code == "X027" and "no termina" in info.value.message
    wrong = [(t + 1) % 49152 for t in reference.tokens]
    with pytest.raises(AfinarError) as info:
        gguf.verify(path, dataclasses.replace(reference, tokens=wrong), "f16")
    assert info.value.code == "X027" and "no elige los tokens de transformers" in info.value.message


def test_unrecognised_pre_tokenizer_is_a_clear_error_with_nothing_left(tiny_base, tmp_path):
    out = tmp_path / "x.gguf"
    with pytest.raises(AfinarError) as info:
        gguf.convert(tiny_base, out, progress=False)
    assert info.value.code == "X023" and "pre-tokenizador" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture(smol_tokenizer_base, tmp_path):
    folder = tmp_path / "raro"
    shutil.copytree(smol_tokenizer_base, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["architectures"] = ["InventadoForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(AfinarError) as info:
        gguf.convert(folder, tmp_path / "x.gguf", progress=False)
    assert info.value.code == "X022" and "InventadoForCausalLM" in info.value.message
    assert not (tmp_path / "x.gguf").exists()


def test_quantiser_failure_is_reported(tmp_path):
    (tmp_path / "roto.gguf").write_bytes(b"GGUF esto no es un modelo")
    with pytest.raises(AfinarError) as info:
        gguf.quantize(tmp_path / "roto.gguf", tmp_path / "q.gguf", "q8_0", progress=False)
    assert info.value.code == "X025"
    assert not (tmp_path / "q.gguf").exists()


def _tar_with(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def test_converter_is_taken_from_the_sdist_and_nothing_else(tmp_path, monkeypatch):
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    sdist.write_bytes(_tar_with(
        {
            root + "convert_hf_to_gguf.py": b"# converter\n",
            root + "conversion/__init__.py": b"",
            root + "gguf-py/gguf/__init__.py": b"",
            root + "LICENSE": b"MIT",
            root + "ggml/src/ggml.c": b"int x;",  # not needed: not copied
            root + "gguf-py/../../../../fuera.txt": b"escape",
            "llama_cpp_python-9.9.9/setup.py": b"",
        },
        links={root + "conversion/enlace.py": "/etc/passwd"},
    ))
    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AFINAR_LLAMA_CPP_SDIST", str(sdist))
    folder = gguf.converter_dir()
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["LICENSE", "conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    assert not (tmp_path / "fuera.txt").exists() and not list(tmp_path.rglob("fuera.txt"))
    assert folder.name == f"llama-cpp-python-{gguf.llama_cpp_version()}"
    assert gguf.converter_dir() == folder  # cached

    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "otra"))
    monkeypatch.setenv("AFINAR_LLAMA_CPP_SDIST", str(tmp_path / "no-existe.tar.gz"))
    with pytest.raises(AfinarError) as info:
        gguf.converter_dir()
    assert info.value.code == "X021"
    incomplete = tmp_path / "incompleto.tar.gz"
    incomplete.write_bytes(_tar_with({root + "LICENSE": b"MIT"}))
    monkeypatch.setenv("AFINAR_LLAMA_CPP_SDIST", str(incomplete))
    with pytest.raises(AfinarError) as info:
        gguf.converter_dir()
    assert info.value.code == "X021"
    assert not any((tmp_path / "otra").rglob("convert_hf_to_gguf.py"))
