"""Each family our users train, end to end and offline: a tiny random model of its architecture with a tokenizer that
carries the family's real template and special tokens (tests/families.py) is trained a few steps to answer one fixed
sentence, then merged, exported to GGUF (+ Ollama Modelfile) and ONNX, and chatted with in every runtime; the
answer must end on the family's end-of-turn marker everywhere.

Llama (TinyLlama: Zephyr; Llama 3.2 Instruct: its own dated template; Llama 3.2 base: no template →
usuario-asistente), Qwen2 (ChatML with Qwen's default system), Phi (phi-2: no template → tutor-phi2, whose `<|end|>`
is not a token), Phi-3 (Phi-3.5's template), Gemma (named `gemma`: Gemma's own refuses a system message).
"""
import json
import shutil

import pytest

from afinar.data.chat_format import resolve
from afinar.data.templates import IGNORE, encode
from afinar.errors import AfinarError
from afinar.models import load_tokenizer, stored_chat_templates
from tests.conftest import write_jsonl
from tests.families import make_family_model, make_family_tokenizer, save_family_base

pytestmark = pytest.mark.slow

ANSWER = "Llama al 112."
SYSTEM = "Eres un asistente."
QUESTIONS = ["¿Qué hago con una quemadura?", "¿Y si alguien no respira?", "¿Cómo detengo una hemorragia?",
             "¿Qué hago si se atraganta?", "¿Pongo hielo en la quemadura?", "¿Llamo a emergencias?",
             "¿Y la posición lateral?", "¿Qué hago con una herida?"]
# case → (family, data.template, vocabulary (llama.cpp's converter only knows published byte-level vocabularies),
#         end of turn, stop ids by token, stop strings that must be there)
CASES = {
    "tinyllama": ("tinyllama", "auto", "tiny", "</s>", ["</s>"], ()),
    "qwen2": ("qwen2", "auto", "smollm2", "<|im_end|>", ["<|im_end|>", "<|endoftext|>"], ()),
    "llama3": ("llama3", "auto", "smollm2", "<|eot_id|>", ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"], ()),
    "llama3-base": ("llama3-base", "usuario-asistente", "smollm2", "<|end_of_text|>", ["<|end_of_text|>"], ("Usuario:",)),
    # Llama 3.2 base with Llama 3's template: its <|eot_id|> and header rows were never trained; they are warmed up to
    # the mean embedding and trained (PEFT trainable_token_indices), then merged and exported with the rest.
    "llama3-base-llama3": ("llama3-base", "llama3", "smollm2", "<|eot_id|>", ["<|eot_id|>", "<|end_of_text|>"], ()),
    "phi2": ("phi2", "tutor-phi2", "smollm2", "<|endoftext|>", ["<|endoftext|>"], ("<|end|>",)),
    "phi3": ("phi3", "auto", "tiny", "<|end|>", ["<|end|>", "<|assistant|>", "<|endoftext|>"], ()),
    "gemma": ("gemma", "gemma", "tiny", "<end_of_turn>", ["<end_of_turn>", "<eos>"], ()),
}
FAMILY_OF = {"tinyllama": "zephyr", "qwen2": "chatml", "llama3": "llama3", "llama3-base": "usuario-asistente",
             "llama3-base-llama3": "llama3", "phi2": "tutor-phi2", "phi3": "phi3", "gemma": "gemma"}


@pytest.fixture(scope="module", params=list(CASES))
def family_run(request, tmp_path_factory):
    """(case, run folder): trained 60 steps to answer ANSWER to any of QUESTIONS, then stop."""
    from afinar.config import recipe_from_dict
    from afinar.train import train

    case = request.param
    family, template, vocab, *_ = CASES[case]
    root = tmp_path_factory.mktemp(case)
    base = save_family_base(family, root / family, vocab=vocab)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in QUESTIONS]
    run = train(recipe_from_dict({
        "name": f"familia-{family}", "model": {"base": str(base)},
        "data": {"sources": [{"path": str(write_jsonl(root / "datos.jsonl", rows))}], "template": template,
                 "system_prompt": SYSTEM, "max_length": 160, "val_fraction": 0},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"max_steps": 60, "batch_size": 8, "lr": 1e-2, "precision": "fp32", "warmup_ratio": 0,
                  "scheduler": "constant"},
        "generation": {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 24},
        "output_dir": str(root / "run")}), progress=False)
    return case, run


def chat(engine) -> object:
    from afinar.inference.engines import Sampling

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    return engine.complete(next(iter(engine.personalities)), messages,
                           Sampling(temperature=0, repetition_penalty=1.0, max_tokens=24))


