"""Any GGUF as a base: tiny family models go HF → GGUF (llama.cpp's converter and quantiser) → `convert_gguf` and come
back with llama.cpp's tokenization, their template and eos, and weights within the quantisation's error.

Tolerances, measured on these seeded models (transformers 4.57, llama-cpp-python 0.3.36):
- Weights, worst matrix, ‖imported − original‖ / ‖original‖: f16 ≈ 2e-4, q8_0 ≈ 0.0055, q6_k ≈ 0.018,
  q5_k_m ≈ 0.036, q4_k_m ≈ 0.072 (hidden 256: with hidden 64 llama.cpp stores "q4_k_m" as Q5_0/Q8_0, rows must be a
  multiple of 256 for K blocks).
- Logits of the imported model vs the original, hidden 64, on the check text: f16 max |Δ| ≤ 0.025 (0.3 % of the
  largest logit), top-1 100 %; q8_0 0.2–0.9 (2–11 %), top-1 89–99 %. These random models amplify weight noise (init
  0.2), so K-quants are judged on their weights and against llama.cpp running the same file.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from afinar import gguf_import
from afinar.errors import AfinarError
from tests.families import SPECS, make_family_tokenizer

pytest.importorskip("llama_cpp")
pytest.importorskip("sentencepiece")

# Regexes of llama.cpp's pre-tokenizers cut this differently: digit runs (1 / 1-3 / any), contractions, CJK,
# newlines and spaces before punctuation.
REGEX_TEXT = ("12345 1234567 8 it's IT'S don't we'll  I'M 'S\n\n\n  x  \t\n 你好世界 日本語 한국어 ١٢٣ ²³ café ."
              "  ¿Qué? ¡Sí!  a+b=c; x<=10 !!  \r\n fin   ")


# ---------------------------------------------------------------- helpers

def rewrite_gguf(src: Path, dst: Path, changes: dict | None = None, renames: dict | None = None,
                 tensors: bool = True) -> Path:
    """Copy a GGUF field by field (and tensor by tensor), with some fields changed (None: removed) or renamed."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    changes = dict(changes or {})
    reader = GGUFReader(str(src))
    arch = changes.pop("general.architecture", reader.fields["general.architecture"].contents())
    writer = GGUFWriter(str(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        value = changes.pop(key) if key in changes else field.contents()
        if value is not None:
            for old, new in (renames or {}).items():
                key = key.replace(old, new, 1) if key.startswith(old) else key
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)
    for key, value in changes.items():
        writer.add_key_value(key, value, GGUFValueType.STRING)
    if tensors:
        for t in reader.tensors:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)  # quantised: rows of bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def vocab_gguf(path: Path, tokenizer, pre: str, architecture: str = "llama") -> Path:
    """A vocabulary-only GGUF (no tensors) of a byte-level tokenizer, with any `tokenizer.ggml.pre`: llama.cpp loads
    it with vocab_only, whatever pre-tokenizer hash the vocabulary would have."""
    from gguf import GGUFWriter

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {**backend["model"]["vocab"], **{t["content"]: t["id"] for t in backend["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in backend["added_tokens"]}
    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    merges = backend["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_ids(path: Path, text: str) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    finally:
        llm.close()


def family_gguf(name: str, root: Path, quants=("q8_0",), hidden=64, intermediate=128, **kwargs):
    """The family's HF folder and its GGUFs: {"f16": path, quant: path}."""
    import tests.families as fam
    from afinar.export import gguf as export

    saved = fam.HIDDEN, fam.INTERMEDIATE
    fam.HIDDEN, fam.INTERMEDIATE = hidden, intermediate
    try:
        folder = fam.save_family_base(name, root / "hf", **kwargs)
    finally:
        fam.HIDDEN, fam.INTERMEDIATE = saved
    files = {"f16": export.convert(folder, root / "m-f16.gguf", "f16", progress=False,
                                   model_name=export.gguf_model_name(folder, name))}
    for kind in quants:
        files[kind] = export.quantize(files["f16"], root / f"m-{kind}.gguf", kind, progress=False)
    return folder, files


def worst_weight_error(original: Path, imported: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).state_dict()
    return max(((v - b[k]).norm() / v.norm()).item() for k, v in a.items() if v.ndim == 2 and k in b)


def logits_gap(original: Path, imported: Path, ids: list[int]) -> tuple[float, float, float]:
    """(max |Δ|, max |Δ| / max |logit|, top-1 agreement) of the two models on `ids`."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32).eval()(torch.tensor([ids])).logits[0]
        b = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32).eval()(torch.tensor([ids])).logits[0]
    gap = (a - b).abs().max().item()
    return gap, gap / a.abs().max().item(), (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def assert_faithful(folder: Path, out: Path, gguf_path: Path) -> list[int]:
    """Same ids as the original tokenizer and as llama.cpp on the check text; template, eos and the check recorded."""
    from transformers import AutoTokenizer

    original, imported = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(out)
    text = gguf_import.check_text(original)
    ids = imported.encode(text, add_special_tokens=False)
    assert ids == original.encode(text, add_special_tokens=False)
    assert ids == llama_cpp_ids(gguf_path, text)
    assert imported.chat_template == original.chat_template
    assert imported.eos_token == original.eos_token
    assert json.loads((out / "afinar_source.json").read_text(encoding="utf-8"))["tokenizer_checked"] is True
    return ids[:160]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tinyllama(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyllama")
    folder, files = family_gguf("tinyllama", root)
    return folder, files, root


@pytest.fixture(scope="module")
def kquants(tmp_path_factory):
    """TinyLlama with hidden 256, so that llama.cpp really writes K blocks."""
    root = tmp_path_factory.mktemp("kquants")
    return family_gguf("tinyllama", root, quants=("q4_k_m", "q5_k_m", "q6_k"), hidden=256, intermediate=512)


@pytest.fixture(scope="module")
def byte_level_vocab(tmp_path_factory):
    """Vocabulary-only GGUFs of the tiny qwen2 and llama3 byte-level tokenizers with each pre-tokenizer under test."""
    root = tmp_path_factory.mktemp("vocab")
    made = {}
    for family, pres in (("qwen2", ("qwen2", "smollm", "deepseek-llm")), ("llama3", ("llama-bpe", "gpt-2", "default"))):
        tok = make_family_tokenizer(family)
        for pre in pres:
            made[pre] = (tok, vocab_gguf(root / f"{family}-{pre}.gguf", tok, pre))
    return made


# ---------------------------------------------------------------- SentencePiece (fast: TinyLlama)

def test_tinyllama_q8_0_comes_back_with_llama_cpp_tokens_template_and_weights(tinyllama):
    folder, files, root = tinyllama
    for kind, max_rel, min_top1 in (("f16", 0.01, 1.0), ("q8_0", 0.15, 0.85)):
        out = gguf_import.convert_gguf(files[kind], root / f"out-{kind}")
        ids = assert_faithful(folder, out, files[kind])
        _, rel, top1 = logits_gap(folder, out, ids)
        assert rel <= max_rel and top1 >= min_top1, (kind, rel, top1)
        assert worst_weight_error(folder, out) <= {"f16": 1e-3, "q8_0": 0.01}[kind]
        generation = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
        assert generation["eos_token_id"] in (2, [2])  # </s>, the end of turn of Zephyr's template


def test_k_quants_are_real_and_dequantised_within_their_error(kquants):
    from gguf import GGUFReader

    folder, files = kquants
    limits = {"q4_k_m": ("Q4_K", 0.10), "q5_k_m": ("Q5_K", 0.05), "q6_k": ("Q6_K", 0.03)}
    for kind, (block, limit) in limits.items():
        kinds = Counter(t.tensor_type.name for t in GGUFReader(str(files[kind])).tensors)
        assert kinds[block] >= 13, kinds  # every 2-D weight but (for _m) the few llama.cpp keeps in Q6_K
        out = gguf_import.convert_gguf(files[kind], files[kind].with_suffix(".hf"))
        assert_faithful(folder, out, files[kind])
        assert worst_weight_error(folder, out) <= limit, kind


def test_without_llama_cpp_the_check_is_skipped_and_said(tinyllama, monkeypatch, capsys):
    _, files, root = tinyllama
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    out = gguf_import.convert_gguf(files["q8_0"], root / "sin-llama-cpp")
    assert "no se comprueba" in capsys.readouterr().out
    assert json.loads((out / "afinar_source.json").read_text(encoding="utf-8"))["tokenizer_checked"] is False


# ---------------------------------------------------------------- byte-level pre-tokenizers (fast: vocab-only GGUFs)

@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "smollm", "deepseek-llm", "gpt-2", "default"])
def test_pre_tokenizers_split_like_llama_cpp(byte_level_vocab, pre):
    tok, path = byte_level_vocab[pre]
    rebuilt = gguf_import.build_tokenizer(path)
    text = gguf_import.check_text(rebuilt) + REGEX_TEXT
    assert rebuilt.encode(text, add_special_tokens=False) == llama_cpp_ids(path, text)
    assert gguf_import.check_against_llama_cpp(rebuilt, path, text) is True  # also bos/eos on a short text


def test_the_pre_tokenizers_under_test_really_differ(byte_level_vocab):
    pieces = {pre: tuple(p for p, _ in gguf_import.build_tokenizer(path).backend_tokenizer.pre_tokenizer
                         .pre_tokenize_str(REGEX_TEXT))
              for pre, (_, path) in byte_level_vocab.items()}
    assert len(set(pieces.values())) == len(pieces)


def test_llama_bpe_adds_bos_as_llama_cpp_does(byte_level_vocab):
    tok, path = byte_level_vocab["llama-bpe"]
    rebuilt = gguf_import.build_tokenizer(path)
    assert rebuilt.encode("Hola")[0] == rebuilt.bos_token_id == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert gguf_import.build_tokenizer(byte_level_vocab["qwen2"][1]).encode("Hola")[0] != rebuilt.bos_token_id


def test_a_different_split_is_refused_with_where_it_differs(byte_level_vocab, monkeypatch):
    _, path = byte_level_vocab["qwen2"]
    monkeypatch.setitem(gguf_import.PRE_TOKENIZERS, "qwen2", gguf_import.PRE_TOKENIZERS["gpt-2"])
    with pytest.raises(AfinarError) as info:
        gguf_import.check_against_llama_cpp(gguf_import.build_tokenizer(path), path)
    assert info.value.code == "M006" and "a partir del token" in info.value.message and "llama.cpp" in info.value.message


# ---------------------------------------------------------------- bad input: code, Spanish, nothing written

def test_truncated_and_corrupt_files_are_m015_with_nothing_written(tinyllama, tmp_path):
    _, files, _ = tinyllama
    data = files["q8_0"].read_bytes()
    cases = {"cortado.gguf": data[: len(data) // 2], "cabecera.gguf": data[:4] + b"\xff" * 60 + data[64:],
             "sin-firma.gguf": b"GGXX" + data[4:], "vacio.gguf": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AfinarError) as info:
            gguf_import.convert_gguf(tmp_path / name, tmp_path / "out")
        assert info.value.code == "M015" and "dañado o incompleto" in info.value.message, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)


def test_unknown_pre_tokenizer_is_m006_with_the_supported_list(byte_level_vocab, tmp_path):
    tok, _ = byte_level_vocab["qwen2"]
    path = vocab_gguf(tmp_path / "raro.gguf", tok, "inventado")
    with pytest.raises(AfinarError) as info:
        gguf_import.convert_gguf(path, tmp_path / "out")
    assert info.value.code == "M006" and "'inventado'" in info.value.message
    assert "qwen2" in info.value.message and "llama-bpe" in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raro.gguf"]


def test_an_architecture_transformers_cannot_load_is_m007(tinyllama, tmp_path):
    _, files, _ = tinyllama
    # llama.cpp knows phi2 (so the vocabulary check passes), transformers' GGUF loader does not.
    path = rewrite_gguf(files["q8_0"], tmp_path / "phi2.gguf", {"general.architecture": "phi2"},
                        renames={"llama.": "phi2."})
    with pytest.raises(AfinarError) as info:
        gguf_import.convert_gguf(path, tmp_path / "out")
    assert info.value.code == "M007" and "phi2" in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phi2.gguf"]


def test_llama3_rope_scaling_is_found_from_rope_freqs():
    import numpy as np

    inv = 1.0 / 500000.0 ** (np.arange(0, 64, 2) / 64)
    for factor, original in ((8.0, 8192), (32.0, 8192), (8.0, 64)):
        divisors = gguf_import._llama3_rope_divisors(inv, factor, 1.0, 4.0, original)
        if np.allclose(divisors, 1.0) or np.allclose(divisors, factor):
            continue
        found = gguf_import._llama3_rope_scaling(divisors, 64, 500000.0)
        assert found["factor"] == factor and found["original_max_position_embeddings"] == original
    assert gguf_import._llama3_rope_scaling(np.ones(32), 64, 500000.0) == {}
    assert gguf_import._llama3_rope_scaling(np.linspace(1, 3, 32) ** 2, 64, 500000.0) is None


# ---------------------------------------------------------------- the other families (~6-9 s; with SmolLM2's vocabulary
# ~22 s: slow)

FAMILY_CASES = {
    "phi3": {},
    "gemma": {"architecture": "Gemma2ForCausalLM"},  # transformers reads gemma2/gemma3 GGUFs, not gemma (1)
    "qwen2": {"vocab": "smollm2"},  # llama.cpp's converter only takes a published byte-level vocabulary
    "llama3": {"vocab": "smollm2"},
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if "vocab" in FAMILY_CASES[n] else [])
                                  for n in FAMILY_CASES])
def test_family_q8_0_round_trip(name, tmp_path):
    folder, files = family_gguf(name, tmp_path, **FAMILY_CASES[name])
    out = gguf_import.convert_gguf(files["q8_0"], tmp_path / "out")
    ids = assert_faithful(folder, out, files["q8_0"])
    _, rel, top1 = logits_gap(folder, out, ids)
    assert rel <= 0.15 and top1 >= 0.85, (rel, top1)
    assert worst_weight_error(folder, out) <= 0.01
    generation = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    eos = generation["eos_token_id"]
    assert json.loads((folder / "config.json").read_text(encoding="utf-8"))["eos_token_id"] is not None
    from transformers import AutoTokenizer

    end_of_turn = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(SPECS[name].eos)
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])


@pytest.mark.slow
def test_qwen2_and_llama_bpe_pre_on_a_whole_model(tmp_path):
    """The converted qwen2 family GGUF (pre = smollm), its pre rewritten: the import follows llama.cpp's split."""
    folder, files = family_gguf("qwen2", tmp_path, quants=(), vocab="smollm2")
    for pre in ("qwen2", "llama-bpe"):
        path = rewrite_gguf(files["f16"], tmp_path / f"{pre}.gguf", {"tokenizer.ggml.pre": pre})
        out = gguf_import.convert_gguf(path, tmp_path / f"out-{pre}")
        from transformers import AutoTokenizer

        imported = AutoTokenizer.from_pretrained(out)
        text = gguf_import.check_text(imported) + REGEX_TEXT
        assert imported.encode(text, add_special_tokens=False) == llama_cpp_ids(path, text)


@pytest.mark.slow
def test_phi2_family_is_m007(tmp_path):
    _, files = family_gguf("phi2", tmp_path, quants=(), vocab="smollm2")
    with pytest.raises(AfinarError) as info:
        gguf_import.convert_gguf(files["f16"], tmp_path / "out")
    assert info.value.code == "M007"
    assert not (tmp_path / "out").exists()
