"""Training, resume, merge and chat on a tiny random Llama (seconds on CPU)."""
import json

import pytest
import torch

from afinar.config import recipe_from_dict
from afinar.errors import AfinarError
from afinar.merge import merge
from afinar.train import train
from afinar.training import checkpoint_dirs, read_metrics


def run(recipe_dict, **kwargs):
    return train(recipe_from_dict(recipe_dict), progress=False, **kwargs)


@pytest.fixture
def trained(tiny_recipe):
    return run(tiny_recipe), tiny_recipe


def test_run_folder_has_everything(trained, tiny_base):
    run_dir, _ = trained
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "recipe.yaml", "metrics.jsonl", "data_fingerprint.json", "afinar_run.json", "loss.png"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*tmp*"))
    fingerprint = json.loads((run_dir / "data_fingerprint.json").read_text())
    assert fingerprint["train_examples"] == 36 and fingerprint["val_examples"] == 4
    assert len(next(iter(fingerprint["files"].values()))["sha256"]) == 64
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 3, 6]
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    # keep_last=2: checkpoints at 2, 4 and the final 6, the oldest pruned
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-000004", "step-000006"]


def test_adapter_loads_with_plain_peft(trained, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, _ = trained
    config = json.loads((run_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), str(run_dir))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # it did learn something


def test_training_lowers_the_training_loss(tiny_recipe):
    tiny_recipe["train"].update(max_steps=40, eval_every=40, save_every=100, lr=3e-2)
    tiny_recipe["lora"].update(r=8, target_modules="all-linear", dropout=0.0)
    rows = read_metrics(run(tiny_recipe))
    losses = [r["loss"] for r in rows if "loss" in r]
    # A random tiny model's frozen lm_head caps how far LoRA can go; 0.2 nats is well above noise.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


def crash_after(monkeypatch, name: str):
    """Make the run stop (like a closed laptop lid) right after checkpoint `name` is complete."""
    import afinar.train_stages as train_module

    real_save = train_module.save_checkpoint

    def save_then_stop(run_dir, *args, **kwargs):
        path = real_save(run_dir, *args, **kwargs)
        if path.name == name:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    return lambda: monkeypatch.setattr(train_module, "save_checkpoint", real_save)


def interrupted_copy(recipe: dict, folder, monkeypatch, checkpoint: str) -> dict:
    """The recipe in another folder, trained until `checkpoint` is written and then stopped."""
    interrupted = dict(recipe, output_dir=str(folder))
    restore = crash_after(monkeypatch, checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted)
    restore()
    return interrupted


def test_resume_gives_the_same_next_losses(tiny_recipe, tmp_path, monkeypatch):
    tiny_recipe["train"].update(max_steps=10, eval_every=5)  # 6 steps after the resume point, packed micro-batches
    assert recipe_from_dict(tiny_recipe).train.packing
    full = read_metrics(run(tiny_recipe))
    interrupted = interrupted_copy(tiny_recipe, tmp_path / "interrupted", monkeypatch, "step-000004")
    assert not (tmp_path / "interrupted" / "adapter_model.safetensors").exists()
    # a power cut in the middle of writing a metrics line
    with open(tmp_path / "interrupted" / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 5, "loss": 0.12')

    resumed = read_metrics(run(interrupted, resume=True))
    assert [r["step"] for r in resumed if "loss" in r] == list(range(1, 11))
    for a, b in zip([r for r in full if "loss" in r], [r for r in resumed if "loss" in r]):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    assert full[-1]["eval_loss"] == pytest.approx(resumed[-1]["eval_loss"], rel=1e-5)


def test_resume_refuses_a_recipe_that_changes_the_order(tiny_recipe, tmp_path, monkeypatch):
    restore = crash_after(monkeypatch, "step-000002")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe)
    restore()
    run_dir = tmp_path / "run"
    before = (run_dir / "metrics.jsonl").read_text()
    changed = dict(tiny_recipe, train={**tiny_recipe["train"], "batch_size": 2, "seed": 8, "lr": 5e-4},
                   lora={**tiny_recipe["lora"], "r": 8})
    with pytest.raises(AfinarError) as err:
        run(changed, resume=True)
    assert err.value.code == "T006"
    for key in ("train.batch_size", "train.seed", "lora.r"):
        assert key in err.value.message
    assert "train.lr" not in err.value.message  # a new learning rate does not change the order
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing written
    # --forzar: accepted, with the same LoRA shape (a different r cannot load the checkpoint at all)
    forced = dict(changed, lora=tiny_recipe["lora"])
    assert read_metrics(run(forced, resume=True, force=True))[-1]["step"] == 6


def test_a_second_run_reads_the_tokenized_cache(tiny_recipe, tmp_path):
    first = json.loads((run(tiny_recipe) / "afinar_run.json").read_text())
    again = json.loads((run(dict(tiny_recipe, output_dir=str(tmp_path / "otra"))) / "afinar_run.json").read_text())
    assert (first["data_cache"], again["data_cache"]) == ("miss", "hit")
    assert again["final_train_loss"] == pytest.approx(first["final_train_loss"], rel=1e-6)
    for key in ("real_tokens", "trained_tokens", "examples"):
        assert again["throughput"][key] == first["throughput"][key] > 0
    assert first["throughput"]["real_tokens"] > first["throughput"]["trained_tokens"]


@pytest.mark.parametrize(
    "change, env, code",
    [
        ({"train": {"tokens_per_batch": 20}}, {}, "T005"),
        ({}, {"ACCELERATE_USE_FSDP": "true"}, "T007"),
        ({}, {"ACCELERATE_USE_DEEPSPEED": "true"}, "T007"),
        ({}, {"LOCAL_WORLD_SIZE": "64"}, "T009"),
        ({"train": {"report_to": "comet"}}, {}, "R001"),
    ],
)
def test_bad_launches_stop_before_writing(tiny_recipe, tmp_path, monkeypatch, change, env, code):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for section, values in change.items():
        tiny_recipe[section] = {**tiny_recipe[section], **values}
    with pytest.raises(AfinarError) as err:
        run(tiny_recipe)
    assert err.value.code == code, err.value.render()
    assert not (tmp_path / "run").exists()


def test_deepspeed_and_trackers_that_are_not_installed(tiny_recipe, tmp_path, monkeypatch):
    import importlib.util

    from afinar import hardware

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("deepspeed", "trackio") else real_find_spec(name, *a))
    monkeypatch.setattr(hardware, "detect", lambda *a: hardware.Hardware("cuda", "bf16", "GPU de prueba"))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")
    with pytest.raises(AfinarError) as err:
        run(tiny_recipe)
    assert err.value.code == "T008" and "pip install deepspeed" in err.value.render()
    monkeypatch.setattr(hardware, "detect", lambda *a: hardware.Hardware("cpu", "fp32", "CPU"))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    tiny_recipe["train"]["report_to"] = "trackio"
    with pytest.raises(AfinarError) as err:
        run(tiny_recipe)
    assert err.value.code == "T010"
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_is_protected(trained):
    _, recipe = trained
    with pytest.raises(AfinarError) as err:
        run(recipe)
    assert err.value.code == "T003"


