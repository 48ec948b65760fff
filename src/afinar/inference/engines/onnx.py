"""The onnxruntime engine: an ONNX export folder (onnx/model.onnx or onnx/model_quantized.onnx), loaded as
Transformers.js would load it, decoded by `sampling.generate` (the loop the export checks also run).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from afinar import extras
from afinar.data.chat_format import stops_of
from afinar.inference.engines.base import Engine, Personality
from afinar.inference.onnx_runtime import FP32, ONNX_DIR, QUANTIZED, OnnxCausalLM
from afinar.inference.sampling import Reply, Sampling, generate
from afinar.models import load_tokenizer


class OnnxEngine(Engine):
    """An ONNX export folder (onnx/model.onnx or onnx/model_quantized.onnx), as Transformers.js would load it."""

    name = "onnxruntime"

    def __init__(self, folder: Path, personality: Personality, quantized: bool = True):
        extras.require("onnx")
        super().__init__([personality])
        # An export whose INT8 failed its check on the exporting CPU has only the fp32 graph (afinar_export.json says why).
        quantized = quantized and (folder / ONNX_DIR / QUANTIZED).is_file()
        graph = folder / ONNX_DIR / (QUANTIZED if quantized else FP32)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.model = OnnxCausalLM(graph, config)
        self.context = config.get("max_position_embeddings") or self.context
        self.tokenizer = load_tokenizer(folder)
        self.stops = stops_of(self.tokenizer, folder)  # the export's generation_config.json has the family's eos ids

    def _ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def prompt_tokens(self, model_id: str, messages: list[dict]) -> int:
        return len(self._ids(messages))

    def stream(self, model_id: str, messages: list[dict], sampling: Sampling) -> Iterator[str | Reply]:
        self.get(model_id)

        def decode(ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

        with self.lock:
            yield from generate(self.model.stepper(), self._ids(messages), set(self.stops.ids), sampling, decode,
                                self.stops.strings)
