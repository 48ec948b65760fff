"""QLoRA (`model.quantization: 4bit`) on a CPU, with bitsandbytes' CPU backend: train, resume, eval and merge a tiny
Llama (hidden 32), and export one with the embedded SmolLM2's tokenizer (hidden 64: llama.cpp's converter knows the
tokenizer) to GGUF. NF4 quantizes in blocks of 64 weights: every quantized matrix here has a multiple of 64 elements
(32 × 32 = 1 024 at the smallest). bitsandbytes' repacked CPU inference layout needs more (in features a multiple of
64, out features of 32): afinar keeps it off (models.load_model), so the tiny shapes train and evaluate."""
import json
import shutil
import sys

import pytest
import torch

from afinar import hardware
from afinar.config import recipe_from_dict
from afinar.errors import AfinarError
from afinar.training import checkpoint_dirs, read_metrics

needs_bnb = pytest.mark.skipif(hardware.bitsandbytes_version() is None,
                               reason="bitsandbytes no está instalado (pip install \"afinar[qlora]\")")


def qlora_recipe(base, folder) -> dict:
    from conftest import qa_rows, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(folder / "datos.jsonl", qa_rows(24))
    return {
        "name": "mini4",
        "model": {"base": str(base), "quantization": "4bit"},
        "data": {"sources": [{"path": str(data)}], "max_length": 128, "system_prompt": "Eres un asistente."},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
        "train": {"max_steps": 6, "batch_size": 4, "grad_accum": 1, "lr": 2e-2, "precision": "fp32", "seed": 3,
                  "eval_every": 3, "save_every": 3, "keep_last": 2},
        "generation": {"max_new_tokens": 32},
        "output_dir": str(folder / "run"),
    }


def train_recipe(recipe: dict, **kwargs):
    from afinar.train import train

    return train(recipe_from_dict(recipe), progress=False, **kwargs)


@pytest.fixture(scope="module")
def qlora_run(tiny_base, tmp_path_factory):
    if hardware.bitsandbytes_version() is None:
        pytest.skip("bitsandbytes no está instalado (pip install \"afinar[qlora]\")")
    recipe = qlora_recipe(tiny_base, tmp_path_factory.mktemp("qlora"))
    return train_recipe(recipe), recipe


# --- without bitsandbytes, or with one too old -------------------------------------------------------------------


def test_without_bitsandbytes_a_spanish_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    for call in (lambda: hardware.detect("auto", "4bit"), lambda: hardware.bnb_4bit_config(torch.float32)):
        with pytest.raises(AfinarError) as err:
            call()
        assert err.value.code == "H004" and "bitsandbytes" in err.value.message and "necesita" in err.value.message
        assert '.venv/bin/pip install -e ".[qlora]"' in err.value.hint
    assert hardware.detect("auto", "none").device == "cpu"  # plain LoRA does not need it


def test_a_bitsandbytes_without_cpu_backend_is_refused_on_cpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(hardware, "bitsandbytes_version", lambda: "0.45.5")
    with pytest.raises(AfinarError) as err:
        hardware.detect("auto", "4bit")
    assert err.value.code == "H005" and "0.49" in err.value.message and "0.45.5" in err.value.message


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_4bit_on_cpu_computes_in_the_cpus_precision(monkeypatch, native, expected):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(hardware, "bitsandbytes_version", lambda: "0.50.2")
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: native)
    hw = hardware.detect("auto", "4bit")
    assert (hw.device, hw.precision) == ("cpu", expected) and "QLoRA" in hw.reason
    assert hardware.detect("fp32", "4bit").precision == "fp32"
    with pytest.raises(AfinarError) as err:
        hardware.detect("fp16", "4bit")
    assert err.value.code == "H003"


@needs_bnb
def test_the_planner_plans_4bit_on_a_cpu(tiny_base, tmp_path):
    from afinar.planning.estimate import resolve_target

    target = resolve_target("cpu", recipe_from_dict(qlora_recipe(tiny_base, tmp_path)))
    assert target.kind == "cpu" and target.precision in ("fp32", "bf16")


# --- the run --------------------------------------------------------------------------------------------------------


@needs_bnb
def test_qlora_trains_on_cpu(qlora_run):
    run_dir, _ = qlora_run
    info = json.loads((run_dir / "afinar_run.json").read_text())
    assert info["hardware"]["device"] == "cpu" and "QLoRA" in info["hardware"]["reason"]
    rows = read_metrics(run_dir)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]  # base, step 3, step 6
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["memory"]["parts_gb"]["weights"] > 0
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-000003", "step-000006"]


@needs_bnb
def test_the_trained_model_is_4bit(qlora_run):
    """The run's adapter sits on Linear4bit layers as it trained (the held-out loss in eval mode included)."""
    from afinar.hardware import Hardware
    from afinar.models import load_model
    from afinar.training import prepare_for_training

    run_dir, recipe = qlora_run
    model = load_model(recipe["model"]["base"], quantization="4bit")
    model = prepare_for_training(model, recipe_from_dict(recipe), Hardware("cpu", "fp32", "prueba"))
    names = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in names and type(model.get_output_embeddings()) is torch.nn.Linear  # the head stays fp32


