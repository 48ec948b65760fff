"""Turn a GGUF file into a standard Hugging Face folder (safetensors + a faithful tokenizer).

Weights: transformers' own GGUF loader dequantises them (it also undoes llama.cpp's Q/K permutation).
Tokenizer: transformers' GGUF round-trip gets BPE/ByteLevel vocabularies wrong (LlamaTokenizer class,
`<|im_start|>` as eos, a SentencePiece decoder), so for `gpt2`-type vocabularies we rebuild it from the
GGUF metadata with the `tokenizers` library, using the pre-tokenizer llama.cpp uses for that `pre` type.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from afinar.atomic import atomic_dir
from afinar.errors import AfinarError
from afinar.models import save_tokenizer

# Bump when the conversion changes, so cached folders made by an older afinar are rebuilt.
CONVERTER_VERSION = 2  # 2: the chat template also inside tokenizer_config.json

# llama.cpp's pre-tokenizer families (llama-vocab.cpp) that we can express with `tokenizers`.
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva"}
_PLAIN_GPT2 = {"default", "gpt2", "gpt-2"}

_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def build_bpe_tokenizer(gguf_path: Path):
    """A PreTrainedTokenizerFast equal to the GGUF's own `gpt2`-type vocabulary."""
    from gguf import GGUFReader
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(str(gguf_path))
    kind = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise AfinarError(
            "M006",
            f"el tokenizador del GGUF es de tipo '{kind}'; solo se convierten vocabularios BPE (gpt2).",
            where=str(gguf_path),
            hint="usa la carpeta Hugging Face original del modelo o su id del Hub",
        )
    if pre in _DIGITS_THEN_GPT2:
        pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in _PLAIN_GPT2:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise AfinarError(
            "M006",
            f"pre-tokenizador GGUF '{pre}' no soportado (soportados: "
            f"{', '.join(sorted(_DIGITS_THEN_GPT2 | _PLAIN_GPT2))}).",
            where=str(gguf_path),
        )

    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_tokens(
        [
            AddedToken(tokens[i], special=types[i] == _TOKEN_CONTROL, normalized=False)
            for i in range(len(tokens))
            if types[i] in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
        ]
    )

    def token(key):
        idx = _field(reader, key)
        return None if idx is None else tokens[int(idx)]

    eos = token("tokenizer.ggml.eos_token_id")
    pad = token("tokenizer.ggml.padding_token_id")
    unk = token("tokenizer.ggml.unknown_token_id")
    if pad is None or pad == eos:
        # A pad distinct from eos keeps any later collator from masking the end-of-turn token.
        pad = unk
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        chat_template=_field(reader, "tokenizer.chat_template"),
        model_max_length=int(_field(reader, f"{_field(reader, 'general.architecture')}.context_length", 2048)),
        clean_up_tokenization_spaces=False,
    )


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert once into `out_dir` (atomically); returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf_path = Path(gguf_path)
    tokenizer = build_bpe_tokenizer(gguf_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise AfinarError("M007", f"transformers no puede leer esta arquitectura GGUF: {exc}", where=str(gguf_path)) from exc
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, attr, getattr(tokenizer, attr))
    model.config.name_or_path = str(out_dir)
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config = generation
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        (tmp / "afinar_source.json").write_text(
            json.dumps(
                {"gguf": str(gguf_path), "sha256": file_sha256(gguf_path), "converter_version": CONVERTER_VERSION},
                indent=2,
            ),
            encoding="utf-8",
        )
    return out_dir
