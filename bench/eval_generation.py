"""Greedy answers for evaluation, by engine: transformers one at a time (`generate`), transformers batched
(`generate_many`, what `afinar eval --motor transformers` does) and llama.cpp on a GGUF of the same model (f16 and
q8_0) one at a time and all together (what `afinar eval` does when llama.cpp is installed), with the GGUF's
conversion time apart (an evaluation through llama.cpp pays it once per model).

    .venv/bin/python bench/eval_generation.py [--preguntas 10] [--lote 8] [--max-nuevos 160] [--sin-llamacpp]

The embedded base (SmolLM2-135M-Instruct, fp32) answers the first held-out first-aid questions with the nursing
recipe's system prompt, greedy, in the same process: wall time, generated tokens per second, and how many answers
are identical text to transformers one at a time (a padded batch may round differently and flip a near-tie; a
quantized GGUF more so). No row is printed. Machines are noisy: only the ratios of this run mean something. Not a
test: no thresholds. `afinar eval` answers each question twice (base and tuned): double the times for its cost.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preguntas", type=int, default=10)
    parser.add_argument("--sin-llamacpp", action="store_true", help="only the transformers engines")
    parser.add_argument("--lote", type=int, default=8)
    parser.add_argument("--max-nuevos", type=int, default=160)
    args = parser.parse_args()

    import torch

    from afinar.config import load_recipe
    from afinar.data.formats import load_examples, shipped_dataset
    from afinar.data.templates import with_system
    from afinar.demo import shipped_recipe
    from afinar.inference.chat import generate, generate_many
    from afinar.models import load_model, load_tokenizer, resolve_base

    recipe = load_recipe(shipped_recipe("enfermeria"))
    gen = recipe.generation.model_copy(update={"temperature": 0.0, "max_new_tokens": args.max_nuevos})
    path = resolve_base(recipe.model.base)
    model, tokenizer = load_model(path, dtype=torch.float32).eval(), load_tokenizer(path)
    examples = load_examples(shipped_dataset("primeros_auxilios_evaluacion"))[: args.preguntas]
    conversations = [with_system(e.messages[:-1], recipe.data.system_prompt) for e in examples]
    generate(model, tokenizer, conversations[0], gen.model_copy(update={"max_new_tokens": 4}))  # warm-up

    t0 = time.perf_counter()
    one = [generate(model, tokenizer, c, gen) for c in conversations]
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = generate_many(model, tokenizer, conversations, gen, batch_size=args.lote)
    batched = time.perf_counter() - t0

    rows = [("transformers, de una en una", sequential, one), (f"transformers, en lotes de {args.lote}", batched, many)]
    if not args.sin_llamacpp:
        rows += _llama_cpp(path, tokenizer, conversations, gen)
    print(f"{len(conversations)} respuestas voraces de hasta {args.max_nuevos} tokens "
          f"(SmolLM2-135M; transformers fp32, {torch.get_num_threads()} hilos)")
    print(f"{'motor':<50} {'segundos':>8} {'tokens/s':>9} {'× lotes':>8} {'mismo texto':>12} {'terminan':>9}")
    for name, seconds, replies in rows:
        tokens = sum(r.completion_tokens for r in replies)
        same = sum(a.text == b.text for a, b in zip(one, replies))
        print(f"{name:<50} {seconds:>8.1f} {tokens / seconds:>9.1f} {batched / seconds:>7.2f}× "
              f"{same:>5} de {len(one):<4} {sum(r.stopped for r in replies):>5}")
    print("(× lotes: cuántas veces más rápido que el camino de afinar eval en esta misma ejecución; mismo texto: igual "
          "a transformers de una en una)")


def _llama_cpp(path, tokenizer, conversations, gen) -> list:
    """The same greedy answers from llama.cpp on a GGUF of the model (converted here, timed apart), f16 and q8_0, one
    at a time and, as `afinar eval` asks for them, all together (`LlamaCppEngine.answer_many`)."""
    import tempfile
    from pathlib import Path

    from afinar.evaluate.llamacpp import prompt_ids
    from afinar.export import gguf
    from afinar.inference.engines import LlamaCppEngine, load_engine
    from afinar.inference.sampling import Reply, Sampling

    personality = next(iter(load_engine([path]).personalities.values()))
    sampling = Sampling(temperature=0.0, repetition_penalty=gen.repetition_penalty, max_tokens=gen.max_new_tokens)
    rows = []
    with tempfile.TemporaryDirectory(prefix="afinar-bench-") as tmp:
        t0 = time.perf_counter()
        f16 = gguf.convert(Path(path), Path(tmp) / "modelo-f16.gguf", progress=False)
        converted = time.perf_counter() - t0
        t0 = time.perf_counter()
        q8 = gguf.quantize(f16, Path(tmp) / "modelo-q8_0.gguf", "q8_0", progress=False)
        quantized = time.perf_counter() - t0
        print(f"GGUF: conversión f16 {converted:.1f} s, cuantización q8_0 {quantized:.1f} s (una vez por modelo)")
        # llama.cpp's own penalty (its last 64 tokens, none of the prompt at the first: `afinar serve`, Ollama) and
        # transformers' (every token of the prompt and the answer: what `afinar eval --motor llama.cpp` uses).
        for label, file, like in (("f16", f16, False), ("f16", f16, True), ("q8_0", q8, True)):
            engine = LlamaCppEngine(file, personality, like_transformers=like)
            model_id = next(iter(engine.personalities))
            t0 = time.perf_counter()
            replies = [next(item for item in engine.stream(model_id, c, sampling) if isinstance(item, Reply))
                       for c in conversations]
            penalty = "penalización de transformers" if like else "penalización de llama.cpp"
            rows.append((f"llama.cpp {label}, {penalty}", time.perf_counter() - t0, replies))
            if label == "f16" and like:  # afinar eval's way: the run's tokenizer's ids, every answer in one batch
                ids = prompt_ids(tokenizer, conversations)
                t0 = time.perf_counter()
                replies = engine.answer_many(model_id, ids, [sampling] * len(ids))
                rows.append(("llama.cpp f16, todas a la vez (afinar eval)", time.perf_counter() - t0, replies))
            engine.llm.close()
    return rows

if __name__ == "__main__":
    main()