def test_resume_without_checkpoint(tiny_recipe):
    with pytest.raises(AfinarError) as err:
        run(tiny_recipe, resume=True)
    assert err.value.code == "T002"


def test_bad_data_stops_before_loading_the_model(tiny_recipe, tmp_path):
    bad = tmp_path / "mal.jsonl"
    bad.write_text('{"instruction": "x"}\n{"output": 3}\n', encoding="utf-8")
    tiny_recipe["data"]["sources"] = [{"path": str(bad)}]
    with pytest.raises(AfinarError) as err:
        run(tiny_recipe)
    text = err.value.render()
    assert "mal.jsonl:1: D004" in text and "mal.jsonl:2: D006" in text


def test_merge_matches_peft_reference(trained, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, _ = trained
    merged_dir = merge(run_dir)
    assert json.loads((merged_dir / "afinar_merge.json").read_text())["ok"] is True
    assert not list(merged_dir.glob("adapter_*"))
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(run_dir)).eval()
    with torch.no_grad():
        expected = reference(ids).logits
        got = merged(ids).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        # ...and PEFT's own merge gives the same weights.
        peft_merged = reference.merge_and_unload()
        torch.testing.assert_close(peft_merged(ids).logits, got, atol=1e-5, rtol=1e-4)
    with pytest.raises(AfinarError) as err:
        merge(run_dir)
    assert err.value.code == "G003"


