"""The llama.cpp engine: a GGUF export (gguf/<name>-<quant>.gguf) in llama-cpp-python.

Tokens come from llama.cpp's own sampler chain (no Python per-token math); their text goes through the same
`sampling.stream_reply` as the onnxruntime engine. The chat template and eos come from the file's own metadata,
rendered the way transformers renders chat templates.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Generator, Iterator
from pathlib import Path

from afinar import extras
from afinar.data.chat_format import named_stop_strings
from afinar.inference.engines.base import Engine, Personality
from afinar.inference.sampling import Reply, Sampling, stream_reply


class LlamaCppEngine(Engine):
    """A GGUF export (gguf/<name>-<quant>.gguf). The chat template and eos come from the file's own metadata."""

    name = "llama.cpp"

    def __init__(self, gguf_path: Path, personality: Personality, n_ctx: int = 4096, like_transformers: bool = False):
        """`like_transformers`: the repetition penalty of transformers (every token of the prompt and of the answer so
        far) instead of llama.cpp's (its last 64 tokens, none of the prompt at the first): `afinar eval` must give
        the answers transformers gives, only faster."""
        extras.require("llamacpp")
        import llama_cpp
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        super().__init__([personality])
        self.like_transformers = like_transformers
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=os.cpu_count() or 1, verbose=False)
        self.context = self.llm.n_ctx()
        meta = self.llm.metadata
        self.eos = {int(meta.get("tokenizer.ggml.eos_token_id", self.llm.token_eos()))}
        if personality.stops is not None:  # the run's other stop ids (Qwen's <|endoftext|>, Llama's <|end_of_text|>)
            self.eos |= set(personality.stops.ids)
        # Rendered the way transformers renders chat templates (same Jinja settings and variables).
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(meta.get("tokenizer.chat_template") or "")
        # Without its run (a GGUF copied on its own), the stop strings of the named template it carries, if any.
        self.template_stops = named_stop_strings(meta.get("tokenizer.chat_template") or "")
        self.special = {name: self.llm.detokenize([int(meta[key])], special=True).decode("utf-8", "replace")
                        for name, key in (("bos_token", "tokenizer.ggml.bos_token_id"),
                                          ("eos_token", "tokenizer.ggml.eos_token_id")) if key in meta}

    def _ids(self, messages: list[dict]) -> list[int]:
        text = self.template.render(messages=messages, add_generation_prompt=True, **self.special)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, model_id: str, messages: list[dict]) -> int:
        return len(self._ids(messages))

    def stream(self, model_id: str, messages: list[dict], sampling: Sampling) -> Iterator[str | Reply]:
        yield from self.stream_ids(model_id, self._ids(messages), sampling)

    def stream_ids(self, model_id: str, ids: list[int], sampling: Sampling) -> Iterator[str | Reply]:
        """The answer to a prompt already tokenized (by the run's own tokenizer, as transformers gets it)."""
        self.get(model_id)

        def decode(tokens: list[int]) -> str:
            return self.llm.detokenize(tokens, special=False).decode("utf-8", "replace")

        # Stop ids: the GGUF's eos and llama.cpp's end-of-generation tokens; stop strings: the run's (markers that
        # are not one token, like the phi-2 guide's <|end|>), when the export knows its run.
        stops = self.personalities[model_id].stops
        strings = stops.strings if stops else self.template_stops
        with self.lock:
            yield from stream_reply(self._tokens(ids, sampling), decode, len(ids), strings)

    def _tokens(self, ids: list[int], sampling: Sampling) -> Generator[int, None, bool]:
        """llama.cpp's own sampler chain (penalty over its last 64 tokens, as in Ollama); returns True at an
        end-of-generation token. Like `sampling.sample_tokens`, but `max_tokens` and the time limit are checked after
        each token."""
        llm, vocab = self.llm, self.llm._model.vocab
        deadline = time.monotonic() + sampling.timeout_s if sampling.timeout_s else None
        llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
        penalty, processors = sampling.repetition_penalty, None
        if self.like_transformers and penalty != 1.0:
            processors, penalty = self.llama_cpp.LogitsProcessorList([transformers_penalty(penalty)]), 1.0
        tokens = llm.generate(ids, top_k=sampling.top_k if sampling.temperature > 0 else 1, top_p=sampling.top_p,
                              min_p=0.0, temp=sampling.temperature, repeat_penalty=penalty,
                              logits_processor=processors, reset=True)
        count = 0
        try:
            for token in tokens:
                if token in self.eos or self.llama_cpp.llama_vocab_is_eog(vocab, token):
                    return True
                yield token
                count += 1
                if count >= sampling.max_tokens or (deadline and time.monotonic() > deadline):
                    return False
            return False
        finally:
            tokens.close()


def transformers_penalty(penalty: float):
    """transformers' `RepetitionPenaltyLogitsProcessor` as a llama.cpp logits processor: every token id seen so far
    (the prompt's too) has its logit divided by `penalty` when positive, multiplied when negative."""
    import numpy as np

    def apply(input_ids, scores):  # input_ids: (T,) prompt + answer so far; scores: (V,) the next token's logits
        seen = np.unique(input_ids)
        picked = scores[seen]
        scores[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
        return scores

    return apply
