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
) -> str | None:
    """Interactive loop (`salir`/`exit` to quit) or, with `prompt`, a single streamed answer."""
    import torch

    from afinar.runs import load_ref, open_ref

    ref = open_ref(model_dir)
    gen = ref.generation.model_copy(
        update={
            k: v
            for k, v in dict(
                temperature=temperature, top_p=top_p, top_k=top_k,
                repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
            ).items()
            if v is not None
        }
    )
    system = system_prompt if system_prompt is not None else ref.system_prompt
    model, tokenizer = load_ref(ref, dtype=torch.float32)
    model.eval()
    history: list[dict] = []

    context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048

    def ask(question: str) -> Reply:
        def conversation() -> list[dict]:
            return with_system([*history, {"role": "user", "content": question}], system)

        # Forget the oldest exchanges rather than overflow the model's context window.
        while len(history) >= 2 and len(tokenizer.apply_chat_template(conversation(), add_generation_prompt=True)) + gen.max_new_tokens > context:
            del history[:2]
        messages = conversation()
        reply = generate(model, tokenizer, messages, gen, on_text=lambda t: print(t, end="", flush=True), seed=seed)
        print("" if reply.stopped else "  [cortado: max_new_tokens]")
        return reply

    if prompt is not None:
        return ask(prompt).text

    kind = "base + adaptador" if ref.kind == "run" else "modelo fusionado"
    print(f"Chat con {ref.path} ({kind}). Escribe 'salir' o 'exit' para terminar.")
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
