"""Shared fixtures: a tiny random Llama with a small ChatML tokenizer, built here from a config (no network)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CORPUS = [
    "Enfría la quemadura con agua corriente durante veinte minutos.",
    "Llama al 112 si la persona no respira o no responde.",
    "Coloca a la persona en posición lateral de seguridad.",
    "¿Qué hago si alguien se atraganta? Anímale a toser.",
    "Presiona la herida con una gasa limpia para detener la hemorragia.",
    "No pongas hielo ni mantequilla sobre una quemadura.",
    "Los números 0 1 2 3 4 5 6 7 8 9 y los signos , . : ; ¿ ? ¡ ! ( ) [ ] { } \" ' - _ / áéíóúñü",
]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer():
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 5, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
        clean_up_tokenization_spaces=False,
    )


def make_tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny base model folder (safetensors + tokenizer), like a converted HF model."""
    folder = tmp_path_factory.mktemp("tiny-base")
    make_tiny_model(tokenizer).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows)
    return path


def qa_rows(n: int) -> list[dict]:
    return [
        {"instruction": f"Pregunta número {i}: ¿qué hago con la quemadura {i}?", "output": f"Enfría con agua {i} minutos y llama al 112."}
        for i in range(n)
    ]


def train_tiny_run(folder: Path, tiny_base: Path, name: str, rows: int, train: dict, **sections) -> Path:
    """Train a tiny run in `folder` on `rows` first-aid-like rows; `sections` override recipe sections."""
    from afinar.config import recipe_from_dict
    from afinar.train import train as run_training

    data = write_jsonl(folder / "datos.jsonl", qa_rows(rows))
    recipe = {
        "name": name,
        "model": {"base": str(tiny_base)},
        "data": {"sources": [{"path": str(data)}], "max_length": 256, "system_prompt": "Eres un asistente.",
                 **sections.pop("data", {})},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "train": {"batch_size": 4, "lr": 1e-2, "precision": "fp32", **train},
        "output_dir": str(folder / "run"),
        **sections,
    }
    return run_training(recipe_from_dict(recipe), progress=False)


@pytest.fixture
def tiny_recipe(tmp_path, tiny_base):
    """A recipe dict on the tiny base, with its own data file; tests adjust and validate it."""
    data = write_jsonl(tmp_path / "datos.jsonl", qa_rows(40))
    return {
        "name": "tiny",
        "model": {"base": str(tiny_base)},
        "data": {"sources": [{"path": str(data)}], "max_length": 128, "system_prompt": "Eres un asistente."},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        "train": {
            "max_steps": 6, "batch_size": 4, "grad_accum": 2, "lr": 1e-3, "eval_every": 3, "save_every": 2,
            "keep_last": 2, "precision": "fp32", "seed": 7, "warmup_ratio": 0.1,
        },
        "output_dir": str(tmp_path / "run"),
    }


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Tokenized-data cache of the tests apart from the user's (a fresh one per session, removed at its end).
    if "AFINAR_DATA_CACHE" not in os.environ:
        import tempfile

        os.environ["AFINAR_DATA_CACHE"] = config._afinar_data_cache = tempfile.mkdtemp(prefix="afinar-tokenized-")


def pytest_unconfigure(config):
    folder = getattr(config, "_afinar_data_cache", None)
    if folder:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        del os.environ["AFINAR_DATA_CACHE"]


@pytest.fixture(scope="session")
def smol_tokenizer_base(tmp_path_factory) -> Path:
    """A tiny random Llama with the embedded SmolLM2's real tokenizer (llama.cpp knows its pre-tokenizer, so GGUF
    conversion works). Larger init than usual so greedy choices are not near-ties that half precision could flip."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from afinar.gguf_import import build_bpe_tokenizer
    from afinar.models import embedded_gguf_path

    tok = build_bpe_tokenizer(embedded_gguf_path())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True, initializer_range=0.2,
    )
    folder = tmp_path_factory.mktemp("smol-tok-base")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smol_run(tmp_path_factory, smol_tokenizer_base) -> Path:
    """A tiny trained run whose tokenizer llama.cpp knows: every export format works on it."""
    return train_tiny_run(tmp_path_factory.mktemp("smol-run"), smol_tokenizer_base, "mini", 16, {"max_steps": 2, "seed": 3},
                          generation={"max_new_tokens": 32})


@pytest.fixture(scope="session")
def smol_export(smol_run) -> Path:
    """`afinar export RUN --formato todo` from the CLI, once for the session; returns RUN/export."""
    from afinar.cli import main

    assert main(["export", str(smol_run), "--formato", "todo", "--sin-progreso"]) == 0
    return smol_run / "export"
