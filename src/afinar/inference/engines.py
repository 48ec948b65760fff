"""One small interface over three runtimes: transformers (base + adapters, or merged), llama.cpp (a GGUF export) and
onnxruntime (an ONNX export). `afinar chat` and `afinar serve` use it.

An engine holds one or more *personalities* (model ids). In transformers, several runs on the same base are several
LoRA adapters on one loaded model (PEFT `load_adapter` / `set_adapter`); the engine's lock makes a request's adapter
choice and its generation one step, so concurrent requests to different personalities never mix.

`stream(model_id, messages, sampling)` yields text pieces as they are produced and ends with a `Reply`.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from afinar.config import GenerationSection
from afinar.errors import AfinarError, install_hint

ENGINES = ("auto", "transformers", "llama.cpp", "onnxruntime")


@dataclass
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.1
    max_tokens: int = 256
    seed: int | None = None
    timeout_s: float | None = None  # stop generating after this long (the answer is then cut, stopped=False)

    @classmethod
    def from_generation(cls, gen: GenerationSection, **overrides) -> Sampling:
        base = cls(gen.temperature, gen.top_p, gen.top_k, gen.repetition_penalty, gen.max_new_tokens)
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        return base


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    stopped: bool  # the model ended its turn by itself (False: cut by max_tokens)


@dataclass
class Personality:
    id: str
    path: Path
    system_prompt: str | None
    generation: GenerationSection
    report: Path | None = None  # the run's evaluation report, linked from the web page
    extra: dict = field(default_factory=dict)


def personality_id(path: Path, recipe_name: str | None) -> str:
    return (recipe_name or path.name).replace("_", "-")


class Engine:
    name = "?"
    context = 2048  # tokens the model can attend to; chat forgets old turns to stay inside it

    def __init__(self, personalities: list[Personality]):
        self.personalities = {p.id: p for p in personalities}
        self.lock = threading.Lock()

    def get(self, model_id: str) -> Personality:
        try:
            return self.personalities[model_id]
        except KeyError:
            raise AfinarError("S010", f"modelo desconocido: {model_id!r}",
                              hint="modelos: " + ", ".join(self.personalities)) from None

    def prompt_tokens(self, model_id: str, messages: list[dict]) -> int:
        raise NotImplementedError

    def stream(self, model_id: str, messages: list[dict], sampling: Sampling) -> Iterator[str | Reply]:
        raise NotImplementedError

    def complete(self, model_id: str, messages: list[dict], sampling: Sampling) -> Reply:
        for item in self.stream(model_id, messages, sampling):
            if isinstance(item, Reply):
                return item
        raise RuntimeError("el motor terminó sin respuesta")


class _Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character."""

    def __init__(self, decode):
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


# --- transformers ------------------------------------------------------------------------------------------------


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, refs: list, dtype=None):
        import torch

        from afinar.models import load_model, load_tokenizer

        personalities = [_personality(ref) for ref in refs]
        super().__init__(personalities)
        runs = [r for r in refs if not r.standalone]
        merged = [r for r in refs if r.standalone]
        if runs and merged or len(merged) > 1:
            raise AfinarError("S011", "un servidor transformers sirve o varias ejecuciones sobre la misma base, o un solo "
                                      "modelo fusionado.", hint="lanza un `afinar serve` por modelo fusionado")
        bases = {r.base_path for r in runs}
        if len(bases) > 1:
            raise AfinarError("S011", "las personalidades deben compartir el modelo base: " + ", ".join(sorted(map(str, bases))))
        self.tokenizers = {p.id: load_tokenizer(str(ref.path)) for p, ref in zip(personalities, refs)}
        if merged:
            self.model = load_model(str(merged[0].path), dtype=dtype or torch.float32)
            self.adapters = False
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

    def stream(self, model_id: str, messages: list[dict], sampling: Sampling) -> Iterator[str | Reply]:
        self.get(model_id)
        gen = GenerationSection(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                repetition_penalty=sampling.repetition_penalty, max_new_tokens=sampling.max_tokens)
        with self.lock:  # adapter choice + generation are one step
            if self.adapters:
                self.model.set_adapter(model_id)
            # Closing this generator closes the inner one first: generation stops before the lock is released.
            yield from transformers_stream(self.model, self.tokenizers[model_id], self._prompt(model_id, messages), gen,
                                           sampling.seed, sampling.timeout_s)


def sampling_kwargs(gen: GenerationSection) -> dict:
    kwargs = {"max_new_tokens": gen.max_new_tokens, "repetition_penalty": gen.repetition_penalty}
    if gen.temperature <= 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None)
    return kwargs


