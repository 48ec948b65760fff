"""ONNX export for Transformers.js, checked in onnxruntime against torch (tiny model)."""
import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from afinar.errors import AfinarError
from afinar.export import onnx as onnx_export
from afinar.export.reference import greedy_decode, greedy_reference
from afinar.export.weights import parameter_count


@pytest.fixture(scope="module")
def reference(tiny_base):
    return greedy_reference(tiny_base, "Eres un asistente.", 1.1, 24)


@pytest.fixture(scope="module")
def exported(tiny_base, reference, tmp_path_factory):
    target = tmp_path_factory.mktemp("onnx") / "onnx"
    report = onnx_export.export_onnx(tiny_base, target, reference, parameter_count(tiny_base), progress=False)
    return target, report


def test_layout_is_the_one_transformers_js_loads(exported, tiny_base):
    target, report = exported
    names = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert {"onnx/model.onnx", "onnx/model_quantized.onnx", "tokenizer.json", "tokenizer_config.json", "config.json",
            "generation_config.json"} <= names
    assert not any(n.startswith(".") or "/." in n for n in names)  # no scratch folders
    assert not (target / "model.onnx").exists() and not (target / "onnx" / "config.json").exists()
    assert (target / "onnx" / "model_quantized.onnx").stat().st_size < (target / "onnx" / "model.onnx").stat().st_size
    assert json.loads((target / "afinar_onnx.json").read_text(encoding="utf-8")) == report


def test_fp32_logits_match_torch_and_int8_starts_the_same(exported, tiny_base, reference):
    from transformers import AutoModelForCausalLM

    target, report = exported
    assert report["fp32"]["max_abs"] <= onnx_export.FP32_MAX_ABS and report["fp32"]["top1"] == 1.0
    assert report["int8"]["primer_token_igual"]
    # Independently of the export's own check: onnxruntime logits vs HF logits on another sequence.
    ids = [5, 17, 42, 99, 7, 3]
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    runner = onnx_export.OnnxCausalLM(target / "onnx" / "model.onnx", json.loads((target / "config.json").read_text()))
    np.testing.assert_allclose(runner.logits(ids), expected, atol=1e-4, rtol=1e-4)
    # Incremental decoding with the key/value cache gives the same tokens as transformers' greedy.
    tokens, _ = greedy_decode(runner.stepper(), reference.prompt_ids, reference.eos_ids, 24, reference.repetition_penalty)
    assert tokens == reference.answer


def test_checks_refuse_a_graph_that_does_not_stop_or_starts_differently(exported, reference):
    path = exported[0] / "onnx" / "model_quantized.onnx"
    with pytest.raises(AfinarError) as info:
        onnx_export.check_generation(path, dataclasses.replace(reference, stopped=True))
    assert info.value.code == "X034" and "no termina" in info.value.message
    with pytest.raises(AfinarError) as info:
        onnx_export.check_generation(path, dataclasses.replace(reference, tokens=[reference.tokens[0] + 1]))
    assert info.value.code == "X034" and "mismo token" in info.value.message


def test_existing_target_and_missing_packages(exported, tiny_base, reference, monkeypatch):
    target, _ = exported
    with pytest.raises(AfinarError) as info:
        onnx_export.export_onnx(tiny_base, target, reference, 1, progress=False)
    assert info.value.code == "X003"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(AfinarError) as info:
        onnx_export.require_optimum()
    assert info.value.code == "X030" and "afinar[onnx]" in info.value.hint
