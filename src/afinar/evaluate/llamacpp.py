"""`afinar eval`'s answers through llama.cpp, the fastest engine afinar has on a CPU.

The base and the tuned model are converted to GGUF f16 with llama.cpp's own converter (the base once, cached by its
files; the tuned model, the adapter merged in memory, once per evaluation) and each answers every question of every
pass, one model loaded at a time, all its answers of a pass decoded together (`LlamaCppEngine.answer_many`: one
batch per token for every unfinished answer, each in its own sequence and cache). The prompt is the run's own
tokenizer's (the ids transformers gets) and each token is chosen by transformers' rule (`sampling.pick`: the
repetition penalty over every token of the prompt and of the answer so far), so a greedy answer is the transformers
answer up to the rounding of f16 weights (tests/unit/test_eval.py) and decoded together it is the answer decoded
alone (tests/unit/test_engines.py). bench/eval_generation.py on the embedded base with AVX2 kernels, 10 greedy answers
in one run: together 198 tokens/s, one at a time 103, transformers' batched generation (fp32) 56; identical to
transformers one at a time: 9 and 8 of 10. q8_0 was faster one at a time (119) but changed all 10 answers.

QLoRA runs keep transformers: their base is the NF4 weights dequantized, not the base's files.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from afinar import extras
from afinar.atomic import atomic_write_text
from afinar.errors import AfinarError
from afinar.export import gguf
from afinar.home import afinar_home
from afinar.inference.engines.base import Personality
from afinar.inference.engines.llamacpp import LlamaCppEngine
from afinar.inference.sampling import Reply, Sampling
from afinar.tokenizer_files import save_tokenizer
from afinar.training import save_full_model

ENGINES = ("auto", "transformers", "llama.cpp")
NOT_CONVERTIBLE = {"X022", "X023", "X024"}  # the converter refuses the architecture or the pre-tokenizer, or fails
SIDES = ("base", "tuned")
UNUSED_CONTEXT = 256  # tokens of the engine's own llama.cpp context, which the evaluation does not use


def choose_engine(requested: str, ref) -> str:
    """"llama.cpp" or "transformers" for this run: `auto` takes llama.cpp when it is installed and can serve the run."""
    if requested not in ENGINES:
        raise AfinarError("V006", f"motor desconocido '{requested}'", hint=f"usa uno de: {', '.join(ENGINES)}")
    if requested == "transformers":
        return "transformers"
    if ref.qlora:
        if requested == "llama.cpp":
            raise AfinarError("V006", "una ejecución QLoRA se evalúa con transformers: su base es la de 4 bits "
                              "descuantizada, no los archivos del modelo base.", hint="usa --motor auto")
        return "transformers"
    if not extras.available("llamacpp"):
        if requested == "llama.cpp":
            raise extras.missing_error("llamacpp", where="afinar eval --motor llama.cpp")
        return "transformers"
    return "llama.cpp"


def _cache_key(base_path: Path) -> str:
    """The base's files (names, sizes, times) and the converter's version: a changed base converts again."""
    files = sorted(p for p in base_path.iterdir() if p.suffix in (".safetensors", ".json", ".model", ".jinja"))
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    text = json.dumps([str(base_path.resolve()), stamp, gguf.llama_cpp_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_gguf(base_path: str | Path) -> Path:
    """The base as GGUF f16, converted once into ~/.cache/afinar/evaluacion/gguf (renamed into place when whole),
    with a note of the folder it came from: a conversion whose folder is gone is deleted (`_forget_gone_bases`)."""
    base_path = Path(base_path)
    folder = afinar_home() / "evaluacion" / "gguf"
    target = folder / f"{base_path.name}-{_cache_key(base_path)}-f16.gguf"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _forget_gone_bases(folder)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            gguf.convert(base_path, partial, progress=False)
            atomic_write_text(_source_note(target), json.dumps({"source": str(base_path.resolve())}))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _source_note(converted: Path) -> Path:
    return converted.with_name(converted.name + ".json")


def _forget_gone_bases(folder: Path) -> None:
    """Delete the conversions of bases whose folder no longer exists (a model deleted, a test's temporary base):
    each is the size of the base in f16, 0.3 GB for the embedded one, 2 GB for a 1B."""
    for note in folder.glob("*.gguf.json"):
        try:
            source = Path(json.loads(note.read_text(encoding="utf-8"))["source"])
        except (OSError, ValueError, KeyError):
            continue
        if not source.exists():
            note.with_suffix("").unlink(missing_ok=True)
            note.unlink(missing_ok=True)


def tuned_gguf(model, tokenizer, eos_token_ids: list[int], out_file: Path) -> Path:
    """The tuned model as GGUF f16: a LoRA/DoRA adapter merged into its base in memory (the PEFT model is merged
    in place: nothing after the answers needs it), saved with the run's tokenizer and converted."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    with tempfile.TemporaryDirectory(prefix="afinar-eval-") as folder:
        save_full_model(merged, Path(folder), tokenizer, eos_token_ids)
        save_tokenizer(tokenizer, folder)  # as `afinar merge` saves it: the chat template in tokenizer_config too
        return gguf.convert(Path(folder), out_file, progress=False)


def prompt_ids(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Each conversation as the run's own tokenizer writes it for an answer: the ids transformers gets."""
    return [tokenizer(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)["input_ids"] for p in prompts]


def answer_all(files: dict[str, Path], tokenizer, prompts: list[list[dict]], settings: dict, seed: int, stops,
               on_answer=None) -> dict[str, list[Reply]]:
    """pass → replies [base, tuned] × prompt (the order `afinar eval` reads), one model loaded at a time."""
    ids = prompt_ids(tokenizer, prompts)
    by_side: dict[str, dict[str, list[Reply]]] = {}
    for side in SIDES:
        first = next(iter(settings.values()))
        personality = Personality(side, files[side], None, first, stops=stops)
        # answer_many decodes in contexts of its own, sized for its answers: the engine's own is never used.
        engine = LlamaCppEngine(files[side], personality, n_ctx=UNUSED_CONTEXT)
        by_side[side] = {}
        for name, gen in settings.items():
            samplings = [Sampling.from_generation(gen, seed=None if gen.temperature == 0 else seed + k)
                         for k in range(len(ids))]
            by_side[side][name] = engine.answer_many(side, ids, samplings, on_answer)
        engine.llm.close()
    return {name: [r for pair in zip(by_side["base"][name], by_side["tuned"][name]) for r in pair]
            for name in settings}