def transformers_stream(model, tokenizer, prompt, gen: GenerationSection, seed: int | None = None,
                        timeout_s: float | None = None) -> Iterator[str | Reply]:
    """One assistant turn with `model.generate`, streamed; `prompt` is (1, T) token ids. If the consumer stops
    iterating, generation is stopped and waited for before this generator closes."""
    import torch
    from transformers import (
        StoppingCriteria,
        StoppingCriteriaList,
        TextIteratorStreamer,
    )

    prompt = prompt.to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}
    cancel = threading.Event()

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

    def run():
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                result["ids"] = model.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, streamer=streamer, max_time=timeout_s,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]), **sampling_kwargs(gen))
        except BaseException as exc:  # noqa: BLE001 — re-raised in the caller's thread
            result["error"] = exc
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        cancel.set()
        worker.join()
    if "error" in result:
        raise result["error"]
    new = result["ids"][0, prompt.shape[1]:].tolist()
    stopped = bool(new) and new[-1] == tokenizer.eos_token_id
    yield Reply(tokenizer.decode(new, skip_special_tokens=True).strip(), int(prompt.shape[1]), len(new), stopped)


# --- sampling shared by the llama.cpp and onnxruntime loops -------------------------------------------------------


def pick(logits, seen: set[int], sampling: Sampling, rng) -> int:
    """transformers' order: repetition penalty, temperature, top-k, top-p, then a draw (argmax at temperature 0)."""
    import numpy as np

    # The penalty in float32, as transformers applies it to float32 logits: the same argmax on near-ties.
    scores = np.array(logits, dtype=np.float32)
    if sampling.repetition_penalty != 1.0 and seen:
        index = list(seen)
        chosen = scores[index]
        scores[index] = np.where(chosen < 0, chosen * sampling.repetition_penalty, chosen / sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(scores.argmax())
    scores = scores.astype(np.float64) / sampling.temperature
    if sampling.top_k and sampling.top_k < scores.size:
        kth = np.partition(scores, -sampling.top_k)[-sampling.top_k]
        scores[scores < kth] = -np.inf
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def _loop(step, prompt_ids: list[int], eos: set[int], sampling: Sampling, decode) -> Iterator[str | Reply]:
    import time

    import numpy as np

    deadline = time.monotonic() + sampling.timeout_s if sampling.timeout_s else None
    rng = np.random.default_rng(sampling.seed)
    detok = _Detokenizer(decode)
    logits = step(list(prompt_ids))
    seen = set(prompt_ids)
    count = 0
    stopped = False
    while count < sampling.max_tokens and (deadline is None or time.monotonic() < deadline):
        token = pick(logits, seen, sampling, rng)
        if token in eos:
            stopped = True
            break
        count += 1
        seen.add(token)
        piece = detok.push(token)
        if piece:
            yield piece
        logits = step([token])
    yield Reply(decode(detok.ids).strip(), len(prompt_ids), count, stopped)


# --- llama.cpp ----------------------------------------------------------------------------------------------------


class LlamaCppEngine(Engine):
    """A GGUF export (gguf/<name>-<quant>.gguf). The chat template and eos come from the file's own metadata."""

    name = "llama.cpp"

    def __init__(self, gguf_path: Path, personality: Personality, n_ctx: int = 4096):
        import os

        try:
            import llama_cpp
        except ImportError:
            raise AfinarError("X020", "falta llama-cpp-python para servir un GGUF.", hint=install_hint("llamacpp")) from None
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        super().__init__([personality])
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=os.cpu_count() or 1, verbose=False)
        self.context = self.llm.n_ctx()
        meta = self.llm.metadata
        self.eos = {int(meta.get("tokenizer.ggml.eos_token_id", self.llm.token_eos()))}
        # Rendered the way transformers renders chat templates (same Jinja settings and variables).
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(meta.get("tokenizer.chat_template") or "")
        self.special = {name: self.llm.detokenize([int(meta[key])], special=True).decode("utf-8", "replace")
                        for name, key in (("bos_token", "tokenizer.ggml.bos_token_id"),
                                          ("eos_token", "tokenizer.ggml.eos_token_id")) if key in meta}

    def _ids(self, messages: list[dict]) -> list[int]:
        text = self.template.render(messages=messages, add_generation_prompt=True, **self.special)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, model_id: str, messages: list[dict]) -> int:
        return len(self._ids(messages))

    def stream(self, model_id: str, messages: list[dict], sampling: Sampling) -> Iterator[str | Reply]:
        """llama.cpp's own sampler chain (penalty over its last 64 tokens, as in Ollama), no Python per-token math."""
        import random
        import time

        self.get(model_id)
        llm, vocab = self.llm, self.llm._model.vocab
        ids = self._ids(messages)
        deadline = time.monotonic() + sampling.timeout_s if sampling.timeout_s else None
        detok = _Detokenizer(lambda t: llm.detokenize(t, special=False).decode("utf-8", "replace"))
        stopped = False
        with self.lock:
            llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
            tokens = llm.generate(ids, top_k=sampling.top_k if sampling.temperature > 0 else 1, top_p=sampling.top_p,
                                  min_p=0.0, temp=sampling.temperature, repeat_penalty=sampling.repetition_penalty,
                                  reset=True)
            for token in tokens:
                if token in self.eos or self.llama_cpp.llama_vocab_is_eog(vocab, token):
                    stopped = True
                    break
                piece = detok.push(token)
                if piece:
                    yield piece
                if len(detok.ids) >= sampling.max_tokens or (deadline and time.monotonic() > deadline):
                    break
            tokens.close()
        yield Reply(detok.decode(detok.ids).strip(), len(ids), len(detok.ids), stopped)


