"""afinar/bases.py: the catalog of bases (`afinar plan --bases`, the studio's model step). The Hub shapes are the
published ones (parameter counts of the model cards), a local GGUF is planned from its metadata, and the table reads in
Spanish."""
from __future__ import annotations

import pytest

from afinar.config import recipe_from_dict

# Parameter counts as published (model cards / safetensors metadata): the hard-coded shapes must build these models.
PUBLISHED_PARAMETERS = {
    "HuggingFaceTB/SmolLM2-360M-Instruct": 361_821_120,
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1_100_048_384,
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "microsoft/phi-2": 2_779_683_840,
}


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))


def test_hub_shapes_are_the_published_models():
    from afinar.bases import HUB_BASES, _hub_config
    from afinar.planning.model_size import model_size

    assert {b.repo_id for b in HUB_BASES} == set(PUBLISHED_PARAMETERS)
    for entry in HUB_BASES:
        size = model_size(_hub_config(entry))
        assert size.parameters == PUBLISHED_PARAMETERS[entry.repo_id], entry.repo_id
        # the download is the bf16/fp16 weights: 2 bytes a parameter plus the safetensors headers
        assert 2 * size.parameters <= entry.download_bytes < 2 * size.parameters * 1.01, entry.repo_id
        assert entry.source
    assert [b.repo_id for b in HUB_BASES if b.gated] == ["meta-llama/Llama-3.2-1B-Instruct"]


def small_shape():
    from afinar.planning.estimate import DataShape

    return DataShape(rows=2, width=128, examples_per_row=1, labelled=120, tokens_per_step=400,
                     micro_batches_per_step=2, steps_per_epoch=10, total_steps=30, mean_example_tokens=100,
                     labelled_fraction=0.5, examples=20)


def test_catalog_with_a_local_gguf_and_an_ollama_model(tiny_recipe, tmp_path, monkeypatch):
    import afinar.bases as bases
    from afinar.models import embedded_gguf_path
    from afinar.planning.estimate import resolve_target

    folder = tmp_path / "modelos"
    folder.mkdir()
    (folder / "mio.gguf").symlink_to(embedded_gguf_path())
    (folder / "roto.gguf").write_bytes(b"no es un gguf")

    class Ollama:  # what ollama_store.list_models() returns
        name, gguf, size = "smollm2:135m", embedded_gguf_path(), embedded_gguf_path().stat().st_size

    monkeypatch.setattr(bases, "ollama_models", lambda: [Ollama()])
    tiny_recipe["model"]["base"] = "smollm2-135m"
    recipe = recipe_from_dict(tiny_recipe)
    target = resolve_target("cpu", recipe)
    choices = bases.candidate_bases(recipe, shape=small_shape(), target=target, include_hub=False, folders=[folder])
    by_key = {c.key: c for c in choices}
    assert list(by_key) == ["smollm2-135m", str(folder / "mio.gguf"), str(folder / "roto.gguf"), "ollama:smollm2:135m"]
    assert by_key["smollm2-135m"].current and by_key["smollm2-135m"].kind == "incluido"
    for key in ("smollm2-135m", str(folder / "mio.gguf"), "ollama:smollm2:135m"):
        c = by_key[key]
        assert c.verdict in ("cabe", "justo", "no cabe") and c.memory_bytes > 0 and c.step_seconds > 0
        assert c.parameters == by_key["smollm2-135m"].parameters  # the same model, three ways
        assert c.total_seconds == pytest.approx(c.step_seconds * 30)
    broken = by_key[str(folder / "roto.gguf")]
    assert broken.verdict is None and "no se pudo leer" in broken.note
    table = bases.render_table(choices, target.name)
    assert "Bases posibles" in table and "CABE" in table and "→ smollm2-135m" in table and "mio.gguf" in table


def test_hub_bases_are_planned_without_downloading(tiny_recipe, monkeypatch):
    import afinar.bases as bases
    from afinar.planning.estimate import GIB, Target

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(bases, "HUB_BASES", tuple(b for b in bases.HUB_BASES if "0.5B" in b.repo_id))
    monkeypatch.setattr(bases, "local_gguf_files", lambda folders=None: [])
    monkeypatch.setattr(bases, "ollama_models", lambda: [])
    tiny_recipe["model"]["base"] = "smollm2-135m"
    recipe = recipe_from_dict(tiny_recipe)
    small = Target("cpu", "esta CPU", "fp32", 4 * GIB, 3 * GIB, True)
    choices = {c.key: c for c in bases.candidate_bases(recipe, shape=small_shape(), target=small,
                                                       runtime_bytes=300 * 2**20)}
    assert list(choices) == ["smollm2-135m", "Qwen/Qwen2.5-0.5B-Instruct"]
    half = choices["Qwen/Qwen2.5-0.5B-Instruct"]
    assert half.kind == "hub" and half.download_bytes == 988_097_824 and half.parameters == 494_032_768
    assert half.verdict == "no cabe" and half.memory_bytes > 494e6 * 4  # its fp32 weights alone
    assert choices["smollm2-135m"].verdict == "cabe"
    assert choices["smollm2-135m"].step_seconds < half.step_seconds
