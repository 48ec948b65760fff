"""Greedy answers for evaluation: one at a time (`generate`, what `afinar eval` did) vs batched (`generate_many`).

    .venv/bin/python bench/eval_generation.py [--preguntas 16] [--lote 8] [--max-nuevos 160]

The embedded base (SmolLM2-135M-Instruct, fp32) answers the first held-out first-aid questions with the nursing
recipe's system prompt, greedy, in the same process: wall time, generated tokens per second, and how many answers
are identical text in both ways (a padded batch may round differently and flip a near-tie). No row is printed.
Machines are noisy: only the ratio of this run means something. Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preguntas", type=int, default=16)
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

    tokens = sum(r.completion_tokens for r in one), sum(r.completion_tokens for r in many)
    same = sum(a.text == b.text for a, b in zip(one, many))
    print(f"{len(conversations)} respuestas voraces de hasta {args.max_nuevos} tokens (SmolLM2-135M, fp32, {torch.get_num_threads()} hilos)")
    print(f"  de una en una:  {sequential:6.1f} s · {tokens[0] / sequential:6.1f} tokens/s")
    print(f"  en lotes de {args.lote}: {batched:6.1f} s · {tokens[1] / batched:6.1f} tokens/s · {sequential / batched:.2f}× más rápido")
    print(f"  mismo texto: {same} de {len(one)}; terminadas solas: {sum(r.stopped for r in one)} y {sum(r.stopped for r in many)}")


if __name__ == "__main__":
    main()
