"""ONNX for Transformers.js and onnxruntime: optimum-onnx export, onnxruntime dynamic INT8, checked in onnxruntime.

Layout is the one Transformers.js loads (`onnx/model.onnx`, `onnx/model_quantized.onnx`, tokenizer.json,
tokenizer_config.json with the chat template inside, config.json, generation_config.json), as the epicrisis guide's
Angular app expects. The graph is run with `inference.onnx_runtime.OnnxCausalLM`, the same runner `afinar chat` and
`afinar serve` use, and decoded with the same loop (`inference.sampling.greedy_decode`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

from afinar import extras
from afinar.atomic import atomic_dir, require_free_space
from afinar.errors import AfinarError
from afinar.export.reference import Reference
from afinar.hardware import int8_cpu_features
from afinar.inference.onnx_runtime import QUANTIZED, OnnxCausalLM
from afinar.inference.sampling import greedy_decode
from afinar.merge import logits_agreement
from afinar.models import embed_chat_template

TASK = "text-generation-with-past"
FP32_MAX_ABS = 1e-3  # fp32 ONNX vs fp32 torch: same arithmetic, different kernels


def export_onnx(model_dir: Path, target: Path, ref: Reference, params: int, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Export the fp32 merged folder `model_dir` to `target` (replaced in one rename once the fp32 graph checks out).

    The INT8 copy is checked on this machine's CPU; if it fails, the folder is still written with the fp32 model alone
    and the report says why the INT8 is missing (`report["int8"]["escrito"] is False`)."""
    extras.require("onnx")
    if target.exists() and not overwrite:
        raise AfinarError("X003", "la carpeta ONNX ya existe.", where=str(target), hint="usa --sobrescribir")
    target.parent.mkdir(parents=True, exist_ok=True)
    # fp32 graph + INT8 copy, plus room for optimum's intermediate files.
    require_free_space(target.parent, params * (4 + 1) * 2, "X012")
    steps = ["exportar con optimum-onnx", "comprobar fp32", "cuantizar a INT8 con onnxruntime", "comprobar INT8"]
    with atomic_dir(target, overwrite=overwrite) as tmp, _steps(steps, progress) as step:
        export_fp32_graph(model_dir, tmp)
        step()
        fp32 = check_logits(tmp / "onnx" / "model.onnx", ref)
        step()
        int8 = _quantize_and_check(tmp / "onnx", ref, step)
        step()
        report = {"fp32": fp32, "int8": int8, "cpu": int8_cpu_features()}
        (tmp / "afinar_onnx.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def export_fp32_graph(model_dir: Path, folder: Path) -> None:
    """optimum-onnx's fp32 graph in Transformers.js's layout: `folder/onnx/model.onnx`, config and tokenizer beside."""
    _export(model_dir, folder)
    embed_chat_template(folder)  # optimum saves the template only in chat_template.jinja; Transformers.js needs it here
    (folder / "onnx").mkdir()
    for path in list(folder.glob("*.onnx")) + list(folder.glob("*.onnx_data")):
        os.replace(path, folder / "onnx" / path.name)


# Tried in order; the first INT8 that passes `check_generation` on this CPU is kept. The MLP's down projection reads
# the activations with the largest outliers ("massive activations", Sun et al. 2024); onnxruntime quantises each
# activation matrix with one scale, so those outliers cost every other value its precision. `bench/onnx_int8_cpus.py`
# (max |Δlogits| at the prompt's last position vs fp32): embedded SmolLM2-135M, three questions, all projections in
# INT8 6.6 / 7.2 / 11.8, down_proj in fp32 2.4 / 2.9 / 2.1; the demo's tuned model, probe question, this EPYC with VNNI
# / emulated without: 9.0 / 4.8 (first token wrong here, the answer drifts into English) vs 3.6 / 2.7 (right on both).
# The integration test's 12-step model fails the export check all-INT8 and passes with down_proj in fp32. It costs
# file size (137 → 217 MB on 135M), still 2.5× smaller than fp32; all-INT8 stays as the fallback.
INT8_VARIANTS = (
    ("down_proj en fp32, el resto en INT8", ("down_proj", "dense_4h_to_h", "fc2")),
    # The output layer decides the first token among near-ties: a tuned model whose first choice is close may need
    # it in fp32 too (the integration test's model after the padding-free trainer did).
    ("down_proj y la capa de salida en fp32, el resto en INT8", ("down_proj", "dense_4h_to_h", "fc2", "lm_head")),
    ("todas las proyecciones en INT8", ()),
)


def _quantize_and_check(folder: Path, ref: Reference, step) -> dict:
    """INT8 beside the fp32 graph, kept only if it passes `check_generation` here; otherwise removed, with the reason."""
    source, quantized = folder / "model.onnx", folder / QUANTIZED
    tries: list[dict] = []
    for label, keep_float in INT8_VARIANTS:
        float_nodes = matmuls_named(source, keep_float)
        if keep_float and not float_nodes:
            continue  # this architecture names its projections otherwise: nothing different to try
        try:
            quantize_int8(source, quantized, float_nodes)
            step()
            return {"escrito": True, "variante": label, "capas_fp32": len(float_nodes), "intentos_fallidos": tries,
                    **check_generation(quantized, ref)}
        except AfinarError as exc:
            for path in folder.glob(QUANTIZED + "*"):
                path.unlink()
            tries.append({"variante": label, "codigo": exc.code, "motivo": exc.message})
    last = tries[-1]
    return {"escrito": False, "codigo": last["codigo"], "motivo": last["motivo"], "intentos_fallidos": tries}


def matmuls_named(source: Path, parts: tuple[str, ...]) -> list[str]:
    """Names of the graph's MatMul nodes whose name contains any of `parts` (e.g. "down_proj")."""
    import onnx

    nodes = onnx.load(str(source), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type == "MatMul" and any(part in n.name for part in parts)]


def quantize_int8(source: Path, target: Path, float_nodes: list[str] | tuple[str, ...] = (),
                  reduce_range: bool = True) -> None:
    """Dynamic INT8 weights the way Transformers.js's own conversion script makes `model_quantized.onnx`: signed
    weights per channel, with 7-bit range (`reduce_range`); `float_nodes` stay fp32. (`reduce_range=False` is only for
    measuring what afinar wrote before: see bench/onnx_int8_cpus.py.)

    The 7 bits are what make it run on every x86 CPU: without VNNI, onnxruntime's u8×s8 kernels add pairs of products
    in 16 bits with saturation (VPMADDUBSW), and 255·127·2 overflows that; 255·64·2 does not. With 8-bit weights the
    demo's tuned 135M model answered "foreforerencethe affordable affordable…" without ever stopping on an AVX2 EPYC
    without VNNI (issue 11), and the same under `qemu-x86_64 -cpu Haswell` here (`bench/onnx_int8_cpus.py`). With 7
    bits the integer products are exact on both kinds of CPU (a test runs a tiny model's INT8 on both and gets the
    same logits); a deep model's answers can still differ a little, because fp32 kernels round differently per CPU
    and quantisation amplifies it — hence the check runs on the exporting CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = sum(p.stat().st_size for p in source.parent.glob(source.name + "*")) > 2_000_000_000  # protobuf's 2 GB
    root = logging.getLogger()  # the quantiser warns on the root logger about pre-processing we do not need
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, use_external_data_format=big, nodes_to_exclude=list(float_nodes))
    except Exception as exc:  # onnxruntime raises plain exceptions of many kinds; the fp32 model stays usable
        raise AfinarError("X035", f"onnxruntime no pudo cuantizar a INT8 ({type(exc).__name__}: {str(exc)[:200]}).",
                          where=str(source)) from None
    finally:
        root.setLevel(level)
    if not target.is_file():
        raise AfinarError("X035", f"onnxruntime no escribió {target.name}.", where=str(target.parent))


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

    # optimum tells, in English and at warning level, that a tied embedding and output head share one initializer
    # ("Found different candidate ONNX initializers…"): expected for tied models, alarming in a person's log. Errors
    # still show.
    optimum_log = logging.getLogger("optimum")
    level = optimum_log.level
    optimum_log.setLevel(logging.ERROR)
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
    finally:
        optimum_log.setLevel(level)
    if not (out / "model.onnx").is_file():
        raise AfinarError("X032", "optimum-onnx no escribió model.onnx.", where=str(model_dir))


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def check_logits(path: Path, ref: Reference) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

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
        raise AfinarError("X034", "el ONNX INT8 no empieza la respuesta con el mismo token que torch en esta CPU. No se guarda el INT8 "
                                  "(el fp32 sí).",
                          where=str(path))
    started = time.perf_counter()
    tokens, stopped = greedy_decode(model.stepper(), ref.prompt_ids, ref.eos_ids, 2 * ref.max_new_tokens,
                                    ref.repetition_penalty)
    seconds = time.perf_counter() - started
    if ref.stopped and not stopped:
        raise AfinarError("X034", f"el ONNX INT8 no termina su respuesta ({len(tokens)} tokens sin fin de turno) y el "
                                  "modelo en torch sí. No se guarda el INT8 (el fp32 sí).", where=str(path),
                          hint="en modelos muy pequeños INT8 se aparta pronto de la respuesta; usa GGUF q8_0 o más pasos")
    return {"primer_token_igual": True, "se_detiene": stopped, "tokens_generados": len(tokens),
            "tokens_por_s": round(len(tokens) / seconds, 1) if seconds > 0 else None}
