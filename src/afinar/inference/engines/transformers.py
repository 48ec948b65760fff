"""The transformers engine: a run (base + LoRA adapters, several on one loaded model) or a merged folder.

In transformers, several runs on the same base are several LoRA adapters on one loaded model (PEFT `load_adapter` /
`set_adapter`); the engine's lock makes a request's adapter choice and its generation one step, so concurrent
requests to different personalities never mix. `transformers_stream` is also what `afinar eval` and
`chat.generate` use to generate with a model already loaded.

With `with_base` (`afinar serve --con-base`) the base model the runs were trained from is one more personality: for
LoRA runs the same loaded weights with the adapters disabled (PEFT `disable_adapter()`, entered and left under the
same lock, so a base request and a tuned one never mix); for a `method: full` run or a merged folder, the base loaded
as a second model.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import nullcontext

from afinar.config import GenerationSection
from afinar.data.chat_format import Stops, stops_of
from afinar.errors import AfinarError
from afinar.inference.engines.base import (
    Engine,
    Personality,
    base_personality,
    personality_of,
)
from afinar.inference.sampling import Reply, Sampling, stream_reply
from afinar.models import load_model, load_tokenizer
from afinar.runs import MERGE_SUMMARY


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, refs: list, dtype=None, with_base: bool = False):
        """`refs`: runs on one base, or one merged/full folder; `with_base`: also serve that base (personality
        `base`, or `base-original` when a run is already called `base`)."""
        import torch

        tokenizers = [load_tokenizer(str(ref.path)) for ref in refs]
        personalities = [personality_of(ref, tokenizer) for ref, tokenizer in zip(refs, tokenizers)]
        super().__init__(personalities)
        runs = [r for r in refs if not r.standalone]
        merged = [r for r in refs if r.standalone]
        if runs and merged or len(merged) > 1:
            raise AfinarError("S011", "un servidor transformers sirve o varias ejecuciones sobre la misma base, o un solo "
                                      "modelo fusionado.", hint="lanza un `afinar serve` por modelo fusionado")
        bases = {r.base_path for r in runs}
        if len(bases) > 1:
            raise AfinarError("S011", "las personalidades deben compartir el modelo base: " + ", ".join(sorted(map(str, bases))))
        self.tokenizers = {p.id: tokenizer for p, tokenizer in zip(personalities, tokenizers)}
        self.base_model = None  # the base as a second model (full/merged with `with_base`)
        base_path = base_of(refs[0]) if with_base else None  # checked before any weights are loaded
        if base_path:
            original = base_personality(personalities[0], base_path, self.personalities)
            self.personalities[original.id] = original
            self.tokenizers[original.id] = tokenizers[0]  # the first run's chat format: same prompt, other weights
        if merged:
            self.model = load_model(str(merged[0].path), dtype=dtype or torch.float32)
            self.adapters = False
            if base_path:
                self.base_model = load_model(base_path, dtype=dtype or torch.float32)
                self.base_model.eval()
        else:
            from peft import PeftModel

            base = load_model(runs[0].base_path, dtype=dtype or torch.float32)
            first, *rest = zip(personalities, runs)
            self.model = PeftModel.from_pretrained(base, str(first[1].path), adapter_name=first[0].id)
            for personality, ref in rest:
                self.model.load_adapter(str(ref.path), adapter_name=personality.id)
            self.adapters = True
        self.model.eval()
        self.context = getattr(self.model.config, "max_position_embeddings", None) or self.context

    def _prompt(self, model_id: str, messages: list[dict]):
        tokenizer = self.tokenizers[model_id]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")  # (1, T)

    def prompt_tokens(self, model_id: str, messages: list[dict]) -> int:
        return int(self._prompt(model_id, messages).shape[1])

    def _weights(self, personality: Personality):
        """(model, context to generate in) for a personality; called under the lock. The base of LoRA runs is the
        same model inside `disable_adapter()`, which turns every adapter off until the context is left."""
        if not personality.is_base:
            if self.adapters:
                self.model.set_adapter(personality.id)
            return self.model, nullcontext()
        if self.base_model is not None:
            return self.base_model, nullcontext()
        return self.model, self.model.disable_adapter()

    def stream(self, model_id: str, messages: list[dict], sampling: Sampling) -> Iterator[str | Reply]:
        personality = self.get(model_id)
        gen = GenerationSection(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                repetition_penalty=sampling.repetition_penalty, max_new_tokens=sampling.max_tokens)
        with self.lock:  # adapter choice (or adapters off, for the base) + generation are one step
            model, weights = self._weights(personality)
            prompt = self._prompt(model_id, messages)
            # Closing this generator closes the inner one first: generation stops (and the adapters are back on)
            # before the lock is released.
            with weights:
                yield from transformers_stream(model, self.tokenizers[model_id], prompt, gen, sampling.seed,
                                               sampling.timeout_s, personality.stops)


def base_of(ref) -> str:
    """The base model a run (LoRA or full) or a merged folder was trained from; S014 when it is not known."""
    base = ref.base_path
    summary = ref.path / MERGE_SUMMARY
    if not base and ref.kind == "merged" and summary.is_file():
        base = json.loads(summary.read_text(encoding="utf-8")).get("base")
    if not base:
        raise AfinarError("S014", "no se sabe de qué modelo base viene este modelo: --con-base no puede compararlo.",
                          where=str(ref.path),
                          hint="sirve la ejecución (RUN) en lugar de una copia sin su afinar_merge.json, o quita --con-base")
    return str(base)


def sampling_kwargs(gen: GenerationSection) -> dict:
    kwargs = {"max_new_tokens": gen.max_new_tokens, "repetition_penalty": gen.repetition_penalty}
    if gen.temperature <= 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None)
    return kwargs


def transformers_stream(model, tokenizer, prompt, gen: GenerationSection, seed: int | None = None,
                        timeout_s: float | None = None, stops: Stops | None = None) -> Iterator[str | Reply]:
    """One assistant turn with `model.generate`, streamed; `prompt` is (1, T) token ids. The answer ends at any of
    the chat format's stop ids, or where a stop string appears in its text (the text is cut there; `stops`: the
    tokenizer's own, when not given). If the consumer stops iterating, generation is stopped and waited for before
    this generator closes."""
    import queue

    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    stops = stops or stops_of(tokenizer)
    prompt = prompt.to(model.device)
    produced: queue.Queue = queue.Queue()
    finished = object()
    result: dict = {}
    cancel = threading.Event()

    class TokenStreamer(BaseStreamer):
        """generate's tokens, one id at a time, into the queue (the first call is the prompt)."""

        def __init__(self):
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                produced.put(token)

        def end(self):
            produced.put(finished)

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

    def run():
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                model.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), eos_token_id=sorted(stops.ids),
                    pad_token_id=tokenizer.pad_token_id, streamer=TokenStreamer(), max_time=timeout_s,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]), **sampling_kwargs(gen))
        except BaseException as exc:  # noqa: BLE001 — re-raised in the caller's thread
            result["error"] = exc
            produced.put(finished)

    def token_ids():
        """The answer's ids; returns True at a stop id (`stream_reply` reads that as "stopped")."""
        try:
            while (token := produced.get()) is not finished:
                if token in stops.ids:
                    return True
                yield token
            return False
        finally:
            cancel.set()  # a stop string ended the answer, or the consumer left: generation stops at its next step

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    reply = None
    try:
        for item in stream_reply(token_ids(), decode, int(prompt.shape[1]), stops.strings):
            if isinstance(item, Reply):
                reply = item
            else:
                yield item
    finally:
        cancel.set()
        worker.join()
    if "error" in result:
        raise result["error"]
    yield reply
