"""`afinar chat RUN_OR_MODEL`: streaming chat with the recipe's system prompt, or one-shot with --prompt."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from afinar.config import GenerationSection
from afinar.data.templates import with_system

QUIT_WORDS = {"salir", "exit", "quit"}


@dataclass
class Reply:
    text: str
    new_tokens: int
    stopped: bool  # True when the model emitted its end-of-turn token by itself


def sampling_kwargs(gen: GenerationSection, seed: int | None = None) -> dict:
    kwargs = {"max_new_tokens": gen.max_new_tokens, "repetition_penalty": gen.repetition_penalty}
    if gen.temperature <= 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None)
    return kwargs


def generate(model, tokenizer, messages: list[dict], gen: GenerationSection, on_text=None, seed: int | None = None) -> Reply:
    """One assistant turn. `on_text` receives text pieces as they are produced (streaming)."""
    import threading

    import torch
    from transformers import TextIteratorStreamer

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt").to(model.device)  # (1, T)
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = dict(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sampling_kwargs(gen),
    )
    result = {}

    def run():
        with torch.no_grad():
            result["ids"] = model.generate(**kwargs)

    if on_text is None:
        run()
    else:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs["streamer"] = streamer
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for piece in streamer:
            on_text(piece)
        worker.join()
    new = result["ids"][0, prompt.shape[1] :].tolist()
    stopped = bool(new) and new[-1] == tokenizer.eos_token_id
    return Reply(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), stopped)


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
    from afinar.inference.engines import Reply as EngineReply
    from afinar.inference.engines import Sampling, load_engine

    loaded = load_engine([model_dir], engine)
    model_id, personality = next(iter(loaded.personalities.items()))
    sampling = Sampling.from_generation(personality.generation, temperature=temperature, top_p=top_p, top_k=top_k,
                                        repetition_penalty=repetition_penalty, max_tokens=max_new_tokens, seed=seed)
    system = system_prompt if system_prompt is not None else personality.system_prompt
    history: list[dict] = []
    context = loaded.context

    def ask(question: str) -> EngineReply:
        def conversation() -> list[dict]:
            return with_system([*history, {"role": "user", "content": question}], system)

        # Forget the oldest exchanges rather than overflow the model's context window.
        while len(history) >= 2 and loaded.prompt_tokens(model_id, conversation()) + sampling.max_tokens > context:
            del history[:2]
        for item in loaded.stream(model_id, conversation(), sampling):
            if isinstance(item, EngineReply):
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
