"""Tiny models of each base family the tool targets, built here, seeded, with no network.

For every family: a tiny tokenizer trained on a small Spanish corpus that carries the family's *real* chat template
(verbatim copies, sources below) and its real special tokens with the family's bos/eos/pad/unk choices, a 2-layer
model of the family's architecture with those ids in its config, and `save_family_base` that writes a complete
Hugging Face folder (model.safetensors, config.json, generation_config.json with the family's eos list, tokenizer
files, the template inside tokenizer_config.json and in chat_template.jinja).

Tokenizers follow the real ones' kind, which is also what llama.cpp's converter needs:
- SentencePiece families (tinyllama, phi3, gemma): a SentencePiece BPE model trained here (byte fallback), saved as
  tokenizer.model, with the fast tokenizer converted from it by transformers → `convert_hf_to_gguf.py` takes its
  SentencePiece path (no pre-tokenizer hash). Needs the `sentencepiece` package (extra `llamacpp`) and protobuf.
- Byte-level BPE families (qwen2, llama3, llama3-base, phi2): a `tokenizers` BPE trained here, like
  tests/conftest.py `make_tokenizer`. llama.cpp's converter refuses these ("BPE pre-tokenizer was not recognized"):
  it identifies the pre-tokenizer by hashing the ids of a fixed text, which only a published vocabulary matches.
  `vocab="smollm2"` instead uses the embedded SmolLM2 byte-level vocabulary (hash known to llama.cpp as "smollm",
  the path tests/conftest.py `smol_tokenizer_base` takes) with the family's special tokens appended; then
  the converter accepts it. That vocabulary has 49152 entries and takes ~5 s to read, so it is opt-in. With it,
  llama3/llama3-base do not prepend <|begin_of_text|> when tokenizing plain text (the template still writes it).

Checked (transformers 4.57, llama-cpp-python 0.3.36's converter, optimum-onnx 0.1): every family loads with
AutoTokenizer/AutoModelForCausalLM and exports with optimum `text-generation-with-past`; tinyllama, phi3 and gemma
convert to GGUF and llama.cpp tokenizes their chat renders as transformers does; qwen2, llama3, llama3-base and phi2
convert only with vocab="smollm2". Gemma is GemmaForCausalLM (gemma-2b-it's architecture);
`architecture="Gemma2ForCausalLM"` works as well in all three.

Phi-3 trap: its role/end tokens strip the whitespace after them (rstrip, as in Phi-3.5's tokenizer), and llama.cpp
applies that only when the GGUF's general.name contains "phi3" or "phi-3" (llama-vocab.cpp); a GGUF named otherwise
tokenizes "<|user|>\n…" differently from transformers. The converter guesses general.name (model card, config,
then the folder name: a folder "modelo" gave "Modelo") unless given --model-name.

Template sources (text copied byte for byte):
- tinyllama: TinyLlama/TinyLlama-1.1B-Chat-v1.0 tokenizer_config.json "chat_template" (the Zephyr template), as in
  ollama/ollama template/index.json (name "zephyr") @fb30760 and alignment-handbook's DEFAULT_CHAT_TEMPLATE.
- qwen2: Qwen/Qwen2.5-*-Instruct, huggingface/trl trl/chat_templates/qwen2_5.jinja @f2cd577 (TRL compares it for
  equality with the checkpoints' template).
- llama3: meta-llama/Llama-3.2-*-Instruct, huggingface/trl trl/chat_templates/llama3_2.jinja @f2cd577.
- phi3: microsoft/Phi-3.5-mini-instruct, huggingface/trl trl/chat_templates/phi3_5.jinja @f2cd577 (same string in
  llama.cpp's tests as PHI3_5_CHAT_TEMPLATE).
- gemma: google/gemma-2b-it and gemma-2-2b-it (identical), huggingface/trl trl/chat_templates/gemma.jinja @f2cd577
  (= ollama template/index.json "gemma-instruct"). It refuses a system message: "System role not supported".
"""
from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import CORPUS as FIRST_AID

FAMILIES = ("tinyllama", "qwen2", "llama3", "llama3-base", "phi2", "phi3", "gemma")
SPM_FAMILIES = ("tinyllama", "phi3", "gemma")

