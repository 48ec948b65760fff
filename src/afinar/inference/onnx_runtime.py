"""Running an ONNX export with nothing but onnxruntime: the decoder `afinar chat`/`serve` use (engines/onnx.py) and
the export checks run (export/onnx.py).

The graph is optimum's `text-generation-with-past` (inputs: ids, attention mask, positions and the key/value cache of
every layer; outputs: logits and the new cache), in the folder layout Transformers.js loads.
"""
from __future__ import annotations

from pathlib import Path

ONNX_DIR = "onnx"  # inside an ONNX export folder, beside config.json and the tokenizer
FP32 = "model.onnx"  # the name Transformers.js loads for dtype "fp32"
QUANTIZED = "model_quantized.onnx"  # the name Transformers.js loads for dtype "q8"


class OnnxCausalLM:
    """A decoder over an optimum `text-generation-with-past` graph, with nothing but onnxruntime."""

    def __init__(self, path: Path, config: dict):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or heads
        self.head_dim = config.get("head_dim") or config["hidden_size"] // heads
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]

    def _feed(self, ids: list[int], past: dict | None, start: int):
        import numpy as np

        n = len(ids)
        feed = {"input_ids": np.array([ids], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, start + n), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(start, start + n, dtype=np.int64)[None]
        for name in self.past_names:
            dtype = np.float16 if "float16" in self.inputs[name].type else np.float32
            feed[name] = past[name] if past else np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=dtype)
        out = dict(zip(self.outputs, self.session.run(None, feed)))
        present = {n.replace("present.", "past_key_values.", 1): v for n, v in out.items() if n.startswith("present.")}
        return out["logits"][0], present  # logits: (n, V)

    def logits(self, ids: list[int]):
        return self._feed(ids, None, 0)[0]

    def stepper(self):
        """A fresh `step(new_ids) -> last logits` for `sampling.sample_tokens`, carrying the key/value cache."""
        state = {"past": None, "position": 0}

        def step(ids: list[int]):
            logits, state["past"] = self._feed(ids, state["past"], state["position"])
            state["position"] += len(ids)
            return logits[-1]

        return step
