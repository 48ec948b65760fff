"""`afinar chat RUN_OR_MODEL`: streaming chat with the recipe's system prompt, or one-shot with --prompt."""
from __future__ import annotations

import sys
from pathlib import Path

from afinar.config import GenerationSection
from afinar.data.templates import with_system
from afinar.inference.engines import Reply, Sampling, load_engine, transformers_stream

QUIT_WORDS = {"salir", "exit", "quit"}


def generate(model, tokenizer, messages: list[dict], gen: GenerationSection, seed: int | None = None) -> Reply:
    """One assistant turn with a loaded transformers model (what `afinar eval` compares base and tuned with)."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")  # (1, T)
    *_, reply = transformers_stream(model, tokenizer, prompt, gen, seed)
    return reply


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