# --- onnxruntime --------------------------------------------------------------------------------------------------


class OnnxEngine(Engine):
    """An ONNX export folder (onnx/model.onnx or onnx/model_quantized.onnx), as Transformers.js would load it."""

    name = "onnxruntime"

    def __init__(self, folder: Path, personality: Personality, quantized: bool = True):
        import json

        from afinar.export.onnx import QUANTIZED, OnnxCausalLM, require_optimum
        from afinar.models import load_tokenizer

        require_optimum()
        super().__init__([personality])
        # An export whose INT8 failed its check on the exporting CPU has only the fp32 graph (afinar_export.json says why).
        quantized = quantized and (folder / "onnx" / QUANTIZED).is_file()
        graph = folder / "onnx" / (QUANTIZED if quantized else "model.onnx")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.model = OnnxCausalLM(graph, config)
        self.context = config.get("max_position_embeddings") or self.context
        self.tokenizer = load_tokenizer(folder)
        self.eos = {self.tokenizer.eos_token_id}

    def _ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def prompt_tokens(self, model_id: str, messages: list[dict]) -> int:
        return len(self._ids(messages))

    def stream(self, model_id: str, messages: list[dict], sampling: Sampling) -> Iterator[str | Reply]:
        self.get(model_id)

        def decode(ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

        with self.lock:
            yield from _loop(self.model.stepper(), self._ids(messages), self.eos, sampling, decode)


# --- choosing -----------------------------------------------------------------------------------------------------


def _personality(ref) -> Personality:
    report = ref.path / "informe" / "index.html"
    return Personality(personality_id(ref.path, ref.recipe.name if ref.recipe else None), ref.path, ref.system_prompt,
                       ref.generation, report if report.is_file() else None)


def _export_parts(path: Path):
    """(kind, file or folder, run ref or None) for an export folder, a GGUF in it or its ONNX folder; else None."""
    import json

    from afinar.runs import open_ref

    def summary_in(folder: Path) -> dict:
        summary = folder / "afinar_export.json"
        return json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {}

    def run_of(summary: dict):
        return open_ref(summary["run"]) if summary.get("run") else None

    if path.is_file() and path.suffix == ".gguf":  # RUN/export/gguf/x.gguf
        return "gguf", path, run_of(summary_in(path.parent.parent))
    if (path / "onnx" / "model.onnx").is_file():  # RUN/export/onnx
        return "onnx", path, run_of(summary_in(path.parent))
    exports = (summary := summary_in(path)).get("exports", {})
    ggufs = [k for k in exports if k.startswith("gguf-")]
    if ggufs:
        best = "gguf-q8_0" if "gguf-q8_0" in ggufs else ggufs[0]
        return "gguf", path / exports[best]["ruta"], run_of(summary)
    if "onnx" in exports:
        return "onnx", path / exports["onnx"]["ruta"], run_of(summary)
    return None


def load_engine(sources: list[str | Path], engine: str = "auto") -> Engine:
    """Runs and merged folders → transformers; a GGUF file or export → llama.cpp; an ONNX export → onnxruntime."""
    from afinar.runs import open_ref

    if engine not in ENGINES:
        raise AfinarError("S012", f"motor desconocido: {engine}", hint="opciones: " + ", ".join(ENGINES))
    paths = [Path(s) for s in sources]
    exports = [_export_parts(p) for p in paths]
    if any(exports) and engine in ("auto", "llama.cpp", "onnxruntime"):
        if len(paths) > 1:
            raise AfinarError("S011", "un GGUF o un ONNX lleva un solo modelo: sirve varias personalidades con sus "
                                      "ejecuciones (adaptadores sobre una base) y el motor transformers.")
        kind, path, ref = exports[0]
        personality = (_personality(ref) if ref else
                       Personality(personality_id(path, None), path, None, GenerationSection()))
        if kind == "gguf" and engine in ("auto", "llama.cpp"):
            return LlamaCppEngine(path, personality)
        if kind == "onnx" and engine in ("auto", "onnxruntime"):
            return OnnxEngine(path, personality)
        raise AfinarError("S012", f"el motor {engine} no sirve una exportación {kind}.")
    if engine not in ("auto", "transformers"):
        raise AfinarError("S012", f"el motor {engine} necesita una exportación ({'gguf' if engine == 'llama.cpp' else 'onnx'}).",
                          hint="exporta antes con afinar export RUN --formato gguf|onnx")
    return TransformersEngine([open_ref(p) for p in paths])