def test_merge_bf16_and_refuses_a_merged_folder(trained):
    run_dir, _ = trained
    out = merge(run_dir, output=run_dir.parent / "m16", dtype="bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype" if "torch_dtype" in (out / "config.json").read_text() else "dtype"] == "bfloat16"
    with pytest.raises(AfinarError) as err:
        merge(out)
    assert err.value.code == "G002"


def test_chat_one_shot_on_run_and_merged(trained, capsys):
    from afinar.inference.chat import chat

    run_dir, _ = trained
    first = chat(run_dir, prompt="¿Qué hago con una quemadura?", max_new_tokens=8, temperature=0)
    assert isinstance(first, str)
    again = chat(run_dir, prompt="¿Qué hago con una quemadura?", max_new_tokens=8, temperature=0)
    assert first == again  # greedy is deterministic
    merged = merge(run_dir)
    assert chat(merged, prompt="¿Qué hago con una quemadura?", max_new_tokens=8, temperature=0) == first
    assert first.strip() and first.strip() in capsys.readouterr().out.replace("\n", " ") or first == ""


def test_interactive_chat_quits_on_salir(trained, monkeypatch, capsys):
    from afinar.inference.chat import chat

    run_dir, _ = trained
    answers = iter(["hola", "salir", "no debería leerse"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    chat(run_dir, max_new_tokens=4, temperature=0)
    out = capsys.readouterr().out
    assert "Escribe 'salir'" in out and "[sistema] Eres un asistente." in out
    assert next(answers) == "no debería leerse"


def test_weighted_sources_are_mixed_and_reported(tiny_recipe, tmp_path, capsys):
    import re

    from conftest import write_jsonl

    general = write_jsonl(tmp_path / "general.jsonl", [{"instruction": f"Otra cosa {i}", "output": f"Respuesta general {i}."} for i in range(10)])
    tiny_recipe["data"]["sources"][0]["weight"] = 3
    tiny_recipe["data"]["sources"].append({"path": str(general), "weight": 1})
    tiny_recipe["data"]["val_fraction"] = 0
    run(tiny_recipe)
    out = capsys.readouterr().out
    counts = {name: (int(n), int(size)) for name, n, size in re.findall(r"mezcla por época: (\S+): (\d+) de (\d+)", out)}
    assert counts == {"datos.jsonl": (38, 40), "general.jsonl": (12, 10)}  # 50 rows per epoch, 3:1


def test_gradient_checkpointing_and_padded_batches_train_the_same(tiny_recipe, tmp_path, capsys):
    """Recomputing activations (use_reentrant=False), padded length-grouped batches and packed rows where every
    example carries its own system prompt change memory and time, not the math."""
    tiny_recipe["lora"]["dropout"] = 0.0  # recomputation would redraw dropout masks
    reference = [r["loss"] for r in read_metrics(run(tiny_recipe)) if "loss" in r]
    assert "una vez por fila empaquetada" in capsys.readouterr().out  # the reference shares the prefix
    copies = dict(tiny_recipe, output_dir=str(tmp_path / "copies"), train={**tiny_recipe["train"], "shared_prefix": False})
    assert [r["loss"] for r in read_metrics(run(copies)) if "loss" in r] == pytest.approx(reference, rel=1e-5)
    assert "una vez por fila empaquetada" not in capsys.readouterr().out
    checkpointed = dict(tiny_recipe, output_dir=str(tmp_path / "gc"), train={**tiny_recipe["train"], "gradient_checkpointing": True})
    assert [r["loss"] for r in read_metrics(run(checkpointed)) if "loss" in r] == pytest.approx(reference, rel=1e-5)
    padded = dict(tiny_recipe, output_dir=str(tmp_path / "pad"), train={**tiny_recipe["train"], "packing": False})
    # short examples: a packed row holds the same 4 examples as a padded micro-batch, so each step sees the same ones
    assert [r["loss"] for r in read_metrics(run(padded)) if "loss" in r] == pytest.approx(reference, rel=1e-4)


def test_a_second_training_in_the_same_process_may_change_precision(tmp_path):
    """accelerate's settings are process-wide: the demo, a notebook or these tests train more than once."""
    from afinar.config import TrainSection
    from afinar.hardware import Hardware
    from afinar.train_stages import make_accelerator as _accelerator

    assert _accelerator(Hardware("cpu", "bf16", ""), TrainSection(), tmp_path).mixed_precision == "bf16"
    second = _accelerator(Hardware("cpu", "fp32", ""), TrainSection(grad_accum=3), tmp_path)
    assert (second.mixed_precision, second.gradient_accumulation_steps) == ("no", 3)


def test_cpu_bf16_keeps_a_tied_head_tied_and_a_lora_head_fp32():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from afinar.training import frozen_linears_to_bf16

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    tied = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj"]))
    frozen_linears_to_bf16(tied)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    assert tied.get_input_embeddings().weight.dtype == torch.bfloat16
    config.tie_word_embeddings = False
    lora_head = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    frozen_linears_to_bf16(lora_head)
    head = lora_head.get_base_model().lm_head
    assert head.base_layer.weight.dtype == torch.bfloat16 and head.lora_A["default"].weight.dtype == torch.float32


def test_cpu_bf16_stores_the_frozen_linears_in_bf16_with_the_same_loss(tiny_recipe, tiny_base, tokenizer):
    """On a CPU with bf16, autocast casts every frozen weight at each call; storing them in bf16 once gives the same
    loss and LoRA gradients as fp32 storage with the embedding table rounded to bf16; LoRA and norms stay fp32."""
    from afinar.data.templates import collate_packed, encode, with_system
    from afinar.hardware import Hardware
    from afinar.data.chat_format import resolve
    from afinar.train_stages import model_for_training as _build_model
    from afinar.training import output_head, token_loss_sum

    recipe = recipe_from_dict(tiny_recipe)
    rows = [encode(tokenizer, with_system([{"role": "user", "content": f"Pregunta {i}"},
                                            {"role": "assistant", "content": f"Respuesta número {i}."}], "Sistema."))
            for i in range(3)]
    batch = collate_packed([rows[:2], rows[2:]], tokenizer.pad_token_id)

    def loss_and_grads(precision, rounded_embeddings=False):
        torch.manual_seed(0)
        model, _ = _build_model(recipe, str(tiny_base), Hardware("cpu", precision, ""), "cpu", tokenizer,
                                resolve(tokenizer, "auto"))
        if rounded_embeddings:  # fp32 storage, autocast casts; the embedding table rounded as bf16 storage rounds it
            table = model.get_input_embeddings().weight
            table.data = table.data.bfloat16().float()
        model.eval()  # no dropout: both runs must see the same computation
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, n = token_loss_sum(model, batch, output_head(model))
        total.backward()
        grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
        return model, total.detach(), grads

    reference_model, reference, reference_grads = loss_and_grads("fp32", rounded_embeddings=True)
    model, got, grads = loss_and_grads("bf16")
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert q_proj.base_layer.weight.dtype == torch.bfloat16
    assert reference_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.float32
    assert q_proj.lora_A["default"].weight.dtype == torch.float32
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert model.get_base_model().model.norm.weight.dtype == torch.float32
    ids = batch["input_ids"][:, :5]
    assert model.get_input_embeddings()(ids).dtype == torch.float32  # the residual stream stays fp32
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-6)
    assert grads.keys() == reference_grads.keys() and len(grads) == 8
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-7)


