"""ONNX export for Transformers.js, checked in onnxruntime against torch (tiny model)."""
import dataclasses
import functools
import json
import sys

import numpy as np
import pytest
import torch

from afinar import extras
from afinar.errors import AfinarError
from afinar.export import onnx as onnx_export
from afinar.export.reference import greedy_reference
from afinar.export.weights import parameter_count
from afinar.inference.sampling import greedy_decode


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
    monkeypatch.setattr(extras, "available", functools.cache(extras.available.__wrapped__))  # not the cached answer
    with pytest.raises(AfinarError) as info:
        onnx_export.export_onnx(tiny_base, target.parent / "otra", reference, 1, progress=False)
    assert info.value.code == "X030" and 'pip install -e ".[onnx]"' in info.value.hint  # the exact line to run


def test_int8_weights_use_7_bits_so_cpus_without_vnni_do_not_saturate(exported):
    """u8 activations × s8 weights summed in pairs must fit int16 (AVX2's VPMADDUBSW): |w| ≤ 64, not 127."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported[0] / "onnx" / onnx_export.QUANTIZED))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights, "el INT8 no tiene pesos int8"
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert 60 <= largest <= 64  # per channel, the largest weight of a row maps to the edge of the 7-bit range
    assert 255 * largest * 2 <= 32767


def test_template_is_inside_tokenizer_config_too(exported):
    from afinar.models import template_in_config

    assert template_in_config(exported[0])


def test_an_int8_that_fails_its_check_is_dropped_and_the_fp32_kept(tiny_base, reference, tmp_path, monkeypatch):
    def refuse(path, ref):
        raise AfinarError("X034", "el ONNX INT8 no termina su respuesta.", where=str(path))

    monkeypatch.setattr(onnx_export, "check_generation", refuse)
    target = tmp_path / "onnx"
    report = onnx_export.export_onnx(tiny_base, target, reference, parameter_count(tiny_base), progress=False)
    int8 = report["int8"]
    assert int8["escrito"] is False and int8["codigo"] == "X034" and int8["motivo"] == "el ONNX INT8 no termina su respuesta."
    # both ways of quantising were tried before giving up
    assert [t["variante"] for t in int8["intentos_fallidos"]] == [label for label, _ in onnx_export.INT8_VARIANTS]
    assert (target / "onnx" / "model.onnx").is_file() and report["fp32"]["top1"] == 1.0
    assert not list(target.rglob("model_quantized*"))
    assert isinstance(report["cpu"]["vnni"], (bool, type(None)))


def test_transformers_js_loads_the_export_and_matches_torch(exported, reference):
    """What a browser or Node app does: Transformers.js reads the template from tokenizer_config.json, tokenizes the
    prompt as transformers does, and fp32 greedy gives torch's tokens."""
    from tests.transformers_js.runner import generate

    target, _ = exported
    fp32 = generate(target, "fp32", reference.messages, 24, reference.repetition_penalty)
    assert fp32["prompt_ids"] == reference.prompt_ids
    assert fp32["ids"] == reference.answer + ([next(iter(reference.eos_ids))] if reference.stopped else [])
    q8 = generate(target, "q8", reference.messages, 24, reference.repetition_penalty)
    assert q8["prompt_ids"] == reference.prompt_ids and q8["ids"][:1] == reference.answer[:1]


SATURATION_PROBE = """
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
for w in (127, 64):  # 64 × (u8 255 · s8 w), summed by pairs in 16 bits on CPUs without VNNI
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, 64])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 1])],
        [numpy_helper.from_array(np.full((64, 1), w, dtype=np.int8), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    print(w, int(session.run(None, {"A": np.full((1, 64), 255, dtype=np.uint8)})[0][0, 0]))
"""


def test_the_emulated_cpu_without_vnni_really_saturates_full_range_int8():
    """The harness below is only worth something if qemu's CPU takes onnxruntime's saturating path: 8-bit weights
    come out wrong there (32 pairs × 32767), 7-bit weights exact."""
    from tests import no_vnni

    got = dict(line.split() for line in no_vnni.run(SATURATION_PROBE).split("\n") if line)
    assert int(got["127"]) == 32 * 32767 != 64 * 255 * 127
    assert int(got["64"]) == 64 * 255 * 64


INT8_LOGITS = """
import json, numpy as np
from pathlib import Path
from afinar.inference.onnx_runtime import OnnxCausalLM
config = json.loads(Path({config!r}).read_text())
np.save({out!r}, OnnxCausalLM(Path({graph!r}), config).logits({ids!r}))
"""


