"""Optional extras: one check, one error code and one message each, wherever the extra is needed."""
import functools
import sys
from pathlib import Path

import pytest

from afinar import extras, hardware
from afinar.config import GenerationSection
from afinar.errors import AfinarError
from afinar.export import gguf
from afinar.inference.engines import LlamaCppEngine, OnnxEngine, Personality


@pytest.fixture
def missing(monkeypatch):
    """Pretend the named extras are not installed."""
    absent: set[str] = set()
    monkeypatch.setattr(extras, "available", lambda extra: extra not in absent)
    return absent


def test_every_extra_has_its_own_code():
    codes = [spec.code for spec in extras.EXTRAS.values()]
    assert len(set(codes)) == len(codes)
    assert {name: spec.code for name, spec in extras.EXTRAS.items()} == {
        "llamacpp": "X020", "onnx": "X030", "qlora": "H004"}


def test_a_blocked_package_is_found_missing(monkeypatch):
    monkeypatch.setattr(extras, "available", functools.cache(extras.available.__wrapped__))
    assert extras.available("onnx")  # installed by `make test`
    extras.available.cache_clear()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not extras.available("onnx")
    with pytest.raises(AfinarError) as info:
        extras.require("onnx")
    assert info.value.code == "X030" and '.[onnx]"' in info.value.hint


def test_one_message_for_llama_cpp_in_export_and_serve(missing):
    missing.add("llamacpp")
    errors = []
    for call in (gguf.llama_cpp_version, gguf.converter_dir,
                 lambda: LlamaCppEngine(Path("x.gguf"), Personality("x", Path("x"), None, GenerationSection()))):
        with pytest.raises(AfinarError) as info:
            call()
        errors.append(info.value)
    assert {e.code for e in errors} == {"X020"} and len({e.render() for e in errors}) == 1
    assert '.[llamacpp]"' in errors[0].hint


def test_onnx_engine_and_bitsandbytes(missing, monkeypatch):
    missing.update({"onnx", "qlora"})
    with pytest.raises(AfinarError) as info:
        OnnxEngine(Path("x"), Personality("x", Path("x"), None, GenerationSection()))
    assert info.value.code == "X030"
    # QLoRA checks bitsandbytes by importing it (and its version, for the CPU backend): blocked here.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(AfinarError) as info:
        hardware.bnb_4bit_config(None)
    assert info.value.code == "H004" and '.[qlora]"' in info.value.hint and "make test" in info.value.hint