# --- method: full (every weight trains; the run folder is a whole model) and DoRA ---------------------------------


def full_recipe(tiny_recipe: dict, **train) -> dict:
    recipe = {k: v for k, v in tiny_recipe.items() if k != "lora"}
    recipe["method"] = "full"
    recipe["train"] = {**tiny_recipe["train"], **train}
    return recipe


def test_full_fine_tuning_writes_a_whole_model_that_plain_transformers_loads(tiny_recipe, tiny_base):
    import yaml
    from transformers import AutoModelForCausalLM

    from afinar.runs import open_ref

    run_dir = run(full_recipe(tiny_recipe, lr=1e-2))
    assert (run_dir / "model.safetensors").is_file() and not list(run_dir.glob("adapter_*"))
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["method"] == "full" and "lora" not in saved  # the resolved recipe says what trained
    ref = open_ref(run_dir)
    assert ref.kind == "full" and ref.is_run and ref.standalone and ref.base_path == str(tiny_base)
    tuned = AutoModelForCausalLM.from_pretrained(run_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    # the inference settings training switched off are back in the saved config
    assert tuned.config.use_cache is True and tuned.config._attn_implementation in ("sdpa", "eager")
    changed = {name for (name, a), (_, b) in zip(tuned.named_parameters(), base.named_parameters()) if not torch.equal(a, b)}
    # every kind of weight trained: embeddings, attention, MLP and the norms (LoRA never touches those)
    for part in ("embed_tokens", "q_proj", "down_proj", "input_layernorm", "model.norm"):
        assert any(part in name for name in changed), part
    rows = read_metrics(run_dir)
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


def test_full_fine_tuning_resumes_exactly(tiny_recipe, tmp_path, monkeypatch):
    recipe = full_recipe(tiny_recipe, max_steps=8, eval_every=4)
    uninterrupted = read_metrics(run(recipe))
    interrupted = interrupted_copy(recipe, tmp_path / "interrupted", monkeypatch, "step-000004")
    resumed = read_metrics(run(interrupted, resume=True))  # the saved recipe (without lora) is no "change"
    a, b = ([r["loss"] for r in rows if "loss" in r] for rows in (uninterrupted, resumed))
    assert len(a) == len(b) == 8
    assert b == pytest.approx(a, rel=1e-5)


def test_full_fine_tuning_merge_eval_and_chat(tiny_recipe, tiny_base):
    from transformers import AutoModelForCausalLM

    from afinar.evaluate.run import evaluate_run
    from afinar.inference.chat import generate_many
    from afinar.models import load_tokenizer
    from afinar.runs import open_ref

    run_dir = run(full_recipe(tiny_recipe, lr=1e-2))
    merged = merge(run_dir)
    assert json.loads((merged / "afinar_merge.json").read_text())["ok"] is True
    assert open_ref(merged).kind == "merged"
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(merged)(ids).logits,
                                   AutoModelForCausalLM.from_pretrained(run_dir)(ids).logits, atol=1e-5, rtol=1e-4)

    # eval: the base side is the base model itself, loaded beside the tuned one
    metrics = evaluate_run(run_dir, n=2, passes=("greedy",), base=str(tiny_base), max_new_tokens=6, progress=False,
                           show_examples=True)
    rows = read_metrics(run_dir)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert metrics["loss"]["base"] == pytest.approx(evals[0], abs=2e-3)
    assert metrics["loss"]["tuned"] == pytest.approx(evals[-1], abs=2e-3)
    recipe = open_ref(run_dir).recipe
    gen = recipe.generation.model_copy(update={"temperature": 0.0, "max_new_tokens": 6})
    prompts = [[{"role": "system", "content": recipe.data.system_prompt}, {"role": "user", "content": s["question"]}]
               for s in metrics["samples"]]
    tokenizer = load_tokenizer(str(run_dir))
    for side, folder in (("base", tiny_base), ("tuned", run_dir)):
        alone = generate_many(AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer, prompts, gen)
        assert [s["outputs"]["greedy"][side]["text"] for s in metrics["samples"]] == [r.text for r in alone], side

    # chat takes the run folder itself; push needs the export (there is no adapter to upload)
    from afinar.export.hub import plan
    from afinar.inference.chat import chat

    assert chat(run_dir, prompt="¿Qué hago?", max_new_tokens=6, temperature=0) == chat(
        merged, prompt="¿Qué hago?", max_new_tokens=6, temperature=0)
    with pytest.raises(AfinarError) as err:
        plan(run_dir)
    assert err.value.code == "X053" and "afinar export" in err.value.hint
    from afinar.export.run import export

    export(run_dir, ["safetensors"], dtype="fp32", progress=False)
    summary = json.loads((run_dir / "export" / "afinar_export.json").read_text())
    assert summary["ok"] and summary["exports"]["safetensors"]["comprobado"]["max_abs"] <= 1e-3
    assert "model.safetensors" in [u.in_repo for u in plan(run_dir)[0]]


