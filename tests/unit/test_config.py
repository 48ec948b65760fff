import importlib.resources
from pathlib import Path

import pytest

from afinar.config import Recipe, apply_overrides, load_recipe, recipe_from_dict
from afinar.errors import AfinarError

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "enfermeria.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_has_launch_command(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert f"afinar train recipes/{path.name}" in path.read_text(encoding="utf-8")
    for source in recipe.data.sources:
        assert Path(source.path).is_file(), source.path


def test_recipes_ship_inside_the_package():
    shipped = {p.name for p in importlib.resources.files("afinar.recipes").iterdir()}
    assert {p.name for p in RECIPES} <= shipped


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = "name: x\ndata:\n  sources:\n    - path: d.jsonl\n"


@pytest.mark.parametrize(
    "extra, typo, suggestion, line",
    [
        ("train:\n  max_step: 3\n", "train.max_step", "max_steps", 6),
        ("train:\n  epocs: 2\n", "train.epocs", "epochs", 6),
        ("lora:\n  rank: 8\n  alhpa: 4\n", "lora.alhpa", "alpha", 7),
        ("modle:\n  base: x\n", "modle", "model", 5),
    ],
)
def test_typo_names_key_line_and_nearest(tmp_path, extra, typo, suggestion, line):
    with pytest.raises(AfinarError) as err:
        load_recipe(write(tmp_path, BASE + extra))
    text = err.value.render()
    assert err.value.code == "R001"
    assert f"R002: clave desconocida '{typo}'" in text
    assert f"¿quisiste decir '{suggestion}'?" in text
    assert f"r.yaml:{line}:" in text


def test_wrong_type_and_range_are_reported_in_spanish(tmp_path):
    with pytest.raises(AfinarError) as err:
        load_recipe(write(tmp_path, BASE + "train:\n  batch_size: cuatro\n  lr: -1\n"))
    text = err.value.render()
    assert "train.batch_size: tipo incorrecto: se esperaba un entero" in text
    assert "train.lr: debe ser > 0" in text
    assert "r.yaml:6:" in text and "r.yaml:7:" in text


def test_missing_data_section(tmp_path):
    with pytest.raises(AfinarError) as err:
        load_recipe(write(tmp_path, "name: x\n"))
    assert "data: falta este campo obligatorio" in err.value.render()


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(AfinarError) as err:
        load_recipe(write(tmp_path, "name: x\ndata: [\n"))
    assert err.value.code == "R005"
    with pytest.raises(AfinarError) as err:
        load_recipe(tmp_path / "nope.yaml")
    assert err.value.code == "R004"


def test_data_paths_are_relative_to_the_recipe(tmp_path):
    (tmp_path / "d.jsonl").write_text("", encoding="utf-8")
    recipe = load_recipe(write(tmp_path, BASE))
    assert Path(recipe.data.sources[0].path) == tmp_path / "d.jsonl"


def test_overrides_are_validated():
    recipe = recipe_from_dict({"name": "x", "data": {"sources": [{"path": "d.jsonl"}]}})
    assert apply_overrides(recipe, {"train.max_steps": 5, "train.lr": None}).train.max_steps == 5
    with pytest.raises(AfinarError) as err:
        apply_overrides(recipe, {"train.batch_size": 0})
    assert "train.batch_size: debe ser ≥ 1" in err.value.render()


def test_all_linear_and_lists_accepted():
    recipe = recipe_from_dict({"name": "x", "data": {"sources": [{"path": "d"}]}, "lora": {"target_modules": "all-linear"}})
    assert recipe.lora.target_modules == "all-linear"


ALL_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_each_assistant_has_its_recipe_with_the_guides_settings():
    recipes = {p.stem: load_recipe(p) for p in RECIPES}
    assert {"enfermeria", "epicrisis", "tutor_algoritmos", "ciencias"} <= set(recipes)
    for name, recipe in recipes.items():
        assert recipe.model.base == "smollm2-135m", name  # works out of the box on the embedded base
        text = (RECIPES[0].parent / f"{name}.yaml").read_text(encoding="utf-8")
        assert "4bit" in text and "afinar inspect" in text, name  # documents the GPU (QLoRA) settings and the report
    enf = recipes["enfermeria"]
    assert (enf.lora.r, enf.lora.alpha, enf.lora.target_modules) == (8, 16, ["q_proj", "v_proj"])
    assert "TinyLlama" in (RECIPES[0].parent / "enfermeria.yaml").read_text(encoding="utf-8")
    epi = recipes["epicrisis"]
    assert epi.lora.r == 16 and set(epi.lora.target_modules) == ALL_PROJECTIONS
    assert (epi.train.scheduler, epi.train.warmup_ratio, epi.train.weight_decay, epi.train.max_grad_norm) == ("cosine", 0.03, 0.01, 0.3)
    assert (epi.train.eval_every, epi.train.epochs, epi.data.sources[0].format) == (50, 3, "structured")
    tutor = recipes["tutor_algoritmos"]
    assert set(tutor.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"} and tutor.train.gradient_checkpointing
    assert "dense" in (RECIPES[0].parent / "tutor_algoritmos.yaml").read_text(encoding="utf-8")  # Phi-2's name for o_proj
    assert (enf.checks, epi.checks, tutor.checks) == (["enfermeria"], ["epicrisis"], ["tutor"])
    sci = recipes["ciencias"]
    assert sci.lora.r == 16 and set(sci.lora.target_modules) == ALL_PROJECTIONS
    guides = {"epicrisis": "Qwen2.5-1.5B-Instruct", "tutor_algoritmos": "microsoft/phi-2", "ciencias": "Llama-3.2-1B"}
    for name, base in guides.items():
        assert base in (RECIPES[0].parent / f"{name}.yaml").read_text(encoding="utf-8")


def test_mixing_weights_in_a_recipe(tmp_path):
    (tmp_path / "a.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("", encoding="utf-8")
    recipe = load_recipe(write(tmp_path, "name: x\ndata:\n  sources:\n    - {path: a.jsonl, weight: 0.7}\n    - {path: b.jsonl, weight: 0.3}\n"))
    assert [s.weight for s in recipe.data.sources] == [0.7, 0.3]
    with pytest.raises(AfinarError) as info:
        load_recipe(write(tmp_path, "name: x\ndata:\n  sources:\n    - {path: a.jsonl, weight: 0}\n"))
    assert "weight" in info.value.message
