"""`afinar chat RUN_OR_MODEL`: streaming chat with the recipe's system prompt, or one-shot with --prompt."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from afinar.config import GenerationSection
from afinar.data.chat_format import Stops, cut_at_stop, stops_of
from afinar.data.templates import with_system
from afinar.inference.engines import (
    Reply,
    Sampling,
    load_engine,
    sampling_kwargs,
    transformers_stream,
)

QUIT_WORDS = {"salir", "exit", "quit"}


def generate(model, tokenizer, messages: list[dict], gen: GenerationSection, seed: int | None = None,
             stops: Stops | None = None) -> Reply:
    """One assistant turn with a loaded transformers model, streamed underneath (`generate_many` batches several;
    this is its one-at-a-time reference in tests/unit/test_eval.py and bench/eval_generation.py)."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")  # (1, T)
    *_, reply = transformers_stream(model, tokenizer, prompt, gen, seed, stops=stops)
    return reply


def generate_many(model, tokenizer, conversations: list[list[dict]], gen: GenerationSection, seed: int | None = None,
                  batch_size: int = 8, on_batch=None, adapter_names: list[str] | None = None,
                  stops: Stops | None = None, on_step=None) -> list[Reply]:
    """One assistant turn for each conversation, `batch_size` at a time with left padding and the KV cache.

    Generation on a CPU is bound by reading the weights once per token, so a batch of 8 answers costs little more
    than one (measured in bench/eval_generation.py). Greedy answers are those of `generate` up to float rounding
    of the padded batch; a sampled batch draws from one seed. `adapter_names` (a PEFT model): the adapter of each
    conversation, "__base__" for the base without it, so base and tuned answers share a batch (PEFT's mixed-adapter
    batches). `on_step()` is called once per generated token of a batch (a progress bar that moves within a batch)."""
    import torch

    stops = stops or stops_of(tokenizer)
    watch = {"stopping_criteria": _step_callbacks(on_step)} if on_step is not None else {}
    replies: list[Reply] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                     for c in conversations[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                              return_token_type_ids=False).to(model.device)
            if seed is not None:
                torch.manual_seed(seed + start)
            mixed = {"adapter_names": adapter_names[start : start + batch_size]} if adapter_names else {}
            with torch.no_grad():
                ids = model.generate(**batch, eos_token_id=sorted(stops.ids), pad_token_id=tokenizer.pad_token_id,
                                     **sampling_kwargs(gen), **mixed, **watch)  # (B, T + new)
            width = batch["input_ids"].shape[1]
            for row, mask in zip(ids[:, width:].tolist(), batch["attention_mask"]):
                end = next((i for i, token in enumerate(row) if token in stops.ids), None)
                new = row[:end] if end is not None else row  # after the stop: padding of finished rows
                text, cut = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stops.strings)
                replies.append(Reply(text.strip(), int(mask.sum()), len(new), end is not None or cut))
            if on_batch is not None:
                on_batch(len(texts))
    finally:
        tokenizer.padding_side = side
    return replies


def _step_callbacks(on_step):
    """A stopping criterion that never stops: transformers calls it after every generated token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class EveryStep(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            on_step()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([EveryStep()])


def chat(
    model_dir: str | Path,
    prompt: str | None = None,
    system_prompt: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    engine: str = "auto",
) -> str | None:
    """Interactive loop (`salir`/`exit` to quit) or, with `prompt`, a single streamed answer, on any engine."""
    loaded = load_engine([model_dir], engine)
    model_id, personality = next(iter(loaded.personalities.items()))
    sampling = Sampling.from_generation(personality.generation, temperature=temperature, top_p=top_p, top_k=top_k,
                                        repetition_penalty=repetition_penalty, max_tokens=max_new_tokens, seed=seed)
    system = system_prompt if system_prompt is not None else personality.system_prompt
    history: list[dict] = []
    context = loaded.context

    def ask(question: str) -> Reply:
        def conversation() -> list[dict]:
            return with_system([*history, {"role": "user", "content": question}], system)

        # Forget the oldest exchanges rather than overflow the model's context window.
        while len(history) >= 2 and loaded.prompt_tokens(model_id, conversation()) + sampling.max_tokens > context:
            del history[:2]
        for item in loaded.stream(model_id, conversation(), sampling):
            if isinstance(item, Reply):
                print("" if item.stopped else "  [cortado: max_new_tokens]")
                return item
            print(item, end="", flush=True)
        raise RuntimeError("el motor terminó sin respuesta")

    if prompt is not None:
        return ask(prompt).text

    print(f"Chat con {personality.path} (motor {loaded.name}). Escribe 'salir' o 'exit' para terminar.")
    if system:
        print(f"[sistema] {system}")
    while True:
        try:
            question = input("\nTú: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not question:
            continue
        if question.lower() in QUIT_WORDS:
            break
        print("Asistente: ", end="", flush=True)
        reply = ask(question)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply.text}]
    sys.stdout.flush()
    return None


def chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="model",
                   help="ejecución, modelo fusionado, o exportación (GGUF, carpeta ONNX, RUN/export)")
    p.add_argument("--prompt", help="una sola pregunta, sin modo interactivo")
    p.add_argument("--system", dest="system_prompt",
                   help="mensaje de sistema (por defecto, el de la receta)")
    p.add_argument("--temperature", type=float,
                   help="0 = greedy (por defecto el de la receta, 0.6)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--motor", dest="engine", choices=["auto", "transformers", "llama.cpp", "onnxruntime"],
                   help="auto: transformers para ejecuciones, llama.cpp para GGUF, onnxruntime para ONNX")
