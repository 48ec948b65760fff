"""ONNX for Transformers.js and onnxruntime: optimum-onnx export, onnxruntime dynamic INT8, checked in onnxruntime.

Layout is the one Transformers.js loads (`onnx/model.onnx`, `onnx/model_quantized.onnx`, tokenizer.json,
config.json, generation_config.json), as the epicrisis guide's Angular app expects.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path

from afinar.atomic import atomic_dir, require_free_space
from afinar.errors import AfinarError
from afinar.export.reference import Reference, greedy_decode

TASK = "text-generation-with-past"
FP32_MAX_ABS = 1e-3  # fp32 ONNX vs fp32 torch: same arithmetic, different kernels


def require_optimum():
    try:
        import onnxruntime  # noqa: F401
        from optimum.exporters.onnx import main_export  # noqa: F401
    except ImportError:
        raise AfinarError("X030", "faltan optimum-onnx y onnxruntime para exportar a ONNX.",
                          hint='pip install "afinar[onnx]"') from None


def export_onnx(model_dir: Path, target: Path, ref: Reference, params: int, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Export the fp32 merged folder `model_dir` to `target` (replaced in one rename once everything checks out)."""
    require_optimum()
    if target.exists() and not overwrite:
        raise AfinarError("X003", "la carpeta ONNX ya existe.", where=str(target), hint="usa --sobrescribir")
    target.parent.mkdir(parents=True, exist_ok=True)
    # fp32 graph + INT8 copy, plus room for optimum's intermediate files.
    require_free_space(target.parent, params * (4 + 1) * 2, "X012")
    steps = ["exportar con optimum-onnx", "cuantizar a INT8 con onnxruntime", "comprobar fp32", "comprobar INT8"]
    with atomic_dir(target, overwrite=overwrite) as tmp, _steps(steps, progress) as step:
        _export(model_dir, tmp)
        step()
        _quantize(tmp)
        (tmp / "onnx").mkdir()
        for path in list(tmp.glob("*.onnx")) + list(tmp.glob("*.onnx_data")):
            os.replace(path, tmp / "onnx" / path.name)
        step()
        fp32 = check_logits(tmp / "onnx" / "model.onnx", ref)
        step()
        int8 = check_generation(tmp / "onnx" / "model_quantized.onnx", ref)
        step()
        report = {"fp32": fp32, "int8": int8}
        (tmp / "afinar_onnx.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


@contextlib.contextmanager
def _steps(names: list[str], progress: bool):
    from tqdm import tqdm

    bar = tqdm(total=len(names), desc="ONNX", unit="paso", disable=not progress, leave=False)
    bar.set_postfix_str(names[0])

    def step():
        bar.update(1)
        if bar.n < len(names):
            bar.set_postfix_str(names[bar.n])

    try:
        yield step
    finally:
        bar.close()


def _export(model_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    try:
        with warnings.catch_warnings():  # tracer warnings about constant shapes are expected and alarm people
            warnings.simplefilter("ignore")
            main_export(str(model_dir), output=str(out), task=TASK, device="cpu", do_validation=False)
    except (KeyError, ValueError) as exc:
        if "is not supported" in str(exc) or "not supported" in str(exc):
            arch = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
            raise AfinarError("X031", f"optimum-onnx no sabe exportar la arquitectura '{arch}' a ONNX.",
                              where=str(model_dir), hint="usa --formato safetensors o gguf") from None
        raise AfinarError("X032", f"la exportación a ONNX falló: {str(exc)[:300]}", where=str(model_dir)) from None
    if not (out / "model.onnx").is_file():
        raise AfinarError("X032", "optimum-onnx no escribió model.onnx.", where=str(model_dir))


def _quantize(folder: Path) -> None:
    """Dynamic INT8 weights with onnxruntime's quantiser, per channel, as Transformers.js's own conversion script does
    for its `model_quantized.onnx` (per-tensor scales, optimum's avx2 default, made the tuned 135M model ramble)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = folder / "model.onnx"
    big = sum(p.stat().st_size for p in folder.glob("model.onnx*")) > 2_000_000_000  # protobuf's 2 GB limit
    quantize_dynamic(str(source), str(folder / "model_quantized.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=big)
    if not (folder / "model_quantized.onnx").is_file():
        raise AfinarError("X032", "onnxruntime no escribió model_quantized.onnx.", where=str(folder))


class OnnxCausalLM:
    """A greedy decoder over an optimum `text-generation-with-past` graph, with nothing but onnxruntime."""

    def __init__(self, path: Path, config: dict):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or heads
        self.head_dim = config.get("head_dim") or config["hidden_size"] // heads
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]

    def _feed(self, ids: list[int], past: dict | None, start: int):
        import numpy as np

        n = len(ids)
        feed = {"input_ids": np.array([ids], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, start + n), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(start, start + n, dtype=np.int64)[None]
        for name in self.past_names:
            dtype = np.float16 if "float16" in self.inputs[name].type else np.float32
            feed[name] = past[name] if past else np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=dtype)
        out = dict(zip(self.outputs, self.session.run(None, feed)))
        present = {n.replace("present.", "past_key_values.", 1): v for n, v in out.items() if n.startswith("present.")}
        return out["logits"][0], present  # logits: (n, V)

    def logits(self, ids: list[int]):
        return self._feed(ids, None, 0)[0]

    def stepper(self):
        """A fresh `step(new_ids) -> last logits` for `greedy_decode`, carrying the key/value cache."""
        state = {"past": None, "position": 0}

        def step(ids: list[int]):
            logits, state["past"] = self._feed(ids, state["past"], state["position"])
            state["position"] += len(ids)
            return logits[-1]

        return step


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def check_logits(path: Path, ref: Reference) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from afinar.merge import logits_agreement

    model = AutoModelForCausalLM.from_pretrained(ref.model_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ref.prompt_ids])).logits[0]  # (T, V)
    got = torch.from_numpy(OnnxCausalLM(path, _config(path.parent.parent)).logits(ref.prompt_ids))
    stats = logits_agreement(expected, got)
    if stats["max_abs"] > FP32_MAX_ABS or stats["top1"] < 1.0:
        raise AfinarError("X033", f"el ONNX fp32 no da los mismos logits que torch (máx |Δ| {stats['max_abs']:.2e}, top-1 "
                                  f"igual en {stats['top1']:.0%}). No se guarda.", where=str(path))
    return {"max_abs": stats["max_abs"], "mean_abs": stats["mean_abs"], "top1": stats["top1"], "tolerancia": FP32_MAX_ABS}


def check_generation(path: Path, ref: Reference) -> dict:
    model = OnnxCausalLM(path, _config(path.parent.parent))
    first, _ = greedy_decode(model.stepper(), ref.prompt_ids, ref.eos_ids, 1)
    if first[:1] != ref.tokens[:1]:
        raise AfinarError("X034", "el ONNX INT8 no empieza la respuesta con el mismo token que torch. No se guarda.",
                          where=str(path))
    started = time.perf_counter()
    tokens, stopped = greedy_decode(model.stepper(), ref.prompt_ids, ref.eos_ids, 2 * ref.max_new_tokens,
                                    ref.repetition_penalty)
    seconds = time.perf_counter() - started
    if ref.stopped and not stopped:
        raise AfinarError("X034", f"el ONNX INT8 no termina su respuesta ({len(tokens)} tokens sin fin de turno) y el "
                                  "modelo en torch sí. No se guarda.", where=str(path),
                          hint="en modelos muy pequeños INT8 se aparta pronto de la respuesta; usa GGUF q8_0 o más pasos")
    return {"primer_token_igual": True, "se_detiene": stopped, "tokens_generados": len(tokens),
            "tokens_por_s": round(len(tokens) / seconds, 1) if seconds > 0 else None}
