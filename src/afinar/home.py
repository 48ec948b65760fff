"""afinar's own folder for caches (converted bases, llama.cpp's converter, verified downloads, the judge's answers)."""
from __future__ import annotations

import os
from pathlib import Path


def afinar_home() -> Path:
    """`$AFINAR_HOME`, else `~/.cache/afinar`."""
    return Path(os.environ.get("AFINAR_HOME") or Path.home() / ".cache" / "afinar")
