"""Transformers.js in Node, the way the epicrisis guide's web app loads an afinar export.

`@huggingface/transformers` is installed once with `npm install --ignore-scripts` (onnxruntime-node's install script
fetches GPU binaries from a host outside npm; its CPU binary ships inside the npm package) into a cache folder
outside the repository. Without node/npm, or without access to the npm registry, tests are skipped saying why."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

VERSION = "4.3.2"  # @huggingface/transformers, pinned so every machine runs the same loader
SCRIPT = Path(__file__).with_name("generate.mjs")


def cache_dir() -> Path:
    root = os.environ.get("AFINAR_NODE_CACHE") or Path.home() / ".cache" / "afinar" / "node"
    return Path(root) / f"transformers-js-{VERSION}"


def install() -> Path:
    """The cache folder with Transformers.js installed (once), or a skip that names what is missing."""
    from afinar.atomic import atomic_dir

    for tool, package in (("node", "nodejs"), ("npm", "npm")):
        if shutil.which(tool) is None:
            pytest.skip(f"falta '{tool}' (paquete de Debian '{package}'): se omite la prueba con Transformers.js")
    folder = cache_dir()
    if (folder / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file():
        return folder
    with atomic_dir(folder, overwrite=True) as tmp:
        try:
            done = subprocess.run(
                ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--fetch-retries=1",
                 "--prefix", str(tmp), f"@huggingface/transformers@{VERSION}"],
                capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip("npm no terminó de instalar @huggingface/transformers en 10 min (¿sin acceso al registro de npm?)")
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(sin mensaje)"])[-1]
            pytest.skip(f"npm no pudo instalar @huggingface/transformers@{VERSION} (¿sin acceso al registro de npm?): {last}")
    return folder


def generate(export_dir: Path, dtype: str, messages: list[dict], max_new_tokens: int,
             repetition_penalty: float = 1.0) -> dict:
    """Greedy chat with Transformers.js: {prompt_ids, ids, eos, text, ended_with_eos}."""
    folder = install()
    script = folder / SCRIPT.name  # next to node_modules, so the import resolves
    shutil.copyfile(SCRIPT, script)
    done = subprocess.run(
        ["node", str(script), str(export_dir), dtype, str(max_new_tokens), str(repetition_penalty)],
        input=json.dumps(messages), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"Transformers.js falló con {export_dir} ({dtype}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
