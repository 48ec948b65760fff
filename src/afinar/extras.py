"""afinar's optional extras (pyproject's `[project.optional-dependencies]`): whether one is installed, and the one
error a command raises when it needs an extra that is missing.

Each extra has one code and one message wherever it is needed (exporting, checking or serving), and the exact line
to install it (`errors.install_hint`). The check finds the packages without importing them (`find_spec`), so asking
costs nothing; the answer is cached for the process.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache

from afinar.errors import AfinarError, install_hint


@dataclass(frozen=True)
class Extra:
    modules: tuple[str, ...]  # all must be importable
    code: str
    message: str
    note: str = ""  # added to the install line
    make_test: bool = True  # `make test` installs it


EXTRAS = {
    "llamacpp": Extra(("llama_cpp",), "X020",
                      "falta llama-cpp-python, necesario para convertir, cuantizar, comprobar y servir un GGUF.",
                      note=", que compila llama.cpp: unos minutos la primera vez"),
    "onnx": Extra(("onnxruntime", "optimum.exporters.onnx"), "X030",
                  "faltan optimum-onnx y onnxruntime para exportar a ONNX y servirlo."),
    "qlora": Extra(("bitsandbytes",), "H004",
                   "QLoRA 4-bit (model.quantization: 4bit) necesita bitsandbytes (≥ 0.49 en CPU), que no está instalado.",
                   note="; o quita 'quantization: 4bit' para entrenar LoRA normal"),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the module was blocked (sys.modules: None)
        return False


@cache
def available(extra: str) -> bool:
    """The extra's packages are installed (found, not imported)."""
    return all(_importable(module) for module in EXTRAS[extra].modules)


def missing_error(extra: str, where: str | None = None) -> AfinarError:
    """The extra's AfinarError: its code, its message and how to install it."""
    spec = EXTRAS[extra]
    return AfinarError(spec.code, spec.message, where=where, hint=install_hint(extra, spec.note, spec.make_test))


def require(extra: str) -> None:
    """Raise the extra's AfinarError unless it is installed."""
    if not available(extra):
        raise missing_error(extra)
