"""Turn a GGUF file into a standard Hugging Face folder (safetensors + a faithful tokenizer).

Weights: transformers' own GGUF loader dequantises them (F32/F16/BF16/Q8_0 and the K-quants through gguf-py; it also
undoes llama.cpp's Q/K permutation).
Tokenizer: transformers' GGUF round-trip is not faithful (wrong class, bos/eos swapped, Phi-3's tokens hard-coded, a
Unigram model where llama.cpp merges like BPE), so we rebuild it from the GGUF metadata with the `tokenizers` library
the way llama.cpp's src/llama-vocab.cpp tokenizes (llama-cpp-python 0.3.36's vendored commit):
- `gpt2` vocabularies (byte-level BPE): llama.cpp splits the text with a list of regexes chosen by
  `tokenizer.ggml.pre`, each regex splitting the pieces the previous one left (matches and the text between them
  both kept); that is `tokenizers`' Split(regex, "isolated") in sequence, then ByteLevel without its own regex. Where
  llama.cpp runs a hand-rewritten regex it keeps the tokenizer.json original in a comment: we use that original
  (Qwen2.5's and Llama 3's tokenizer.json: the same Split + ByteLevel).
- `llama` vocabularies (SentencePiece: TinyLlama, Phi-3, Gemma): llama.cpp replaces spaces with "▁", puts a "▁" in
  front of the text and after every special token (`add_space_prefix`), then merges neighbouring pieces into the
  vocabulary piece with the best score, and spells what is left as byte tokens `<0x..>`. That is a BPE model whose
  merges are every split of a vocabulary piece ranked by the piece's score, with byte fallback, behind a
  Prepend("▁") + Replace(" ", "▁") normalizer (LlamaTokenizerFast's legacy form, applied to every segment between
  special tokens as llama.cpp does).
Then the check: the rebuilt tokenizer must give llama.cpp's own ids on a fixed text (Spanish, the chat template's
rendering, digits, emoji, code), or nothing is written (M006).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from afinar.atomic import atomic_dir, file_sha256
from afinar.errors import AfinarError
from afinar.tokenizer_files import save_tokenizer

# Bump when the conversion changes, so cached folders made by an older afinar are rebuilt.
CONVERTER_VERSION = 3  # 3: every llama.cpp pre-tokenizer we can express, SentencePiece vocabularies, llama.cpp check
# 2: the chat template also inside tokenizer_config.json

_TOKEN_UNKNOWN = 2
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4
_TOKEN_BYTE = 6

# llama.cpp's regexes (src/llama-vocab.cpp, llm_tokenizer_bpe). Where it runs a rewritten form, the original.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
          r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
           r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_SEED_CODER = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LATIN = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-"
    "\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-"
    "\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113"
    "\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149"
    "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-"
    "\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0"
    "-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_DEEPSEEK3_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_DEEPSEEK3 = (
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?["
    "\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole vocabulary entry is taken as it is (Llama 3)
    add_bos: bool = False  # llama.cpp's default when the GGUF has no tokenizer.ggml.add_bos_token


_GROUPS = (
    (("default",), PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe", "chatglm-bpe"), PreTokenizer((_LLAMA3,))),
    (("glm4", "glm5"), PreTokenizer((_LLAMA3,), ignore_merges=True)),
    (("deepseek-llm",), PreTokenizer(("[\r\n]", _DEEPSEEK_LATIN, _DEEPSEEK_PUNCT, r"\s+$", _CJK, r"\p{N}+"))),
    (("deepseek-coder",), PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"))),
    (("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"),
     PreTokenizer((r"\p{N}{1,3}", _DEEPSEEK3_CJK, _DEEPSEEK3))),
    (("falcon",), PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"))),
    (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
     PreTokenizer((r"\p{N}", _GPT2))),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4"), PreTokenizer((_GPT2,))),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open", "grok-2"),
     PreTokenizer((_QWEN2,))),
    (("qwen35",), PreTokenizer((_QWEN35,))),
    (("poro-chat", "bloom", "gpt3-finnish"), PreTokenizer((_BLOOM,))),
    (("viking",), PreTokenizer((_BLOOM, r"\p{N}"))),
    (("tekken",), PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True)),
    (("gpt-4o", "llama4", "kanana2", "talkie"), PreTokenizer((_GPT4O,))),
    (("seed-coder",), PreTokenizer((_SEED_CODER,))),
)
PRE_TOKENIZERS: dict[str, PreTokenizer] = {name: pre for names, pre in _GROUPS for name in names}

# A fixed text on which the rebuilt tokenizer must give llama.cpp's ids: Spanish, digits (runs llama.cpp's regexes
# cut differently), accents, ñ, ¿¡, newlines, double spaces, tabs, emoji, code, English contractions and CJK.
CHECK_TEXT = (
    "¿Qué tal, señora Muñoz? ¡Hola! Pingüino, acción, camión: áéíóú ÁÉÍÓÚ ñÑ üÜ ç.\n"
    "Llama al 112 o al 061; π≈3,14159, 12345678 pasos, año 2024 y 7 días.\n\n"
    "Dos  espacios,   tres, y\ttabulador.  \n  Línea con sangría;\r\nfin de línea de Windows.\n\n\n"
    "Emoji: 🚑❤️👍🏽 y símbolos € % & © ™ — «comillas» “curvas” ...\n"
    "def suma(a, b):\n    return a + b  # comentario\n\tif x<=10 and y!=0: print(f\"{x:>3}\")\n"
    "It's, don't, we'll, I'M, they've 'S 're. 漢字, 日本語のテキスト, 한국어.   "
)
CHECK_CONVERSATION = [
    {"role": "system", "content": "Eres un asistente de primeros auxilios. Responde en español."},
    {"role": "user", "content": "¿Qué hago si alguien se quema con agua hirviendo?"},
    {"role": "assistant", "content": "Enfría la quemadura con agua corriente durante 20 minutos y llama al 112."},
    {"role": "user", "content": "¿Y si sale una ampolla?"},
]


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _damaged(gguf_path: Path, why: str) -> AfinarError:
    return AfinarError("M015", f"el archivo GGUF está dañado o incompleto ({why}).", where=str(gguf_path),
                       hint="vuelve a descargarlo o a exportarlo; comprueba que la copia terminó")


def open_gguf(gguf_path: Path):
    """A GGUFReader over the whole file, or M015 when the header, metadata or tensor table cannot be read."""
    from gguf import GGUFReader

    gguf_path = Path(gguf_path)
    try:
        with open(gguf_path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise AfinarError("M002", f"no se puede leer el archivo GGUF ({exc.strerror}).", where=str(gguf_path)) from None
    if magic != b"GGUF":
        raise _damaged(gguf_path, "no empieza por la firma GGUF")
    try:
        reader = GGUFReader(str(gguf_path))
    except Exception as exc:  # noqa: BLE001 - gguf-py raises ValueError, struct.error, IndexError… on bad bytes
        raise _damaged(gguf_path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    size = gguf_path.stat().st_size
    for tensor in reader.tensors:
        if int(tensor.data_offset) + int(tensor.n_bytes) > size or tensor.data.nbytes != int(tensor.n_bytes):
            raise _damaged(gguf_path, f"el tensor {tensor.name} acaba después del final del archivo")
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise AfinarError("M006", "el GGUF no trae vocabulario (tokenizer.ggml.tokens).", where=str(gguf_path))
    return reader


def _strings(reader, key) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]


def _numbers(reader, key, count: int, default) -> list:
    field = reader.fields.get(key)
    if field is None:
        return [default] * count
    return [field.parts[i].item() for i in field.data]


def build_tokenizer(gguf_path: Path, reader=None):
    """A PreTrainedTokenizerFast that tokenizes as llama.cpp does with this GGUF's vocabulary (M006 if we cannot)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    gguf_path = Path(gguf_path)
    reader = reader if reader is not None else open_gguf(gguf_path)
    kind = _field(reader, "tokenizer.ggml.model")
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    types = _numbers(reader, "tokenizer.ggml.token_type", len(tokens), 1)
    if kind == "gpt2":
        backend, add_bos = _byte_level_backend(reader, gguf_path, tokens)
    elif kind == "llama":
        add_space_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
        backend = _sentencepiece_backend(tokens, _numbers(reader, "tokenizer.ggml.scores", len(tokens), 0.0), types,
                                         add_space_prefix)
        add_bos = True
    else:
        raise AfinarError(
            "M006",
            f"el tokenizador del GGUF es de tipo '{kind}'; se convierten vocabularios BPE (gpt2) y SentencePiece (llama).",
            where=str(gguf_path),
            hint="usa la carpeta Hugging Face original del modelo o su id del Hub",
        )
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))

    # What llama.cpp cuts out before tokenizing (special=True): control, user-defined and unknown tokens. Phi-3's
    # swallow the whitespace after them, keyed on the model's name as in llama.cpp.
    name = str(_field(reader, "general.name", "")).lower()
    phi3 = "phi3" in name or "phi-3" in name
    added = []
    for text, kind_ in zip(tokens, types):
        if kind_ not in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNKNOWN):
            continue
        rstrip = phi3 and text not in ("<unk>", "<s>", "<|endoftext|>")
        added.append(AddedToken(text, special=kind_ != _TOKEN_USER_DEFINED, normalized=False, rstrip=rstrip))
    if phi3 and "</s>" in tokens and all(t.content != "</s>" for t in added):
        added.append(AddedToken("</s>", special=True, normalized=False, rstrip=True))
    backend.add_tokens(added)

    def token(key):
        idx = _field(reader, key)
        return None if idx is None or not 0 <= int(idx) < len(tokens) else tokens[int(idx)]

    bos = token("tokenizer.ggml.bos_token_id")
    eos = token("tokenizer.ggml.eos_token_id")
    _post_processor(backend, tokens, bos if add_bos else None, eos if add_eos else None, byte_level=kind == "gpt2")
    pad = token("tokenizer.ggml.padding_token_id")
    unk = token("tokenizer.ggml.unknown_token_id") or ("<unk>" if kind == "llama" and "<unk>" in tokens else None)
    if pad is None or pad == eos:
        # A pad distinct from eos keeps any later collator from masking the end-of-turn token.
        pad = unk
    architecture = _field(reader, "general.architecture")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        chat_template=_field(reader, "tokenizer.chat_template"),
        model_max_length=int(_field(reader, f"{architecture}.context_length", 2048)),
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


