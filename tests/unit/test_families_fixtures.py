"""The tiny per-family fixtures of tests/families.py: each saved folder loads, runs, and renders its real template."""
import json

import pytest

from tests.families import FAMILIES, SPECS, SPM_FAMILIES, save_family_base

SYSTEM = {"role": "system", "content": "Eres un asistente de primeros auxilios."}
USER = {"role": "user", "content": "¿Qué hago con una quemadura?"}
ASSISTANT = {"role": "assistant", "content": "Enfríala con agua corriente."}
DATE = "26 Jul 2024"  # Llama 3.2's template prints today's date unless date_string is given

# (system + user + assistant, no generation prompt; Gemma: user + assistant) and (user alone + generation prompt),
# written out by hand from the upstream templates: a template copied wrong fails here.
EXPECTED = {
    "tinyllama": {
        "full": ("<|system|>\nEres un asistente de primeros auxilios.</s>\n"
                 "<|user|>\n¿Qué hago con una quemadura?</s>\n"
                 "<|assistant|>\nEnfríala con agua corriente.</s>\n"),
        "prompt": "<|user|>\n¿Qué hago con una quemadura?</s>\n<|assistant|>\n",
    },
    "qwen2": {
        "full": ("<|im_start|>system\nEres un asistente de primeros auxilios.<|im_end|>\n"
                 "<|im_start|>user\n¿Qué hago con una quemadura?<|im_end|>\n"
                 "<|im_start|>assistant\nEnfríala con agua corriente.<|im_end|>\n"),
        "prompt": ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                   "<|im_start|>user\n¿Qué hago con una quemadura?<|im_end|>\n<|im_start|>assistant\n"),
    },
    "llama3": {
        "full": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                 "Eres un asistente de primeros auxilios.<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\n¿Qué hago con una quemadura?<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\nEnfríala con agua corriente.<|eot_id|>"),
        "prompt": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                   "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\n¿Qué hago con una quemadura?<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    },
    "phi3": {
        "full": ("<|system|>\nEres un asistente de primeros auxilios.<|end|>\n"
                 "<|user|>\n¿Qué hago con una quemadura?<|end|>\n"
                 "<|assistant|>\nEnfríala con agua corriente.<|end|>\n<|endoftext|>"),
        "prompt": "<|user|>\n¿Qué hago con una quemadura?<|end|>\n<|assistant|>\n",
    },
    "gemma": {
        "full": ("<bos><start_of_turn>user\n¿Qué hago con una quemadura?<end_of_turn>\n"
                 "<start_of_turn>model\nEnfríala con agua corriente.<end_of_turn>\n"),
        "prompt": "<bos><start_of_turn>user\n¿Qué hago con una quemadura?<end_of_turn>\n<start_of_turn>model\n",
    },
}
TOKENS = {  # family → (bos, eos, pad, generation_config eos) as token strings
    "tinyllama": ("<s>", "</s>", "</s>", ["</s>"]),
    "qwen2": (None, "<|im_end|>", "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"]),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", None, ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]),
    "llama3-base": ("<|begin_of_text|>", "<|end_of_text|>", None, ["<|end_of_text|>"]),
    "phi2": ("<|endoftext|>", "<|endoftext|>", None, ["<|endoftext|>"]),
    "phi3": ("<s>", "<|endoftext|>", "<|endoftext|>", ["<|end|>", "<|assistant|>", "<|endoftext|>"]),
    "gemma": ("<bos>", "<eos>", "<pad>", ["<eos>"]),
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, saved folder), one folder per family for the module."""
    name = request.param
    if name in SPM_FAMILIES:
        pytest.importorskip("sentencepiece", reason="the SentencePiece families are trained with sentencepiece")
    return name, save_family_base(name, tmp_path_factory.mktemp(name))


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)


def test_folder_loads_and_runs(family):
    import torch

    name, folder = family
    tokenizer, model = _load(folder)
    assert type(model).__name__ == SPECS[name].architecture
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.tie_word_embeddings is SPECS[name].tie
    batch = tokenizer(["Enfría la quemadura con agua.", "Llama al 112."], return_tensors="pt", padding=True) \
        if tokenizer.pad_token else tokenizer("Enfría la quemadura con agua.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(logits).all()


def test_special_tokens_and_eos_lists(family):
    name, folder = family
    tokenizer, model = _load(folder)
    bos, eos, pad, generation_eos = TOKENS[name]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (bos, eos, pad)
    for token in SPECS[name].added + tuple(t for t in (bos, eos, pad) if t):
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert ids == [tokenizer.convert_tokens_to_ids(token)], f"{token} is not one token"
    gen = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    expected = [tokenizer.convert_tokens_to_ids(t) for t in generation_eos]
    assert gen["eos_token_id"] == (expected[0] if len(expected) == 1 else expected)
    assert model.config.bos_token_id == (tokenizer.bos_token_id if bos else None)
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_template_is_the_families_real_one(family):
    from jinja2.exceptions import TemplateError

    name, folder = family
    tokenizer, _ = _load(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if name not in EXPECTED:  # base models: no template anywhere
        assert tokenizer.chat_template is None and "chat_template" not in config
        assert not (folder / "chat_template.jinja").exists()
        return
    assert config["chat_template"] == (folder / "chat_template.jinja").read_text(encoding="utf-8") \
        == tokenizer.chat_template == SPECS[name].template
    expected = EXPECTED[name]
    conversation = [USER, ASSISTANT] if name == "gemma" else [SYSTEM, USER, ASSISTANT]
    assert tokenizer.apply_chat_template(conversation, tokenize=False, date_string=DATE) == expected["full"]
    assert tokenizer.apply_chat_template([USER], tokenize=False, add_generation_prompt=True, date_string=DATE) \
        == expected["prompt"]
    if name == "gemma":
        with pytest.raises(TemplateError, match="System role not supported"):
            tokenizer.apply_chat_template([SYSTEM, USER], tokenize=False)
