"""Speed of the three inference engines on the embedded base: time to first token and tokens/s.

    .venv/bin/python bench/serve_engines.py [--tokens 64] [--rounds 3] [--gguf f16|q8_0]

The base is exported once into a temporary folder with llama.cpp's converter (GGUF) and optimum-onnx + onnxruntime
(ONNX fp32 and INT8), then each engine answers the same prompts greedily with the same token budget. Prints each
engine's numbers and the ratio to the transformers engine measured in the same run (machines are noisy: only the
ratios mean something). Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "¿Qué hago si alguien se quema la mano con agua hirviendo?",
    "Explica qué es una pila en programación.",
    "¿Qué es la fotosíntesis?",
]


def measure(engine, tokens: int, rounds: int) -> dict:
    from afinar.data.templates import with_system
    from afinar.inference.engines import Reply, Sampling

    model_id, personality = next(iter(engine.personalities.items()))
    sampling = Sampling(temperature=0.0, repetition_penalty=1.1, max_tokens=tokens)
    first, speed = [], []
    for _ in range(rounds):
        for prompt in PROMPTS:
            messages = with_system([{"role": "user", "content": prompt}], personality.system_prompt)
            started = time.perf_counter()
            ttft = None
            for item in engine.stream(model_id, messages, sampling):
                if ttft is None:
                    ttft = time.perf_counter() - started
                if isinstance(item, Reply):
                    total = time.perf_counter() - started
                    if item.completion_tokens > 1:
                        speed.append((item.completion_tokens - 1) / max(total - ttft, 1e-9))
            first.append(ttft)
    return {"ttft_s": statistics.median(first), "tok_s": statistics.median(speed)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gguf", choices=["f16", "q8_0"], default="q8_0")
    args = parser.parse_args()

    from afinar.export import gguf, onnx
    from afinar.inference.engines import LlamaCppEngine, OnnxEngine, load_engine
    from afinar.models import resolve_base

    base = Path(resolve_base("smollm2-135m"))
    with tempfile.TemporaryDirectory(prefix="afinar-bench-") as tmp:
        tmp = Path(tmp)
        print("Exportando el modelo base (GGUF y ONNX)…")
        f16 = gguf.convert(base, tmp / "base-f16.gguf", progress=False)
        path = f16 if args.gguf == "f16" else gguf.quantize(f16, tmp / "base-q8_0.gguf", "q8_0", progress=False)
        onnx.export_fp32_graph(base, tmp / "onnx")
        source = tmp / "onnx" / "onnx" / "model.onnx"  # INT8 as `afinar export` writes it first
        onnx.quantize_int8(source, source.with_name(onnx.QUANTIZED), onnx.matmuls_named(source, onnx.INT8_VARIANTS[0][1]))
        engines = {"transformers (fp32)": load_engine([base])}
        personality = next(iter(engines["transformers (fp32)"].personalities.values()))
        engines[f"llama.cpp ({args.gguf})"] = LlamaCppEngine(path, personality)
        engines["onnxruntime (fp32)"] = OnnxEngine(tmp / "onnx", personality, quantized=False)
        engines["onnxruntime (INT8)"] = OnnxEngine(tmp / "onnx", personality, quantized=True)
        results = {name: measure(engine, args.tokens, args.rounds) for name, engine in engines.items()}
    ref = results["transformers (fp32)"]
    print(f"\n{len(PROMPTS) * args.rounds} respuestas voraces de hasta {args.tokens} tokens por motor (medianas):")
    print(f"{'motor':<22} {'1er token':>10} {'tokens/s':>9} {'× tokens/s':>11} {'× 1er token':>12}")
    for name, r in results.items():
        print(f"{name:<22} {r['ttft_s'] * 1000:>8.0f} ms {r['tok_s']:>9.1f} {r['tok_s'] / ref['tok_s']:>10.2f}× "
              f"{ref['ttft_s'] / r['ttft_s']:>11.2f}×")
    print("(× = cuántas veces mejor que transformers en esta misma ejecución)")


if __name__ == "__main__":
    main()