CORPUS = [
    *FIRST_AID[:6],  # tests/conftest.py's sentences, then what chats and the guides' formats add
    "Eres un asistente de primeros auxilios. Responde en español, con frases cortas.",
    "Hola, ¿cómo estás? Muy bien, gracias. ¿En qué puedo ayudarte hoy?",
    "Los números 0 1 2 3 4 5 6 7 8 9 y los signos , . : ; ¿ ? ¡ ! ( ) [ ] { } \" ' - _ / áéíóúñü ÁÉÍÓÚÑÜ",
    "Una línea\tcon tabulador y otra\ncon salto de línea.",
]

ZEPHYR = r"""{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

QWEN2_5 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

LLAMA3_2 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

PHI3_5 = r"""{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'user' %}{{'<|user|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>
' + message['content'] + '<|end|>
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>
' }}{% else %}{{ eos_token }}{% endif %}"""

GEMMA = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}"""

_PHI3_ADDED = (  # Phi-3.5-mini-instruct's added tokens 32000…32010, in order; all but <|endoftext|> strip spaces right
    "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
    "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>",
)
_LLAMA3_ADDED = (  # Llama 3.x's named special tokens (the reserved ones left out), in id order
    "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
)


# Llama 3.2's rope: theta 500000 and "llama3" scaling, scaled down so original × factor = MAX_POSITIONS (the real
# 8192 × 32 would exceed the tiny context and transformers warns); some of the 8 frequencies still get rescaled.
_LLAMA3_ROPE = {"rope_theta": 500000.0, "rope_scaling": {
    "factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 64,
    "rope_type": "llama3"}}


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str  # the transformers class name, also config.json "architectures"
    template: str | None
    bos: str | None
    eos: str  # tokenizer eos
    pad: str | None
    unk: str | None
    added: tuple = ()  # special tokens appended to the trained vocabulary (byte-level families and phi3)
    generation_eos: tuple = ()  # generation_config.json eos_token_id, as token strings (a list when > 1)
    config_eos: tuple = ()  # config.json eos_token_id, as token strings (a list when > 1)
    tie: bool = False
    add_bos: bool = False  # whether tokenizing plain text prepends bos (post-processor)
    config: dict = field(default_factory=dict)  # architecture-specific config fields


SPECS = {
    "tinyllama": Family("tinyllama", "LlamaForCausalLM", ZEPHYR, "<s>", "</s>", "</s>", "<unk>",
                        generation_eos=("</s>",), config_eos=("</s>",), tie=False, add_bos=True),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", QWEN2_5, None, "<|im_end|>", "<|endoftext|>", None,
                    added=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    generation_eos=("<|im_end|>", "<|endoftext|>"), config_eos=("<|im_end|>",), tie=True,
                    config={"use_sliding_window": False}),
    "llama3": Family("llama3", "LlamaForCausalLM", LLAMA3_2, "<|begin_of_text|>", "<|eot_id|>", None, None,
                     added=_LLAMA3_ADDED, generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
                     config_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), tie=True, add_bos=True,
                     config=_LLAMA3_ROPE),
    "llama3-base": Family("llama3-base", "LlamaForCausalLM", None, "<|begin_of_text|>", "<|end_of_text|>", None,
                          None, added=_LLAMA3_ADDED, generation_eos=("<|end_of_text|>",),
                          config_eos=("<|end_of_text|>",), tie=True, add_bos=True,
                          config=_LLAMA3_ROPE),
    "phi2": Family("phi2", "PhiForCausalLM", None, "<|endoftext|>", "<|endoftext|>", None, "<|endoftext|>",
                   added=("<|endoftext|>",), generation_eos=("<|endoftext|>",), config_eos=("<|endoftext|>",),
                   tie=False, config={"partial_rotary_factor": 0.5}),
    "phi3": Family("phi3", "Phi3ForCausalLM", PHI3_5, "<s>", "<|endoftext|>", "<|endoftext|>", "<unk>",
                   added=_PHI3_ADDED, generation_eos=("<|end|>", "<|assistant|>", "<|endoftext|>"),
                   config_eos=("<|endoftext|>",), tie=False, add_bos=False),
    "gemma": Family("gemma", "GemmaForCausalLM", GEMMA, "<bos>", "<eos>", "<pad>", "<unk>",
                    added=("<start_of_turn>", "<end_of_turn>"), generation_eos=("<eos>",), config_eos=("<eos>",),
                    tie=True, add_bos=True, config={"hidden_activation": "gelu_pytorch_tanh"}),
}

# Sizes shared by every family: tiny, fast on CPU, dimensions every exporter accepts.
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, MAX_POSITIONS = 64, 128, 2, 4, 2, 512
_SPM_CACHE = Path(tempfile.gettempdir()) / "afinar-test-families"


# ---------------------------------------------------------------- tokenizers

def make_family_tokenizer(name: str, vocab: str = "tiny"):
    """The family's tokenizer: trained here ("tiny"), or, for byte-level families, SmolLM2's vocabulary ("smollm2")."""
    spec = SPECS[name]
    if vocab not in ("tiny", "smollm2"):
        raise ValueError(f"vocab must be 'tiny' or 'smollm2', not {vocab!r}")
    if name in SPM_FAMILIES:
        if vocab != "tiny":
            raise ValueError(f"{name} has a SentencePiece tokenizer; llama.cpp converts it as is (vocab='tiny')")
        return _spm_tokenizer(spec)
    return _bpe_tokenizer(spec, vocab)


def _bpe_tokenizer(spec: Family, vocab: str):
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if vocab == "smollm2":
        from afinar.gguf_import import build_bpe_tokenizer
        from afinar.models import embedded_gguf_path

        backend = Tokenizer.from_str(build_bpe_tokenizer(embedded_gguf_path()).backend_tokenizer.to_str())
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        backend.train_from_iterator(CORPUS * 5, trainer=trainer)
    present = backend.get_vocab()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.added if t not in present])
    byte_level = processors.ByteLevel(trim_offsets=False)
    if spec.add_bos and vocab == "tiny":
        # Llama 3's tokenizer.json: ByteLevel then a TemplateProcessing that prepends <|begin_of_text|>. Left out with
        # the SmolLM2 vocabulary: a bos in every encoding changes the ids llama.cpp hashes, and the hash check fails.
        bos = (spec.bos, backend.token_to_id(spec.bos))
        backend.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{spec.bos}:0 $A:0", pair=f"{spec.bos}:0 $A:0 {spec.bos}:1 $B:1", special_tokens=[bos])])
    else:
        backend.post_processor = byte_level
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec.bos, eos_token=spec.eos,
                                  unk_token=spec.unk, pad_token=spec.pad, chat_template=spec.template,
                                  clean_up_tokenization_spaces=False, model_max_length=MAX_POSITIONS)
    return tok


def _spm_model(spec: Family) -> Path:
    """Train (once per machine; deterministic) the family's SentencePiece BPE model and return its path."""
    import io

    import sentencepiece as spm

    if spec.name == "gemma":  # Gemma: <pad> <eos> <bos> <unk> first, no dummy prefix, turn markers in the model
        options = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3, "pad_piece": "<pad>", "eos_piece": "<eos>",
                   "bos_piece": "<bos>", "unk_piece": "<unk>", "add_dummy_prefix": False,
                   "user_defined_symbols": list(spec.added)}
    else:  # Llama 2's layout (TinyLlama, Phi-3): <unk> <s> </s>, dummy prefix
        options = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1, "add_dummy_prefix": True}
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5), model_writer=buffer, model_type="bpe", vocab_size=420,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True, num_threads=1,
        minloglevel=2, **options)
    data = buffer.getvalue()
    path = _SPM_CACHE / f"{spec.name}-{hashlib.sha256(data).hexdigest()[:16]}.model"
    if not path.is_file():
        _SPM_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(data)}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def _spm_tokenizer(spec: Family):
    from tokenizers import AddedToken
    from transformers import GemmaTokenizerFast, LlamaTokenizerFast

    model = _spm_model(spec)
    if spec.name == "gemma":
        converted = GemmaTokenizerFast(vocab_file=str(model))
        tok = GemmaTokenizerFast(tokenizer_object=converted.backend_tokenizer, vocab_file=str(model),
                                 add_bos_token=spec.add_bos, additional_special_tokens=list(spec.added),
                                 chat_template=spec.template, model_max_length=MAX_POSITIONS)
    else:
        # Llama 2's tokenizer.json (legacy): Prepend("▁") + Replace(" ", "▁"), byte fallback.
        converted = LlamaTokenizerFast(vocab_file=str(model), legacy=True, add_prefix_space=True)
        tok = LlamaTokenizerFast(tokenizer_object=converted.backend_tokenizer, vocab_file=str(model), legacy=False,
                                 add_bos_token=spec.add_bos, add_eos_token=False, chat_template=spec.template,
                                 model_max_length=MAX_POSITIONS, clean_up_tokenization_spaces=False)
        if spec.added:  # Phi-3.5: added after the SentencePiece vocabulary, as in its tokenizer.json
            tok.add_tokens([AddedToken(t, special=True, normalized=False, rstrip=t != "<|endoftext|>")
                            for t in spec.added], special_tokens=True)
        tok.pad_token = spec.pad
        tok.eos_token = spec.eos
    return tok