def test_int8_export_computes_the_same_on_a_cpu_without_vnni(exported, reference, tmp_path):
    """The export's INT8 graph gives the same logits on this CPU and on an emulated AVX2 CPU without VNNI (7-bit
    products never saturate); the same graph with 8-bit weights (what afinar wrote before) does not, where this CPU
    has VNNI. Two layers are too few for fp32 rounding differences between the CPUs' kernels to grow."""
    from afinar.hardware import int8_cpu_features
    from tests import no_vnni

    target = exported[0]
    full_range = tmp_path / "full_range.onnx"
    onnx_export.quantize_int8(target / "onnx" / "model.onnx", full_range, reduce_range=False)
    config = json.loads((target / "config.json").read_text())
    ids = reference.prompt_ids + reference.answer
    results = {}
    for name, graph in (("7bit", target / "onnx" / onnx_export.QUANTIZED), ("8bit", full_range)):
        here = onnx_export.OnnxCausalLM(graph, config).logits(ids)
        out = tmp_path / f"{name}.npy"
        no_vnni.run(INT8_LOGITS.format(config=str(target / "config.json"), out=str(out), graph=str(graph), ids=ids))
        results[name] = float(np.abs(here - np.load(out)).max())
    assert results["7bit"] <= 1e-5  # bit for bit in the INT8 products; fp32 kernels may round differently
    if int8_cpu_features()["vnni"]:
        assert results["8bit"] > 1e-3  # the check above would catch the old quantisation


def test_int8_keeps_down_proj_in_fp32_and_retries_all_int8(tiny_base, reference, exported, tmp_path, monkeypatch):
    import onnx

    def nodes(target):
        return onnx.load(str(target / "onnx" / onnx_export.QUANTIZED), load_external_data=False).graph.node

    first, with_head, last = (label for label, _ in onnx_export.INT8_VARIANTS)
    int8 = exported[1]["int8"]
    assert int8["escrito"] and int8["variante"] == first and int8["capas_fp32"] == 2 and not int8["intentos_fallidos"]
    assert {n.name for n in nodes(exported[0]) if n.op_type == "MatMul" and "down_proj" in n.name}

    real, calls = onnx_export.check_generation, []

    def fails_twice(path, ref):
        calls.append(path)
        if len(calls) <= 2:
            raise AfinarError("X034", "el ONNX INT8 no empieza la respuesta con el mismo token que torch.")
        return real(path, ref)

    monkeypatch.setattr(onnx_export, "check_generation", fails_twice)
    target = tmp_path / "onnx"
    int8 = onnx_export.export_onnx(tiny_base, target, reference, parameter_count(tiny_base), progress=False)["int8"]
    assert int8["escrito"] and int8["variante"] == last and int8["capas_fp32"] == 0
    assert [t["variante"] for t in int8["intentos_fallidos"]] == [first, with_head]  # down_proj, then + the head
    assert [t["codigo"] for t in int8["intentos_fallidos"]] == ["X034", "X034"]
    assert not [n for n in nodes(target) if n.op_type == "MatMul" and "proj" in n.name]  # every projection in INT8


def test_optimums_english_tied_weights_warning_stays_out_of_the_log(tmp_path, monkeypatch):
    """optimum warns in English that a tied embedding and head share an initializer (expected): not in a person's log."""
    import io
    import logging

    import optimum.exporters.onnx
    from optimum.utils import logging as optimum_logging

    def fake_export(model_dir, output, **kwargs):
        optimum_logging.get_logger().warning("Found different candidate ONNX initializers (likely duplicate)")
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "model.onnx").write_bytes(b"onnx")

    seen = io.StringIO()
    handler = logging.StreamHandler(seen)  # what reaches any handler of optimum's logger (the log's included)
    optimum_logging.get_logger().addHandler(handler)
    monkeypatch.setattr(optimum.exporters.onnx, "main_export", fake_export)
    before = logging.getLogger("optimum").level
    try:
        onnx_export._export(tmp_path, tmp_path / "out")
        assert "Found different candidate" not in seen.getvalue()
        assert logging.getLogger("optimum").level == before
        optimum_logging.get_logger().error("un error sí se ve")
        optimum_logging.get_logger().warning("Found different candidate, fuera de la exportación")
        assert "un error sí se ve" in seen.getvalue() and "fuera de la exportación" in seen.getvalue()
    finally:
        optimum_logging.get_logger().removeHandler(handler)
