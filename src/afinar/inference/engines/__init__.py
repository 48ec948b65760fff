"""One small interface over three runtimes: transformers (base + adapters, or merged), llama.cpp (a GGUF export) and
onnxruntime (an ONNX export). `afinar chat` and `afinar serve` use it.

An engine holds one or more *personalities* (model ids). `stream(model_id, messages, sampling)` yields text pieces
as they are produced and ends with a `Reply`. One module per runtime, each importing its library only when used:

- base.py: `Engine`, `Personality`, `personality_id`;
- transformers.py: `TransformersEngine` (several LoRA adapters on one base), `transformers_stream`, `sampling_kwargs`;
- llamacpp.py: `LlamaCppEngine`;
- onnx.py: `OnnxEngine`;
- sampling settings, the sampler and the decode loop are in afinar/inference/sampling.py (re-exported here).

This file picks the engine for what it is given (`load_engine`).
"""
from __future__ import annotations

from pathlib import Path

from afinar.config import GenerationSection
from afinar.errors import AfinarError
from afinar.inference.engines.base import (
    Engine,
    Personality,
    base_personality_id,
    personality_id,
    personality_of,
)
from afinar.inference.engines.llamacpp import LlamaCppEngine
from afinar.inference.engines.onnx import OnnxEngine
from afinar.inference.engines.transformers import (
    TransformersEngine,
    base_of,
    sampling_kwargs,
    transformers_stream,
)
from afinar.inference.sampling import Reply, Sampling, pick
from afinar.runs import export_parts, open_ref

ENGINES = ("auto", "transformers", "llama.cpp", "onnxruntime")

__all__ = [
    "ENGINES", "Engine", "LlamaCppEngine", "OnnxEngine", "Personality", "Reply", "Sampling", "TransformersEngine",
    "base_of", "base_personality_id", "check_base_servable", "load_engine", "personality_id", "personality_of", "pick",
    "sampling_kwargs", "transformers_stream",
]


def check_base_servable(kind: str | None, path: Path) -> None:
    """`--con-base` needs the base's weights beside the tuned ones: a GGUF or ONNX export holds only the tuned model
    (S013)."""
    if kind:
        raise AfinarError("S013", f"--con-base no funciona con una exportación {kind.upper()}: la exportación solo "
                                  "guarda el modelo afinado, no el modelo base.", where=str(path),
                          hint="sirve la ejecución (RUN) con el motor transformers: afinar serve RUN --con-base")


def load_engine(sources: list[str | Path], engine: str = "auto", with_base: bool = False) -> Engine:
    """Runs and merged folders → transformers; a GGUF file or export → llama.cpp; an ONNX export → onnxruntime.
    `with_base`: also serve the base model the runs were trained from (transformers only; personality `base`)."""
    if engine not in ENGINES:
        raise AfinarError("S012", f"motor desconocido: {engine}", hint="opciones: " + ", ".join(ENGINES))
    paths = [Path(s) for s in sources]
    exports = [export_parts(p) for p in paths]
    if any(exports) and engine in ("auto", "llama.cpp", "onnxruntime"):
        if with_base:
            kind, path, _ = next(e for e in exports if e)
            check_base_servable(kind, path)
        if len(paths) > 1:
            raise AfinarError("S011", "un GGUF o un ONNX lleva un solo modelo: sirve varias personalidades con sus "
                                      "ejecuciones (adaptadores sobre una base) y el motor transformers.")
        kind, path, ref = exports[0]
        personality = (personality_of(ref) if ref else
                       Personality(personality_id(path, None), path, None, GenerationSection()))
        if kind == "gguf" and engine in ("auto", "llama.cpp"):
            return LlamaCppEngine(path, personality)
        if kind == "onnx" and engine in ("auto", "onnxruntime"):
            return OnnxEngine(path, personality)
        raise AfinarError("S012", f"el motor {engine} no sirve una exportación {kind}.")
    if engine not in ("auto", "transformers"):
        raise AfinarError("S012", f"el motor {engine} necesita una exportación ({'gguf' if engine == 'llama.cpp' else 'onnx'}).",
                          hint="exporta antes con afinar export RUN --formato gguf|onnx")
    return TransformersEngine([open_ref(p) for p in paths], with_base=with_base)