# ---------------------------------------------------------------- models

def _ids(tokenizer, tokens: tuple):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    return ids[0] if len(ids) == 1 else ids


def family_config(name: str, tokenizer, architecture: str | None = None):
    """The tiny config of the family (architecture overridable, e.g. Gemma2ForCausalLM for a check)."""
    import transformers

    spec = SPECS[name]
    architecture = architecture or spec.architecture
    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    ids = {
        "bos_token_id": tokenizer.convert_tokens_to_ids(spec.bos) if spec.bos else None,
        "eos_token_id": _ids(tokenizer, spec.config_eos),
        "pad_token_id": tokenizer.convert_tokens_to_ids(spec.pad) if spec.pad else None,
    }
    extra = copy.deepcopy(spec.config)  # transformers may edit rope_scaling in place
    intermediate = INTERMEDIATE
    if architecture == "PhiForCausalLM":
        heads = {"num_attention_heads": HEADS, "num_key_value_heads": HEADS}  # phi-2: no GQA
        # llama.cpp's converter writes phi2's feed-forward length as 4 × hidden (as in phi-2 itself) whatever the
        # config says; any other size converts but fails to load ("tensor 'blk.0.ffn_down.weight' has wrong shape").
        intermediate = 4 * HIDDEN
    else:
        heads = {"num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS}
    if architecture.startswith("Gemma"):
        extra["head_dim"] = HIDDEN // HEADS
    if architecture == "Gemma2ForCausalLM":
        extra.update(query_pre_attn_scalar=HIDDEN // HEADS, sliding_window=MAX_POSITIONS)
    return config_class(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=intermediate, num_hidden_layers=LAYERS,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=spec.tie, initializer_range=0.2,
        architectures=[architecture], **heads, **ids, **extra)


# Rows a base checkpoint has but never trained (unslothai/unsloth#915: Llama 3 base's chat markers).
UNTRAINED = {"llama3-base": ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>")}


def make_family_model(name: str, tokenizer, seed: int = 0, architecture: str | None = None):
    """A seeded random model of the family, its config's special ids taken from `tokenizer`."""
    import torch
    import transformers
    from transformers import GenerationConfig

    spec = SPECS[name]
    config = family_config(name, tokenizer, architecture)
    torch.manual_seed(seed)
    model = getattr(transformers, config.architectures[0])(config)
    model.eval()
    with torch.no_grad():
        # transformers zeroes the padding_idx row at init; in a real checkpoint every row this tokenizer emits was
        # trained (pad = eos in TinyLlama), so refill it. Llama 3.2 *base* really has untrained chat tokens: zeroed.
        for matrix in {id(m): m for m in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values():
            zero = matrix.abs().amax(dim=1) == 0
            matrix[zero] = torch.randn(int(zero.sum()), matrix.shape[1]) * 0.2
            for token in UNTRAINED.get(name, ()):
                matrix[tokenizer.convert_tokens_to_ids(token)] = 0
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": _ids(tokenizer, spec.generation_eos)}
    if config.pad_token_id is not None:
        gen["pad_token_id"] = config.pad_token_id
    model.generation_config = GenerationConfig(**{k: v for k, v in gen.items() if v is not None})
    return model


def save_family_base(name: str, folder, vocab: str = "tiny", seed: int = 0, architecture: str | None = None) -> Path:
    """Write the family's complete HF folder; the chat template (if any) in tokenizer_config.json and chat_template.jinja."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_family_tokenizer(name, vocab)
    make_family_model(name, tokenizer, seed, architecture).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    template = SPECS[name].template
    if template is not None:
        # transformers 4.57 writes only chat_template.jinja; Ollama's converter and older tools read the JSON key.
        config["chat_template"] = template
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8", newline="")
    else:
        config.pop("chat_template", None)  # base models ship no template, not a null one
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder
