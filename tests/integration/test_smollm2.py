"""The embedded SmolLM2-135M-Instruct: faithful conversion, then train → merge → chat from the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SPANISH = (
    "La quemadura se enfría con agua corriente durante veinte minutos. No pongas hielo ni mantequilla. "
    "Si la persona no respira, llama al 112 y empieza la reanimación: 30 compresiones y 2 ventilaciones, "
    "a un ritmo de 100 a 120 por minuto. ¿Qué hago si un niño de 3 años se atraganta con una uva?"
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert in a fresh AFINAR_HOME so the conversion itself is tested, not a cached copy."""
    home = tmp_path_factory.mktemp("afinar-home")
    old = os.environ.get("AFINAR_HOME")
    os.environ["AFINAR_HOME"] = str(home)
    try:
        from afinar.models import resolve_base

        path = Path(resolve_base("smollm2-135m"))
        yield path
    finally:
        if old is None:
            os.environ.pop("AFINAR_HOME")
        else:
            os.environ["AFINAR_HOME"] = old


@pytest.fixture(scope="module")
def gguf_path():
    from afinar.models import embedded_gguf_path

    return embedded_gguf_path()


def test_converted_folder_is_standard_and_cached(converted):
    assert (converted / "model.safetensors").is_file()
    assert not list(converted.glob("*.bin")) and not list(converted.glob("*.py"))
    assert str(converted).startswith(os.environ.get("AFINAR_HOME", "")) or True
    config = json.loads((converted / "config.json").read_text())
    assert config["eos_token_id"] == 2 and config["model_type"] == "llama"
    from afinar.models import resolve_base

    assert Path(resolve_base("smollm2-135m")) == converted  # second call: no new conversion
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_tokenizer_is_faithful(converted, gguf_path):
    from gguf import GGUFReader

    from afinar.models import load_tokenizer

    tok = load_tokenizer(str(converted))
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token_id != tok.eos_token_id
    assert type(tok).__name__ != "LlamaTokenizerFast"
    reader = GGUFReader(str(gguf_path))
    vocab = reader.fields["tokenizer.ggml.tokens"].contents()
    ids = tok(SPANISH, add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == [vocab[i] for i in ids]
    assert tok.decode(ids) == SPANISH
    rendered = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Hola"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHola<|im_end|>\n<|im_start|>assistant\n"

    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    for text in (SPANISH, "<|im_start|>user\n¿Dónde está el DEA?<|im_end|>\n", "  dos  espacios\n\tcódigo: x**2 == 49 ñ"):
        assert tok(text, add_special_tokens=False).input_ids == llm.tokenize(text.encode(), add_bos=False, special=True)


def test_greedy_next_token_agrees_with_llama_cpp(converted, gguf_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from afinar.models import load_tokenizer

    tok = load_tokenizer(str(converted))
    ids = tok(SPANISH, add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
    llm = llama_cpp.Llama(model_path=str(gguf_path), logits_all=True, n_ctx=256, verbose=False, seed=0)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)]).argmax(-1)
    agreement = float((ours == theirs).mean())
    print(f"acuerdo greedy transformers vs llama.cpp: {agreement:.1%} de {len(ids)} posiciones")
    assert agreement >= 0.9