build_bpe_tokenizer = build_tokenizer  # its name before SentencePiece vocabularies were converted too


def _byte_level_backend(reader, gguf_path: Path, tokens: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre_name = _field(reader, "tokenizer.ggml.pre", "default")
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise AfinarError(
            "M006",
            f"pre-tokenizador GGUF '{pre_name}' no soportado: no se sabe partir el texto como llama.cpp "
            f"(soportados: {', '.join(sorted(PRE_TOKENIZERS))}).",
            where=str(gguf_path),
            hint="usa la carpeta Hugging Face original del modelo o su id del Hub",
        )
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                                   ignore_merges=pre.ignore_merges))
    if pre.regexes[-1] == _GPT2 and set(pre.regexes[:-1]) <= {r"\p{N}"}:
        # What GPT-2's and SmolLM2's own tokenizer.json say (ByteLevel's regex is GPT-2's; Digits splits each \p{N}).
        steps = [pre_tokenizers.Digits(individual_digits=True)] if len(pre.regexes) == 2 else []
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in pre.regexes]
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False))
    backend.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    return backend, pre.add_bos


def _sentencepiece_backend(tokens: list[str], scores: list[float], types: list[int], add_space_prefix: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {tok: i for i, tok in enumerate(tokens)}
    # llama.cpp merges the neighbouring pair whose joined text is the best-scoring vocabulary entry (ties: leftmost);
    # as BPE merges: every split of every entry into two entries, ranked by the entry's score.
    merges = []
    for i in sorted(range(len(tokens)), key=lambda i: (-scores[i], i)):
        text = tokens[i]
        if types[i] == _TOKEN_BYTE or len(text) < 2:
            continue
        merges.extend((text[:k], text[k:]) for k in range(1, len(text)) if text[:k] in vocab and text[k:] in vocab)
    unk = next((t for t, kind in zip(tokens, types) if kind == _TOKEN_UNKNOWN), None)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("▁")] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(content=" ", left=1, right=0)] if add_space_prefix else [])
    )
    return backend


