"""What every exported format is checked against: the merged model in plain transformers, fp32, greedy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from afinar.data.chat_format import folder_format
from afinar.data.templates import with_system

# A question from the first-aid guide; the recipe's system prompt is added in front, as in chat.
PROBE_QUESTION = "¿Qué debo hacer si alguien se quema la mano con agua hirviendo?"
COMPARED_TOKENS = 16


@dataclass
class Reference:
    """The fp32 merged model in transformers, the yardstick for every exported file.

    Two greedy runs: plain (no penalty) for the first `COMPARED_TOKENS` tokens, which an f16 file must repeat (see
    `compare_choices`);
    and with the recipe's repetition penalty (what chat, llama.cpp and Ollama use) up to `max_new_tokens`, to know
    whether the model ends its answer on its own."""

    model_dir: Path
    messages: list[dict]
    prompt_text: str
    prompt_ids: list[int]
    eos_ids: set[int]
    chat_template: str | None
    tokens: list[int]  # plain greedy, first COMPARED_TOKENS (stop token excluded)
    logits: object  # numpy (len(tokens), V): the logits that chose each of `tokens`
    repetition_penalty: float
    stopped: bool  # with the penalty, a stop token came within `max_new_tokens`
    answer: list[int]  # with the penalty: the answer before the stop (or the first max_new_tokens)
    max_new_tokens: int
    end_of_turn: int = -1  # the chat format's end-of-turn id (the tokenizer's eos): every runtime must stop on it


def greedy_reference(model_dir: Path, system_prompt: str | None, repetition_penalty: float = 1.0,
                     max_new_tokens: int = 256) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    messages = with_system([{"role": "user", "content": PROBE_QUESTION}], system_prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = set(folder_format(model_dir, tokenizer).eos_token_ids)  # the end of turn and generation_config's ids

    def run(penalty: float, limit: int) -> tuple[list[int], bool]:
        # Replace, not pass: transformers fills a passed config's defaults from the model's own (do_sample=True…).
        model.generation_config = GenerationConfig(do_sample=False, max_new_tokens=limit, eos_token_id=sorted(eos),
                                                   pad_token_id=tokenizer.pad_token_id, repetition_penalty=penalty)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        out = out[0, len(ids):].tolist()
        stopped = bool(out) and out[-1] in eos
        return (out[:-1] if stopped else out), stopped

    answer, stopped = run(repetition_penalty, max_new_tokens)
    plain, _ = run(1.0, COMPARED_TOKENS)
    with torch.no_grad():  # logits at each compared position, prompt + plain answer fed at once
        logits = model(torch.tensor([ids + plain])).logits[0, len(ids) - 1: len(ids) - 1 + len(plain)]  # (n, V)
    return Reference(Path(model_dir), messages, text, ids, eos, tokenizer.chat_template, plain, logits.numpy(),
                     repetition_penalty, stopped, answer, max_new_tokens, tokenizer.eos_token_id)


# Two candidates closer than this (in logits) are a tie that half-precision arithmetic may break either way; a broken
# export (template, tokenizer, rope, tensor layout) misses by whole units. Measured: SmolLM2-135M f16 in llama.cpp vs
# fp32 transformers differ by at most ~0.04 per logit.
NEAR_TIE = 0.1


def compare_choices(ref: Reference, logits) -> dict:
    """Teacher-forced comparison of a runtime's logits (len(ref.tokens), V) with the reference's at the same positions.

    A position agrees when the runtime picks the reference token, or a token the reference itself scored within
    NEAR_TIE of it."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float32)
    exact = ties = 0
    for k, token in enumerate(ref.tokens):
        choice = int(logits[k].argmax())
        if choice == token:
            exact += 1
        elif ref.logits[k][token] - ref.logits[k][choice] <= NEAR_TIE:
            ties += 1
    return {"iguales": exact, "casi_empates": ties, "comparados": len(ref.tokens),
            "max_abs_logits": float(np.abs(logits - ref.logits).max()) if len(ref.tokens) else 0.0}


def same_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
