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
from functools import cached_property
from pathlib import Path

from afinar import extras
from afinar.data.chat_format import named_stop_strings
from afinar.errors import AfinarError
from afinar.inference.engines.base import Engine, Personality
from afinar.inference.sampling import (
    AnswerSampler,
    Detokenizer,
    Reply,
    Sampling,
    replay,
    stream_reply,
)

# Answers decoded together by `answer_many`: at most this many, and their KV cache within this many bytes.
MAX_SEQUENCES = 16
KV_BUDGET = 1 << 30


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
        with self.lock:
            yield from stream_reply(self._tokens(ids, sampling), self._decode, len(ids), self._stop_strings(model_id))

    def _decode(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens, special=False).decode("utf-8", "replace")

    def _stop_strings(self, model_id: str) -> tuple[str, ...]:
        """The run's stop strings (markers that are not one token, like the phi-2 guide's <|end|>) when the export
        knows its run, else those of the named template the GGUF carries. Stop ids: `_stop_ids`."""
        stops = self.personalities[model_id].stops
        return stops.strings if stops else self.template_stops

    @cached_property
    def _end_of_generation(self) -> frozenset[int]:
        """llama.cpp's end-of-generation tokens of this model (its eos, eot, <|im_end|>…): 13 ms for 49 152 ids."""
        vocab = self.llm._model.vocab
        return frozenset(t for t in range(self.llm.n_vocab()) if self.llama_cpp.llama_vocab_is_eog(vocab, t))

    def _stop_ids(self) -> set[int]:
        """Where an answer ends: the GGUF's eos and the run's other stop ids (`self.eos`), and llama.cpp's
        end-of-generation tokens."""
        return self.eos | self._end_of_generation

    def answer_many(self, model_id: str, prompts: list[list[int]], samplings: list[Sampling],
                    on_answer=None) -> list[Reply]:
        """Answers to prompts already tokenized (by the run's own tokenizer), decoded together: each llama.cpp batch
        carries the next token of every unfinished answer, so the weights are read once per step for all of them
        (decoding one answer at a time reads them once per token). Each answer is chosen by `AnswerSampler`
        (transformers' repetition penalty and order, its own seeded generator), and each is the answer it gets
        decoded alone (tests/unit/test_engines.py): a greedy one is transformers' up to f16 rounding.
        `on_answer()` after each answer ends. Groups of at most MAX_SEQUENCES answers whose KV cache fits
        KV_BUDGET."""
        self.get(model_id)
        strings = self._stop_strings(model_id)
        replies: list[Reply | None] = [None] * len(prompts)
        with self.lock:
            size = self._group_size(prompts, samplings)
            for start in range(0, len(prompts), size):
                group = range(start, min(start + size, len(prompts)))
                chosen = self._decode_together([prompts[i] for i in group], [samplings[i] for i in group], strings,
                                               on_answer)
                for i, (answer, stopped) in zip(group, chosen):
                    *_, replies[i] = stream_reply(replay(answer, stopped), self._decode, len(prompts[i]), strings)
        return replies

    def _group_size(self, prompts: list[list[int]], samplings: list[Sampling]) -> int:
        """Answers per batch: MAX_SEQUENCES, fewer when their KV cache (f16 keys and values of every layer, for the
        longest prompt and answer) would pass KV_BUDGET (Phi-2 keeps 32 heads of keys per token, Qwen2.5-0.5B 2)."""
        L, model = self.llama_cpp, self.llm._model.model
        head_dim = L.llama_model_n_embd(model) // max(1, L.llama_model_n_head(model))
        per_token = L.llama_model_n_layer(model) * 2 * L.llama_model_n_head_kv(model) * head_dim * 2
        per_answer = max(map(len, prompts), default=0) + max((s.max_tokens for s in samplings), default=0) + 1
        return max(1, min(MAX_SEQUENCES, KV_BUDGET // max(1, per_token * per_answer)))

    def _decode_together(self, prompts: list[list[int]], samplings: list[Sampling], strings: tuple[str, ...],
                         on_answer=None) -> list[tuple[list[int], bool]]:
        """(tokens, stopped) of each prompt's answer, all in one llama.cpp context with a sequence per answer."""
        import numpy as np

        L, model = self.llama_cpp, self.llm._model.model
        n_vocab = self.llm.n_vocab()
        # The engine's own context settings (flash attention off, as llama-cpp-python leaves it: llama.cpp's default
        # would turn it on, and round otherwise than one answer at a time does).
        params = L.llama_context_params.from_buffer_copy(self.llm.context_params)
        # A cache of its own per answer, laid out as when it is decoded alone (llama.cpp's unified cache interleaves
        # the answers' cells: each answer's attention sums run in another order). Measured on the embedded base, 10
        # greedy answers of up to 160 tokens, AVX2 kernels, against one at a time: own caches 10 of 10 identical at
        # 139 tokens/s, unified 10 of 10 at 151 (with flash attention on, 9 of 10), one at a time 94.
        params.n_seq_max, params.kv_unified = len(prompts), False
        params.n_ctx = len(prompts) * max(len(p) + s.max_tokens + 1 for p, s in zip(prompts, samplings))
        params.n_batch = max(max(map(len, prompts)), len(prompts))
        params.n_ubatch = min(512, params.n_batch)
        context = L.llama_init_from_model(model, params)
        if not context:
            raise AfinarError("V007", f"llama.cpp no pudo crear un contexto para {len(prompts)} respuestas a la vez",
                              hint="falta memoria: usa --motor transformers o menos preguntas (--n)")
        batch = L.llama_batch_init(params.n_batch, 0, 1)
        ends = self._stop_ids()
        samplers = [AnswerSampler(p, ends, s) for p, s in zip(prompts, samplings)]
        texts = [Detokenizer(self._decode, strings) for _ in prompts]
        answers: list[list[int]] = [[] for _ in prompts]
        row: dict[int, int] = {}  # answer → its row of logits in the last batch

        def decode(entries: list[tuple[int, int, int, bool]]) -> None:  # (token, position, answer, wants logits)
            for k, (token, position, answer, logits) in enumerate(entries):
                batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = token, position, 1, logits
                batch.seq_id[k][0] = answer
                if logits:
                    row[answer] = k
            batch.n_tokens = len(entries)
            if L.llama_decode(context, batch) != 0:
                raise AfinarError("V007", "llama.cpp no pudo procesar un lote de respuestas",
                                  hint="usa --motor transformers")

        def goes_on(answer: int) -> bool:
            """The answer's next token chosen from its row of logits; False when the answer ended (its sampler's
            verdict, or a stop string: that token is kept, as `stream_reply` keeps it)."""
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(context, row[answer]), shape=(n_vocab,))
            token = samplers[answer].next(logits)
            if token is not None:
                answers[answer].append(token)
                if strings:
                    texts[answer].push(token)
                    if texts[answer].cut is not None:
                        samplers[answer].stopped, token = True, None
            if token is None and on_answer is not None:
                on_answer()
            return token is not None

        try:
            alive = []
            for answer, prompt in enumerate(prompts):  # each prompt on its own: the logits of its last token
                decode([(t, p, answer, p == len(prompt) - 1) for p, t in enumerate(prompt)])
                if goes_on(answer):
                    alive.append(answer)
            while alive:  # one token of every unfinished answer per batch, at its own position in its own sequence
                decode([(answers[a][-1], len(prompts[a]) + len(answers[a]) - 1, a, True) for a in alive])
                alive = [a for a in alive if goes_on(a)]
        finally:
            L.llama_batch_free(batch)
            L.llama_free(context)
        return [(answer, bool(sampler.stopped)) for answer, sampler in zip(answers, samplers)]

    def _tokens(self, ids: list[int], sampling: Sampling) -> Generator[int, None, bool]:
        """llama.cpp's own sampler chain (penalty over its last 64 tokens, as in Ollama); returns True at an
        end-of-generation token. Like `sampling.sample_tokens`, but `max_tokens` and the time limit are checked after
        each token."""
        llm = self.llm
        deadline = time.monotonic() + sampling.timeout_s if sampling.timeout_s else None
        llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
        penalty, processors = sampling.repetition_penalty, None
        if self.like_transformers and penalty != 1.0:
            processors, penalty = self.llama_cpp.LogitsProcessorList([transformers_penalty(penalty)]), 1.0
        tokens = llm.generate(ids, top_k=sampling.top_k if sampling.temperature > 0 else 1, top_p=sampling.top_p,
                              min_p=0.0, temp=sampling.temperature, repeat_penalty=penalty,
                              logits_processor=processors, reset=True)
        ends, count = self._stop_ids(), 0
        try:
            for token in tokens:
                if token in ends:
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
