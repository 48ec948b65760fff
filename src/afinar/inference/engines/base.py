"""What every engine shares: the `Engine` interface, the personalities it serves and how a run folder becomes one.

Kept apart from `__init__.py` so that each runtime's module (transformers.py, llamacpp.py, onnx.py) can import it
while `__init__.py` imports them.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from afinar.config import GenerationSection
from afinar.data.chat_format import Stops, stops_of
from afinar.errors import AfinarError
from afinar.inference.sampling import Reply, Sampling
from afinar.models import load_tokenizer
from afinar.runs import ModelRef


@dataclass
class Personality:
    id: str
    path: Path
    system_prompt: str | None
    generation: GenerationSection
    report: Path | None = None  # the run's evaluation report, linked from the web page
    extra: dict = field(default_factory=dict)
    stops: Stops | None = None  # the run's chat format's stops (None: the runtime's own eos)
    is_base: bool = False  # the base model the runs were trained from (`afinar serve --con-base`)


def personality_id(path: Path, recipe_name: str | None) -> str:
    return (recipe_name or path.name).replace("_", "-")


def personality_of(ref: ModelRef, tokenizer=None) -> Personality:
    """A run or merged folder as a personality: its recipe's name, system prompt, generation settings, report and
    stops (`tokenizer`: the folder's, when the caller has already loaded it)."""
    return Personality(personality_id(ref.path, ref.recipe.name if ref.recipe else None), ref.path, ref.system_prompt,
                       ref.generation, ref.eval_report, stops=stops_of(tokenizer or load_tokenizer(ref.path), ref.path))


BASE_ID = "base"


def base_personality_id(taken) -> str:
    """`base`, or, when a run is itself called so, `base-original` (then `base-original-2`, …)."""
    if BASE_ID not in taken:
        return BASE_ID
    candidate, n = f"{BASE_ID}-original", 2
    while candidate in taken:
        candidate, n = f"{BASE_ID}-original-{n}", n + 1
    return candidate


def base_personality(first: Personality, base_path: str | Path, taken) -> Personality:
    """The base model as a personality beside the runs: the first run's system prompt, generation settings and
    stops (its chat format too: the engine prompts it with the first run's tokenizer), so that a comparison
    changes nothing but the weights."""
    return Personality(base_personality_id(taken), Path(base_path), first.system_prompt, first.generation,
                       stops=first.stops, is_base=True)


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