def test_dora_trains_merges_and_evaluates_each_side_on_its_own(tiny_recipe, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from afinar.evaluate.run import evaluate_run

    tiny_recipe["lora"].update(use_dora=True)
    tiny_recipe["train"].update(lr=1e-2)
    run_dir = run(tiny_recipe)
    assert json.loads((run_dir / "adapter_config.json").read_text())["use_dora"] is True
    merged = merge(run_dir)
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(run_dir)).eval()
    with torch.no_grad():
        expected = reference(ids).logits
        with reference.disable_adapter():
            base_logits = reference(ids).logits
        assert not torch.allclose(expected, base_logits, atol=1e-4)  # DoRA changed the model
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(merged)(ids).logits, expected,
                                   atol=1e-4, rtol=1e-4)
    # PEFT refuses mixed-adapter batches with DoRA: eval generates each side alone, and gets the same answers
    from afinar.inference.chat import generate_many
    from afinar.models import load_tokenizer
    from afinar.runs import open_ref

    metrics = evaluate_run(run_dir, n=2, passes=("greedy",), max_new_tokens=6, progress=False, show_examples=True)
    recipe = open_ref(run_dir).recipe
    gen = recipe.generation.model_copy(update={"temperature": 0.0, "max_new_tokens": 6})
    prompts = [[{"role": "system", "content": recipe.data.system_prompt}, {"role": "user", "content": s["question"]}]
               for s in metrics["samples"]]
    tokenizer = load_tokenizer(str(run_dir))
    tuned_alone = generate_many(reference, tokenizer, prompts, gen)
    with reference.disable_adapter():
        base_alone = generate_many(reference, tokenizer, prompts, gen)
    for side, alone in (("base", base_alone), ("tuned", tuned_alone)):
        assert [s["outputs"]["greedy"][side]["text"] for s in metrics["samples"]] == [r.text for r in alone], side


def test_full_fine_tuning_refuses_4bit():
    with pytest.raises(AfinarError) as err:
        recipe_from_dict({"name": "x", "method": "full", "model": {"quantization": "4bit"},
                          "data": {"sources": [{"path": "d.jsonl"}]}})
    assert "4 bits" in err.value.message and "method" in err.value.message