def test_the_run_agrees_on_one_end_of_turn(family_run):
    case, run = family_run
    _, template, _, end, stop_tokens, stop_strings = CASES[case]
    tokenizer = load_tokenizer(run)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens]
    assert tokenizer.eos_token == end
    assert json.loads((run / "generation_config.json").read_text())["eos_token_id"] == (ids if len(ids) > 1 else ids[0])
    stored = stored_chat_templates(run)
    assert stored["config"] == stored["jinja"] == tokenizer.chat_template  # inside tokenizer_config.json too
    info = json.loads((run / "afinar_run.json").read_text())["chat_template"]
    assert info["end_of_turn"] == end and info["family"] == FAMILY_OF[case] and set(stop_strings) <= set(info["stop_strings"])
    assert info["trained_tokens"] == (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
                                      if case == "llama3-base-llama3" else [])
    if template == "llama3" or case == "llama3":
        assert info["date_string"] == "26 Jul 2024" and "26 Jul 2024" in tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False)
    # The end of turn is trained after every assistant turn of a rendered sample (label ≠ -100).
    two_turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "a"},
                 {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                 {"role": "assistant", "content": "d"}]
    enc = encode(tokenizer, two_turns)
    closing = [i for i, t in enumerate(enc.input_ids) if t == tokenizer.eos_token_id and enc.labels[i] != IGNORE]
    assert len(closing) == 2 and all(enc.labels[i] == enc.input_ids[i] for i in closing)
    assert "data:\n" in (run / "recipe.yaml").read_text() and f"template: {template}" in (run / "recipe.yaml").read_text()


def test_merge_keeps_the_stop_ids(family_run):
    from afinar.merge import merge

    case, run = family_run
    merged = merge(run, run.parent / "fusionado")  # raises if the logits differ
    _, _, _, end, stop_tokens, _ = CASES[case]
    tokenizer = load_tokenizer(merged)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens]
    expected = ids if len(ids) > 1 else ids[0]
    assert json.loads((merged / "config.json").read_text())["eos_token_id"] == expected
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == expected
    assert tokenizer.eos_token == end


def test_chat_and_serve_stop_on_the_marker(family_run):
    from fastapi.testclient import TestClient

    from afinar.inference.engines import load_engine
    from afinar.inference.server import ServeOptions, create_app

    _, run = family_run
    engine = load_engine([run])
    reply = chat(engine)
    assert (reply.text, reply.stopped) == (ANSWER, True)
    client = TestClient(create_app(engine, ServeOptions()))
    answer = client.post("/v1/chat/completions", json={
        "model": next(iter(engine.personalities)), "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": QUESTIONS[0]}]}).json()
    assert answer["choices"][0]["message"]["content"] == ANSWER
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_exports_stop_in_every_runtime(family_run):
    from afinar.export.ollama import ollama_prompt, parse_modelfile
    from afinar.export.run import export
    from afinar.inference.engines import load_engine
    from tests.transformers_js.runner import generate

    case, run = family_run
    _, _, _, end, stop_tokens, _ = CASES[case]
    written = export(run, ["gguf", "ollama", "onnx"], progress=False)  # each checked: template, eos, the stop
    checked = {k: v["comprobado"] for k, v in json.loads((run / "export" / "afinar_export.json").read_text())["exports"].items()}
    assert checked["gguf-q8_0"]["se_detiene"] and checked["gguf-q8_0"]["fin_de_turno"] == load_tokenizer(run).eos_token_id
    assert checked["onnx"]["int8"]["se_detiene"]
    gguf = run / "export" / checked["ollama"]["from"].join(("gguf/", ""))
    alone = run.parent / "copiado"  # the files copied to another machine, without their run
    alone.mkdir()
    shutil.copy2(gguf, alone / gguf.name)
    shutil.copytree(run / "export" / "onnx", alone / "onnx")
    for path in (gguf, run / "export" / "onnx", alone / gguf.name, alone / "onnx"):
        engine = load_engine([path])  # llama.cpp with the GGUF, onnxruntime with the ONNX
        assert engine.name == ("llama.cpp" if path.suffix == ".gguf" else "onnxruntime")
        reply = chat(engine)
        assert (reply.text, reply.stopped) == (ANSWER, True), path
    modelfile = written["ollama"].read_text(encoding="utf-8")
    assert f"# Plantilla: {FAMILY_OF[case]}" in modelfile
    assert f'stop "{end}"' in parse_modelfile(modelfile)["parameters"]
    tokenizer = load_tokenizer(run / "export" / "onnx")
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    assert ollama_prompt(modelfile, messages).endswith(tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, *messages], tokenize=False, add_generation_prompt=True)[-40:])
    # Transformers.js stops on the same id with the export's generation_config.json.
    js = generate(run / "export" / "onnx", "fp32", [{"role": "system", "content": SYSTEM}, *messages], 24)
    assert js["ended_with_eos"] and js["text"].strip().removesuffix("<|end|>").strip() == ANSWER
    assert js["eos"][0] == tokenizer.convert_tokens_to_ids(stop_tokens[0])


def test_untrained_template_tokens_are_found():
    """Llama 3.2 base has <|eot_id|> and the headers in its vocabulary but never trained them; the instruct model did."""
    from afinar.data.chat_format import untrained_tokens

    base = make_family_tokenizer("llama3-base")
    with pytest.raises(AfinarError) as info:
        resolve(base, "auto")
    assert info.value.code == "M005" and "usuario-asistente" in info.value.hint
    cold = untrained_tokens(make_family_model("llama3-base", base), base, resolve(base, "llama3"))
    assert base.convert_ids_to_tokens(cold) == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    instruct = make_family_tokenizer("llama3")
    assert untrained_tokens(make_family_model("llama3", instruct), instruct, resolve(instruct, "auto")) == []