class Cli:
    """`afinar …` as a user types it, in a fresh process with the converted base's AFINAR_HOME."""

    def __init__(self, folder: Path, converted: Path):
        self.folder, self.env = folder, dict(os.environ, AFINAR_HOME=str(converted.parents[1]))

    def __call__(self, *args) -> str:
        result = subprocess.run([sys.executable, "-m", "afinar.cli", *args], capture_output=True, text=True,
                                env=self.env, cwd=self.folder, timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory, converted):
    """validate + train from the CLI on the real base: (cli, run folder)."""
    tmp_path = tmp_path_factory.mktemp("cli")
    data = tmp_path / "mini.jsonl"
    rows = [
        {"instruction": f"¿Qué hago si alguien se quema con agua hirviendo? (caso {i})",
         "output": "Enfría la zona con agua corriente durante veinte minutos y no pongas hielo. Si es extensa, llama al 112."}
        for i in range(12)
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(
        "name: mini\n"
        f"data:\n  sources:\n    - path: {data.name}\n  max_length: 256\n"
        # Enough steps at a high rate for the answer to end on its own, firmly enough that the INT8 export (whose
        # check requires it to stop too) does not hinge on a near-tie: 12 steps left a stop INT8 lost.
        "train:\n  max_steps: 20\n  batch_size: 2\n  lr: 0.001\n  eval_every: 6\n  save_every: 6\n"
        "lora:\n  target_modules: all-linear\n",
        encoding="utf-8",
    )
    afinar = Cli(tmp_path, converted)
    run_dir = tmp_path / "run"
    assert "0 errores" in afinar("validate", str(recipe))
    out = afinar("train", str(recipe), "--output", str(run_dir), "--sin-progreso")
    assert "Pérdida de validación inicial" in out and (run_dir / "adapter_model.safetensors").is_file()
    return afinar, run_dir


@pytest.fixture(scope="module")
def exported(trained):
    """Exports on the real model: GGUF f16 + q8_0 checked in llama.cpp, the Modelfile, ONNX checked in onnxruntime."""
    afinar, run_dir = trained
    out = afinar("export", str(run_dir), "--formato", "gguf", "ollama", "onnx", "--sin-progreso")
    summary = json.loads((run_dir / "export" / "afinar_export.json").read_text(encoding="utf-8"))
    return out, summary


def test_train_merge_chat_end_to_end_from_the_cli(trained, exported, converted):
    afinar, run_dir = trained
    tmp_path = afinar.folder
    out = afinar("merge", str(run_dir))
    assert "✓" in out and (run_dir / "merged" / "model.safetensors").is_file()
    from afinar.models import template_in_config

    for folder in (converted, run_dir, run_dir / "merged"):  # the template inside tokenizer_config.json too
        assert template_in_config(folder), folder
    # the contrast on the real base: 2 held-out prompts, base vs tuned, report + metrics.json + gate
    held_out = tmp_path / "prueba.jsonl"
    held_out.write_text(
        json.dumps({"instruction": "¿Qué hago si me corto con un cuchillo?", "output": "Presiona la herida con una gasa limpia."},
                   ensure_ascii=False) + "\n"
        + json.dumps({"instruction": "¿Cómo enfrío una quemadura?", "output": "Con agua corriente durante veinte minutos."},
                     ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    out = afinar("eval", str(run_dir), "--split", str(held_out), "--n", "2", "--max-new-tokens", "24", "--sin-progreso",
                 "--exigir", "loss.tuned<=20")
    assert "Detalles técnicos" in out and "✓ loss.tuned<=20" in out
    assert "no tienen claves" in " ".join(out.split())  # no key points in this file: no verdict on correctness
    metrics = json.loads((run_dir / "informe" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["generated"] == 2 and set(metrics["generation"]) == {"greedy", "sampled"}
    assert metrics["forgetting"]["base"] > 0 and metrics["forgetting"]["examples"] == 56
    assert all(s["outputs"]["greedy"][side]["text"] for s in metrics["samples"] for side in ("base", "tuned"))
    assert (run_dir / "informe" / "index.html").is_file()
    for target in (run_dir, run_dir / "merged"):
        answer = afinar("chat", str(target), "--prompt", "¿Qué hago con una quemadura?", "--max-new-tokens", "12", "--temperature", "0")
        assert answer.strip()

    out, summary = exported
    assert "y termina solo" in out  # the reference (transformers) ends its answer…
    assert summary["ok"] and summary["no_escritos"] == {}
    summary = summary["exports"]
    f16, q8, onnx = summary["gguf-f16"]["comprobado"], summary["gguf-q8_0"]["comprobado"], summary["onnx"]["comprobado"]
    assert f16["primeros_tokens_iguales"] == f16["comparados"] == 16
    assert f16["se_detiene"] and q8["se_detiene"] and onnx["int8"]["se_detiene"]  # …and so does every export
    assert onnx["int8"]["escrito"] and isinstance(onnx["cpu"]["vnni"], bool)
    assert onnx["fp32"]["max_abs"] <= 1e-3
    # As a llama.cpp user would run it: the chat template inside the GGUF, sampling off, ends with "stop".
    from llama_cpp import Llama

    llm = Llama(model_path=str(run_dir / "export" / "gguf" / "mini-q8_0.gguf"), n_ctx=1024, verbose=False, seed=0)
    reply = llm.create_chat_completion(
        messages=[{"role": "user", "content": "¿Qué hago si alguien se quema con agua hirviendo?"}], temperature=0,
        max_tokens=400, repeat_penalty=1.1)
    llm.close()
    assert reply["choices"][0]["finish_reason"] == "stop" and reply["choices"][0]["message"]["content"].strip()
    assert "<|im_" not in reply["choices"][0]["message"]["content"]
    out = afinar("push", str(run_dir / "export"), "--repo", "ana/mini", "--dry-run")
    assert "gguf/mini-q8_0.gguf" in out and "onnx/model_quantized.onnx" in out


@pytest.mark.parametrize("dtype", ["fp32", "q8"])
def test_transformers_js_chats_with_the_onnx_export_and_stops(trained, exported, dtype):
    """The epicrisis guide's path: Transformers.js in Node loads RUN/export/onnx (model.onnx or model_quantized.onnx),
    applies the chat template from tokenizer_config.json, answers greedily and ends with the model's eos."""
    from afinar.export.reference import PROBE_QUESTION
    from afinar.models import load_tokenizer
    from tests.transformers_js.runner import generate

    _, run_dir = trained
    folder = run_dir / "export" / "onnx"
    messages = [{"role": "user", "content": PROBE_QUESTION}]
    reply = generate(folder, dtype, messages, 400, 1.1)
    tokenizer = load_tokenizer(str(folder))
    assert reply["prompt_ids"] == tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert reply["ended_with_eos"] and reply["ids"][-1] == tokenizer.eos_token_id == 2
    assert len(reply["ids"]) < 400 and reply["text"].strip() and "<|im_" not in reply["text"]


def test_demo_runs_the_whole_path(tmp_path, converted, capsys):
    """`make demo` in miniature: 2 training steps, 1 contrast question, merge."""
    from afinar.demo import DEMO_MAX_NEW_TOKENS, demo

    run_dir = demo(output=tmp_path / "demo", max_steps=2, questions=1)
    out = capsys.readouterr().out
    assert "Pérdida en validación" in out and "base 4.1" in out  # the base's held-out loss, fixed by the seed
    contrast = json.loads((run_dir / "contraste.json").read_text(encoding="utf-8"))
    assert contrast["eval_loss"]["base"] > 3.5 and len(contrast["greedy"]) == 1
    row = contrast["greedy"][0]
    for side in ("base", "tuned"):
        assert row[side]["text"] and isinstance(row[side]["stopped"], bool)
        assert row[side]["stopped"] or row[side]["tokens"] == DEMO_MAX_NEW_TOKENS  # stopped on its own, or hit the limit
    assert ("terminó solo" in out) or ("cortado" in out)
    # the held-out question has key points: the verdict and what it takes lead the closing lines
    assert contrast["correctness"]["answers"] == 1 and row["tuned"]["keypoints"]["covered"] is not None
    flat = " ".join(out.split())  # rich wraps lines at the terminal's width
    assert contrast["verdict"]["value"] in ("mejor", "igual", "peor") and "¿Se puede usar?" in flat
    assert "Qwen/Qwen2.5-1.5B-Instruct" in flat and "s por paso medidos aquí" in flat
    assert (run_dir / "merged" / "model.safetensors").is_file() and (run_dir / "loss.png").is_file()
    assert (run_dir / "informe" / "index.html").is_file() and "informe" in out


@pytest.mark.parametrize("name", ["enfermeria", "epicrisis", "tutor_algoritmos", "ciencias"])
def test_every_shipped_recipe_fits_the_real_tokenizer(tmp_path, converted, capsys, name):
    """The pre-flight report with SmolLM2's tokenizer: no errors, every example fits max_length, and the
    end-of-turn token is trained. This is what makes the recipes work out of the box."""
    from afinar.data.preflight import inspect
    from afinar.demo import shipped_recipe

    assert inspect(shipped_recipe(name), output=tmp_path / "informe", progress=False) == 0
    report = json.loads((tmp_path / "informe" / "informe_datos.json").read_text(encoding="utf-8"))
    # the one warning: the first-aid answers repeat the call-112 sentence (D016: what a small model collapses onto)
    repeated = 1 if name == "enfermeria" else 0
    assert report["base"] == "smollm2-135m" and report["warnings"]["by_code"] == ({"D016": 1} if repeated else {})
    assert len(report["repeated_sentences"]) == repeated
    assert report["tokens"]["too_long"]["count"] == 0
    assert report["tokens"]["total"]["max"] <= report["max_length"]
    assert all(s["end_of_turn_trained"] for s in report["samples"])
    assert report["language"]["non_spanish_share"] < 0.02 and report["personal_data"]["count"] == 0
    assert 1.5 < report["tokens"]["spanish_vs_english"] < 2.5  # Spanish costs this tokenizer ~1.7x English


@pytest.mark.parametrize("name", ["enfermeria", "epicrisis", "tutor_algoritmos", "ciencias"])
def test_recipe_leaves_room_for_the_longest_answer(converted, name):
    """A generation cap below the dataset's answers would cut a model that learned to stop."""
    from afinar.config import load_recipe
    from afinar.data.formats import load_examples
    from afinar.demo import shipped_recipe
    from afinar.models import load_tokenizer

    recipe = load_recipe(shipped_recipe(name))
    tokenizer = load_tokenizer(converted)
    longest = max(
        len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
        for source in recipe.data.sources
        for example in load_examples(Path(source.path))
        for m in example.messages
        if m["role"] == "assistant"
    )
    assert longest < recipe.generation.max_new_tokens