def _post_processor(backend, tokens: list[str], bos: str | None, eos: str | None, byte_level: bool) -> None:
    from tokenizers import processors

    steps = [processors.ByteLevel(trim_offsets=False)] if byte_level else []
    if bos or eos:
        special = [(t, tokens.index(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
        single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
        pair = single + " " + " ".join([*([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])])
        steps.append(processors.TemplateProcessing(single=single, pair=pair, special_tokens=special))
    if steps:
        backend.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)


def check_text(tokenizer) -> str:
    """CHECK_TEXT, then the chat template's rendering of a short conversation (so its special tokens appear)."""
    if not tokenizer.chat_template:
        return CHECK_TEXT
    for messages in (CHECK_CONVERSATION, CHECK_CONVERSATION[1:]):  # some templates refuse a system message (Gemma)
        try:
            return CHECK_TEXT + "\n" + tokenizer.apply_chat_template(messages, tokenize=False,
                                                                      add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - jinja's raise_exception, TemplateError…
            continue
    return CHECK_TEXT


def check_against_llama_cpp(tokenizer, gguf_path: Path, text: str | None = None) -> bool:
    """M006 unless `tokenizer` gives llama.cpp's ids for this GGUF; False (with a warning) without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        print("Aviso: llama-cpp-python no está instalado (extra `llamacpp`): no se comprueba que el tokenizador "
              "convertido coincida con el de llama.cpp.")
        return False
    text = check_text(tokenizer) if text is None else text
    short = "Hola, ¿qué tal?"
    try:
        with _quiet_stderr():  # llama.cpp logs a context-size note even with verbose=False
            llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    except Exception as exc:  # noqa: BLE001 - llama_cpp raises ValueError("Failed to load model…")
        raise AfinarError("M006", f"llama.cpp no puede leer el vocabulario de este GGUF ({exc}).",
                          where=str(gguf_path)) from None
    try:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        ours = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids  # no max-length warning
        if ours != theirs:
            raise _mismatch(gguf_path, ours, theirs, tokenizer, llm.detokenize)
        theirs = llm.tokenize(short.encode("utf-8"), add_bos=True, special=True)
        ours = tokenizer.backend_tokenizer.encode(short, add_special_tokens=True).ids
        if ours != theirs:
            raise AfinarError("M006", "el tokenizador reconstruido no añade los mismos tokens especiales que llama.cpp "
                                      f"(bos/eos): afinar da {ours}, llama.cpp {theirs} para {short!r}.",
                              where=str(gguf_path))
    finally:
        llm.close()
    return True


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _mismatch(gguf_path, ours: list[int], theirs: list[int], tokenizer, detokenize) -> AfinarError:
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    before = tokenizer.decode(ours[max(0, at - 8):at])

    def show(ids):
        return repr(detokenize(ids, special=True).decode("utf-8", "replace")) if ids else "(nada)"

    return AfinarError(
        "M006",
        f"el tokenizador reconstruido no parte el texto como llama.cpp a partir del token {at} (tras {before!r}): "
        f"afinar da {show(ours[at:at + 4])} = {ours[at:at + 4]}, llama.cpp {show(theirs[at:at + 4])} = "
        f"{theirs[at:at + 4]} ({len(ours)} y {len(theirs)} tokens en total). No se convierte: el modelo vería otro "
        "texto que en llama.cpp.",
        where=str(gguf_path),
        hint="usa la carpeta Hugging Face original del modelo o su id del Hub",
    )


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert once into `out_dir` (atomically); returns `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = open_gguf(gguf_path)
    tokenizer = build_tokenizer(gguf_path, reader)
    checked = check_against_llama_cpp(tokenizer, gguf_path)
    architecture = _field(reader, "general.architecture")
    end_ids = [int(v) for v in (_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom"))
               if v is not None]
    try:
        config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        _complete_config(reader, architecture, config, gguf_path)
        del reader  # its memory map; transformers opens the file again
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, config=config, dtype=torch.float32
        )
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:  # RuntimeError: tensor shapes
        raise AfinarError("M007", f"transformers no puede leer la arquitectura GGUF '{architecture}': {exc}",
                          where=str(gguf_path),
                          hint="usa la carpeta Hugging Face original del modelo o su id del Hub") from exc
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, attr, getattr(tokenizer, attr))
    model.config.name_or_path = str(out_dir)
    end_ids = list(dict.fromkeys([tokenizer.eos_token_id, *end_ids]))  # eos first, then end of turn / message
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids[0] if len(end_ids) == 1 else end_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config = generation
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer.chat_template:
            save_tokenizer(tokenizer, tmp)
        else:  # a base model: the recipe's data.template gives it one later
            tokenizer.save_pretrained(tmp)
        (tmp / "afinar_source.json").write_text(
            json.dumps(
                {"gguf": str(gguf_path), "sha256": file_sha256(gguf_path), "converter_version": CONVERTER_VERSION,
                 "tokenizer_checked": checked},
                indent=2,
            ),
            encoding="utf-8",
        )
    return out_dir


def _complete_config(reader, architecture: str, config, gguf_path: Path) -> None:
    """What transformers' GGUF loader leaves out of the config and llama.cpp computes from the file (M007 if we can't).

    - Llama 3.1+ rope scaling: llama.cpp keeps only its result, the `rope_freqs` tensor (one divisor per frequency);
      we find the "llama3" rope_scaling that gives back exactly those divisors.
    - Gemma 2/3: llama.cpp scales queries by 1/sqrt(head size) (1/sqrt(hidden/heads) for the 27B models), transformers
      by 1/sqrt(query_pre_attn_scalar), which the GGUF does not carry (transformers' default: 256).
    """
    import numpy as np

    tensors = {t.name: t for t in reader.tensors}
    if any(name.startswith("rope_factors") for name in tensors):
        raise AfinarError("M007", "este GGUF trae factores de RoPE largos/cortos (LongRoPE, p. ej. Phi-3.5) que el "
                                  "cargador GGUF de transformers descarta: el modelo convertido no sería el mismo.",
                          where=str(gguf_path), hint="usa la carpeta Hugging Face original del modelo o su id del Hub")
    if "rope_freqs.weight" in tensors:
        divisors = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float64).reshape(-1)
        dim = int(_field(reader, f"{architecture}.rope.dimension_count", 2 * len(divisors)))
        base = float(_field(reader, f"{architecture}.rope.freq_base", 10000.0))
        scaling = _llama3_rope_scaling(divisors, dim, base)
        if scaling is None:
            raise AfinarError("M007", "no se reconoce el escalado de RoPE de este GGUF (tensor rope_freqs): el modelo "
                                      "convertido no sería el mismo.", where=str(gguf_path),
                              hint="usa la carpeta Hugging Face original del modelo o su id del Hub")
        if scaling:
            config.rope_scaling = scaling
    if architecture in ("gemma2", "gemma3"):
        layers = int(_field(reader, f"{architecture}.block_count", 0))
        heads = int(_field(reader, f"{architecture}.attention.head_count", 1))
        hidden = int(_field(reader, f"{architecture}.embedding_length", 0))
        key_length = int(_field(reader, f"{architecture}.attention.key_length", hidden // heads))
        big = layers == (46 if architecture == "gemma2" else 62)  # llama.cpp's LLM_TYPE_27B
        config.query_pre_attn_scalar = hidden // heads if big else key_length


def _llama3_rope_divisors(inv_freq, factor: float, low: float, high: float, original: float):
    """llama.cpp's rope_freqs for Llama 3's rope scaling (convert_hf_to_gguf.py = transformers' "llama3")."""
    import numpy as np

    wavelen = 2 * np.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    medium = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, medium))


def _llama3_rope_scaling(divisors, dim: int, base: float) -> dict | None:
    """The "llama3" rope_scaling giving these divisors ({} when none is applied), None when none fits."""
    import numpy as np

    factor = float(divisors.max())
    if np.allclose(divisors, 1.0):
        return {}
    inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if len(inv_freq) != len(divisors):
        return None
    low, high = 1.0, 4.0  # Llama 3.1/3.2/3.3's values
    wavelen = 2 * np.pi / inv_freq
    candidates = [8192.0]
    for d, w in zip(divisors, wavelen):
        if 1.0 + 1e-6 < d < factor - 1e-6:
            smooth = (1 / d - 1 / factor) / (1 - 1 / factor)
            candidates.append(float(round(w * (smooth * (high - low) + low))))
    for original in candidates:
        if np.allclose(_llama3_rope_divisors(inv_freq, factor, low, high, original), divisors, rtol=1e-4):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": int(original)}
    return None