@needs_bnb
def test_resume_gives_the_same_run(qlora_run, tmp_path):
    run_dir, recipe = qlora_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "step-000006")  # as if it had stopped after step 3
    resumed = train_recipe(dict(recipe, output_dir=str(copy)), resume=True)
    full, again = read_metrics(run_dir), read_metrics(resumed)
    assert [r["step"] for r in again if "loss" in r] == list(range(1, 7))
    for a, b in zip([r for r in full if "loss" in r], [r for r in again if "loss" in r]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
    assert full[-1]["eval_loss"] == pytest.approx(again[-1]["eval_loss"], rel=1e-5)
    from safetensors.torch import load_file

    first, second = (load_file(str(d / "adapter_model.safetensors")) for d in (run_dir, resumed))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-6)


@needs_bnb
def test_eval_loads_the_run_on_its_4bit_base(qlora_run, monkeypatch):
    import afinar.evaluate.run as eval_run
    import afinar.runs as runs

    run_dir, _ = qlora_run
    loads = []
    real = runs.load_model

    def recording(path, **kwargs):
        loads.append(kwargs.get("quantization", "none"))
        return real(path, **kwargs)

    monkeypatch.setattr(runs, "load_model", recording)
    metrics = eval_run.evaluate_run(run_dir, n=1, passes=("greedy",), max_new_tokens=4, progress=False)
    assert loads == ["4bit"]
    training_eval = [r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r][-1]
    assert json.dumps(metrics)  # a report was made
    assert (run_dir / "informe" / "metrics.json").is_file()
    assert training_eval > 0


@needs_bnb
def test_merge_is_the_trained_model_in_float(qlora_run, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from afinar.merge import PROBE, merge
    from afinar.models import load_model, load_tokenizer

    run_dir, recipe = qlora_run
    out = merge(run_dir, output=tmp_path / "merged")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"F32"}
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    probe = load_tokenizer(str(run_dir)).apply_chat_template(PROBE, return_tensors="pt")
    # The reference: the model as it trained — the NF4 base with the adapter on top, unmerged (PEFT's own forward
    # through bitsandbytes' Linear4bit, fp32 compute).
    as_trained = PeftModel.from_pretrained(load_model(recipe["model"]["base"], dtype=torch.float32,
                                                      quantization="4bit"), str(run_dir)).eval()
    original = PeftModel.from_pretrained(load_model(recipe["model"]["base"], dtype=torch.float32), str(run_dir)).eval()
    with torch.no_grad():
        expected, got, on_original = as_trained(probe).logits, merged(probe).logits, original(probe).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # The same adapter on the original (unquantised) weights is another model: merging there would not be this one.
    assert (on_original - expected).abs().max() > 100 * (got - expected).abs().max()
    summary = json.loads((out / "afinar_merge.json").read_text())
    assert summary["ok"] and summary["check"]["max_abs"] <= 1e-4 and "NF4" in summary["qlora"]["merged_into"]


@needs_bnb
@pytest.mark.slow
def test_gguf_export_of_a_qlora_run_loads_in_llama_cpp(smol_tokenizer_base, tmp_path):
    from afinar import extras
    from afinar.export.run import export

    if not extras.available("llamacpp"):
        pytest.skip("llama-cpp-python no está instalado")
    recipe = qlora_recipe(smol_tokenizer_base, tmp_path / "smol")
    recipe["train"].update(max_steps=2, eval_every=100, save_every=100)
    run_dir = train_recipe(recipe)
    written = export(run_dir, ["gguf"], output=tmp_path / "export", quants=["q8_0"], progress=False)
    assert set(written) == {"gguf-f16", "gguf-q8_0"}
    summary = json.loads((tmp_path / "export" / "afinar_export.json").read_text())
    q8 = summary["exports"]["gguf-q8_0"]
    assert (tmp_path / "export" / q8["ruta"]).is_file()
    # llama.cpp loaded the q8_0 file and answered the merged model's prompt with the same first tokens.
    assert q8["comprobado"]["prompt_tokens_iguales"] and q8["comprobado"]["respuesta_igual_hasta"] >= 1


@needs_bnb
@pytest.mark.slow
@pytest.mark.skipif(not hardware.cpu_supports_bf16(), reason="esta CPU no tiene bf16 nativo")
def test_qlora_trains_in_bf16_on_a_cpu_that_has_it(tiny_base, tmp_path):
    recipe = qlora_recipe(tiny_base, tmp_path)
    recipe["train"].update(precision="auto", max_steps=3, eval_every=3, save_every=100)
    run_dir = train_recipe(recipe)
    info = json.loads((run_dir / "afinar_run.json").read_text())
    assert info["hardware"]["precision"] == "bf16"
    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    assert len(losses) == 3 and all(loss == loss for loss in losses) and losses[-1] < losses[0]
