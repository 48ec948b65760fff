"""What a safetensors folder holds, read from the file headers only (no weights loaded)."""
from __future__ import annotations

import math
from pathlib import Path


def tensor_shapes(model_dir: Path) -> list[list[int]]:
    from safetensors import safe_open

    shapes = []
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            shapes += [f.get_slice(key).get_shape() for key in f.keys()]  # noqa: SIM118 — safe_open is not a dict
    return shapes


def parameter_count(model_dir: Path) -> int:
    return sum(math.prod(shape) for shape in tensor_shapes(model_dir))
