"""The shipped recipes' headers name the exact lines that switch each to its guide's base model (TinyLlama-Chat,
Qwen2.5-Instruct, Llama-3.2 Instruct and base, phi-2). Each variant is read from the header, applied, and trained
one step on a tiny stand-in of that base (tests/families.py), so a header that names a wrong key, a template the
base cannot use or LoRA modules the architecture does not have fails here."""
import re
from pathlib import Path

import pytest
import yaml

from afinar.config import apply_overrides, load_recipe

RECIPES = Path(__file__).parent.parent.parent / "recipes"
GUIDES = ("enfermeria", "epicrisis", "ciencias", "tutor_algoritmos")
# The guides' bases and the tiny family that stands in for each (and its vocabulary: a real one for byte-level BPE).
STAND_INS = {
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": ("tinyllama", "tiny"),
    "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2", "smollm2"),
    "meta-llama/Llama-3.2-1B-Instruct": ("llama3", "smollm2"),
    "meta-llama/Llama-3.2-1B": ("llama3-base", "smollm2"),
    "microsoft/phi-2": ("phi2", "smollm2"),
}
_LINE = re.compile(r"^#   ([a-z_]+\.[a-z_]+): (.+)$")


def header_variants(path: Path) -> list[dict]:
    """Each run of `#   section.key: value` lines in the recipe's header comment is one variant."""
    variants, current = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = _LINE.match(line)
        if match:
            current[match.group(1)] = yaml.safe_load(match.group(2))
        elif current:
            variants.append(current)
            current = {}
    return variants + ([current] if current else [])


def test_every_guide_recipe_documents_its_guides_base():
    found = {name: [v["model.base"] for v in header_variants(RECIPES / f"{name}.yaml")] for name in GUIDES}
    assert found == {
        "enfermeria": ["TinyLlama/TinyLlama-1.1B-Chat-v1.0"],
        "epicrisis": ["Qwen/Qwen2.5-1.5B-Instruct"],
        "ciencias": ["meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B"],
        "tutor_algoritmos": ["microsoft/phi-2"],
    }


@pytest.mark.slow
@pytest.mark.parametrize(("name", "index"), [(n, i) for n in GUIDES for i in range(len(header_variants(RECIPES / f"{n}.yaml")))])
def test_each_variant_trains_on_a_stand_in(name, index, tmp_path):
    import json

    from afinar.train import train
    from tests.families import save_family_base

    variant = header_variants(RECIPES / f"{name}.yaml")[index]
    family, vocab = STAND_INS[variant["model.base"]]
    recipe = apply_overrides(load_recipe(RECIPES / f"{name}.yaml"), variant)  # the header's lines, validated
    assert recipe.model.quantization == "4bit"  # as the guides; the stand-in trains in fp32 (QLoRA on CPU: test_qlora_cpu.py)
    base = save_family_base(family, tmp_path / family, vocab=vocab)
    # (The stand-ins say 512 positions; their rope goes past that, and the recipes' examples do.)
    recipe = apply_overrides(recipe, {"model.base": str(base), "model.quantization": "none", "train.max_steps": 1,
                                      "train.precision": "fp32", "output_dir": str(tmp_path / "run"),
                                      "data.val_fraction": 0.0})
    run = train(recipe, progress=False)
    info = json.loads((run / "afinar_run.json").read_text(encoding="utf-8"))
    assert info["steps"] == 1
    assert info["chat_template"]["name"] == variant.get("data.template", "auto")
