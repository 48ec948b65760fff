"""Published peak GPU memory of LoRA / QLoRA fine-tuning, and the config.json of the models they used.

Pure data, no imports: `bench/plan_accuracy.py` builds each model from CONFIGS (meta device, no weights),
asks `afinar plan` for the same setup as each row of MEASUREMENTS and compares with `memory_gib`.

CONFIGS: config.json contents copied verbatim (minus `use_cache`, `transformers_version`, `initializer_range`,
`pretraining_tp`, which do not change the model's shapes) from copies in the stored code index; each says
where it was read. Where only the base model's config was found, the key is the base model's id and
MODEL_ALIASES maps the Instruct id to it: for the two pairs where both were found (Llama-3.1-8B, Qwen2.5-7B)
base and Instruct differ only in eos_token_id, max_position_embeddings (Qwen) and transformers_version.

MEASUREMENTS: one dict per published number. `kind`: "measured" (a run's peak), "minimum" (a vendor's
stated minimum, no seq len given) or "estimate" (rule-of-thumb table). `unit` is what the source prints:
"GiB" (2**30) or "GB" (the sources do not say 10**9 vs 2**30; GPU sizes like "24 GB" are nominal).
`memory_gib` is the number as printed, not converted. `fits_in` rows are not peaks: `seq_len` is the
longest sequence that fit in a card of `memory_gib` (peak <= card size). Settings the source does not
state are None. `lora_targets` uses HF module names (torchtune's output_proj is o_proj).
"""
from __future__ import annotations

CONFIGS: dict[str, dict] = {
    # Stored-index file id 61558565367 (a Markdown dump "# <hub id> / ## Parameter shapes / ## config.json";
    # the index does not expose its repository), section "# meta-llama/Llama-3.1-8B-Instruct".
    # Cross-checked: same shape fields as base Llama-3.1-8B in citsjtu2020/LLM-Prof sglang/Model_Config.md
    # @8434c8d19c396b2f95d92a67845a7c0a0e0dd512 (base has eos_token_id 128001, transformers 4.43.0.dev0).
    "meta-llama/Llama-3.1-8B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 128256,
    },
    # kevinstephano/thunder_model_blocks thunder_model_blocks/hf_llama/llama_config.py
    # @867e9dbdd63b4e4f5df3dad03af1584dcf36becd (dict LLAMA_3_2_1B_CFG, with "_name_or_path":
    # "meta-llama/Llama-3.2-1B-Instruct", "_commit_hash": "4e20de362430cd3b72f300e6b0f18e50e7166e08").
    # Caveat: its eos_token_id 128001 is the base model's value; shape fields are unaffected.
    "meta-llama/Llama-3.2-1B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "vocab_size": 128256,
    },
    # citsjtu2020/LLM-Prof sglang/Model_Config.md @8434c8d19c396b2f95d92a67845a7c0a0e0dd512, "Llama-3.2-3B".
    # No verbatim copy of the Instruct config.json was found in the index.
    "meta-llama/Llama-3.2-3B": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "num_attention_heads": 24, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "vocab_size": 128256,
    },
    # Stored-index file id 61558565367 (see Llama-3.1-8B-Instruct), section "# Qwen/Qwen2.5-7B-Instruct".
    # Base Qwen2.5-7B in LLM-Prof (above) differs only in eos 151643, max_position_embeddings 131072.
    "Qwen/Qwen2.5-7B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
        "max_position_embeddings": 32768, "max_window_layers": 28,
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 131072, "use_sliding_window": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 152064,
    },
    # citsjtu2020/LLM-Prof sglang/Model_Config.md @8434c8d19c396b2f95d92a67845a7c0a0e0dd512, "Qwen2.5-14B".
    # No verbatim copy of the Instruct config.json was found in the index.
    "Qwen/Qwen2.5-14B": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643,
        "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 13824,
        "max_position_embeddings": 131072, "max_window_layers": 48,
        "num_attention_heads": 40, "num_hidden_layers": 48, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "sliding_window": 131072, "use_sliding_window": False,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 152064,
    },
}
# Not found as exact config.json in the index, so left out: Llama-3.1-70B(-Instruct), Llama-3.1-405B
# (torchtune's 8-GPU rows), Llama-2-7b-hf.

# Instruct ids whose config above was read from the base model (same shapes).
MODEL_ALIASES: dict[str, str] = {
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B",
    "Qwen/Qwen2.5-14B-Instruct": "Qwen/Qwen2.5-14B",
}

_TT_8B = ("pytorch/torchtune README.md @30b8519e86d2094879576e16ab1f8d21a6f6f9f7 (2024-09-24, unchanged at HEAD "
          "bd2a0fc7), 'Memory and training speed' table")
_TT_8B_NOTE = ("README note: 'batch size 2 (without gradient accumulation), a dataset packed to sequence length 2048, "
               "and torch compile enabled'. Per-row flags not published; LoRA settings are the defaults of "
               "recipes/configs/llama3_1/{cfg}.yaml at the same commit: AdamW (fused), CEWithChunkedOutputLoss, "
               "enable_activation_checkpointing=True, no activation offloading.")
_TT_3B = ("pytorch/torchtune README.md @1814feb17a9038e1a8053ce93111bd26774a8db6 (2024-11-18), 'Optimization flags' "
          "table, column 'Peak Memory Active (GiB)' (torch.cuda active_bytes.all.peak, per logging step)")
_TT_3B_NOTE = ("Baseline: Llama 3.2 3B (Instruct, per config header), bf16, A100, batch 2, max seq len 4096; rows "
               "stack packed dataset + compile + chunked CE + activation checkpointing + activation offloading; "
               "LoRA/QLoRA rows use torch.optim.AdamW (not optimizer_in_bwd, not AdamW8bit). rank 64, alpha 128, "
               "q/v/output_proj + MLP (recipes/configs/llama3_2/3B_{m}_single_device.yaml @1814feb).")
_UNSLOTH_REQ = ("https://unsloth.ai/docs/zh/kai-shi/fine-tuning-for-beginners/unsloth-requirements (table 'Fine-tuning "
                "VRAM requirements'; English page unsloth.ai/docs/get-started/fine-tuning-for-beginners/"
                "unsloth-requirements has the same table, truncated in the stored copy)")
_UNSLOTH_REQ_NOTE = ("Unsloth; table by parameter count only ('{size}'), model here is a representative. Page: 'QLoRA "
                     "uses 4-bit, LoRA uses 16-bit ... these numbers are the absolute minimum'. No seq len/batch.")
_UNSLOTH_CTX = ("unslothai/unsloth README.md @0acd1c7eec2a6c6adb43367a333dd0e30332b1b0 (last version with it; removed "
                "in c6063669, 2026-03-17), 'Llama 3.1 (8B) max. context length', column 'Hugging Face + FA2'")
_UNSLOTH_CTX_NOTE = ("fits_in row: longest padded sequence that fit in a card of this size (peak <= card). 'We tested "
                     "Llama 3.1 (8B) Instruct and did 4bit QLoRA on all linear layers ... rank = 32 with a batch size "
                     "of 1'. Plain HF/PEFT + FlashAttention-2 (not Unsloth); checkpointing/optimizer not stated.")
_LLAMAFACTORY = ("hiyouga/LLaMA-Factory README.md @ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30, 'Hardware Requirement' "
                 "table ('* estimated')")


def _row(source, model, method, memory, unit, kind, gpu=None, seq_len=None, batch_size=None, gc=None, rank=None,
         targets=None, notes="", fits_in=False) -> dict:
    return {"source": source, "model": model, "method": method, "gpu": gpu, "memory_gib": memory, "unit": unit,
            "kind": kind, "seq_len": seq_len, "batch_size": batch_size, "gradient_checkpointing": gc,
            "lora_rank": rank, "lora_targets": targets, "dtype": "bf16", "fits_in": fits_in, "notes": notes}


_ATT_QV = ["q_proj", "v_proj"]
_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_QVO_MLP = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_L8 = "meta-llama/Llama-3.1-8B-Instruct"
_L3 = "meta-llama/Llama-3.2-3B"
_Q7 = "Qwen/Qwen2.5-7B-Instruct"
_Q14 = "Qwen/Qwen2.5-14B"

MEASUREMENTS: list[dict] = [
    # torchtune, Llama 3.1 8B Instruct (tune download meta-llama/Meta-Llama-3.1-8B-Instruct), single GPU.
    _row(_TT_8B, _L8, "lora", 16.2, "GiB", "measured", "RTX 4090", 2048, 2, None, 8, _ATT_QV,
         _TT_8B_NOTE.format(cfg="8B_lora_single_device") + " Printed '16.2 GiB', 3083 tokens/s."),
    _row(_TT_8B, _L8, "lora", 30.3, "GiB", "measured", "RTX A6000", 2048, 2, None, 8, _ATT_QV,
         _TT_8B_NOTE.format(cfg="8B_lora_single_device") + " Printed '30.3 GiB', 4699 tokens/s. ~2x the 4090 "
         "row under the same stated setup, so this run probably did not use activation checkpointing."),
    _row(_TT_8B, _L8, "qlora", 7.4, "GiB", "measured", "RTX 4090", 2048, 2, None, 8,
         ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
         _TT_8B_NOTE.format(cfg="8B_qlora_single_device") + " torchao NF4 base weights. Printed '7.4 GiB'."),
    # torchtune, Llama 3.2 3B Instruct on A100.
    _row(_TT_3B, _L3, "lora", 8.5, "GiB", "measured", "A100", 4096, 2, True, 64, _QVO_MLP,
         _TT_3B_NOTE.format(m="lora") + " Peak active, not reserved."),
    _row(_TT_3B, _L3, "qlora", 4.6, "GiB", "measured", "A100", 4096, 2, True, 64, _QVO_MLP,
         _TT_3B_NOTE.format(m="qlora") + " Peak active, not reserved. torchao NF4."),
    # Unsloth stated minimums (Unsloth kernels + its offloaded gradient checkpointing).
    _row(_UNSLOTH_REQ, _L3, "qlora", 3.5, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="3B")),
    _row(_UNSLOTH_REQ, _L3, "lora", 8, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="3B")),
    _row(_UNSLOTH_REQ, _Q7, "qlora", 5, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="7B")),
    _row(_UNSLOTH_REQ, _Q7, "lora", 19, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="7B")),
    _row(_UNSLOTH_REQ, _L8, "qlora", 6, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="8B")),
    _row(_UNSLOTH_REQ, _L8, "lora", 22, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="8B")),
    _row(_UNSLOTH_REQ, _Q14, "qlora", 8.5, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="14B")),
    _row(_UNSLOTH_REQ, _Q14, "lora", 33, "GB", "minimum", notes=_UNSLOTH_REQ_NOTE.format(size="14B")),
    # Unsloth README, max context with plain Hugging Face + FA2, QLoRA 4-bit, Llama 3.1 8B Instruct.
    *[_row(_UNSLOTH_CTX, _L8, "qlora", gb, "GB", "measured", f"{gb} GB GPU", ctx, 1, None, 32, _ALL,
           _UNSLOTH_CTX_NOTE, fits_in=True)
      for gb, ctx in [(12, 932), (16, 2551), (24, 5789), (40, 12264), (48, 15502), (80, 28454)]],
    # LLaMA-Factory rule of thumb by size (7B / 14B columns); models here are representatives.
    _row(_LLAMAFACTORY, _Q7, "lora", 16, "GB", "estimate",
         notes="Row 'Freeze/LoRA/GaLore/APOLLO/BAdam/OFT', 16 bits, 7B."),
    _row(_LLAMAFACTORY, _Q7, "qlora", 6, "GB", "estimate", notes="Row 'QLoRA / QOFT', 4 bits, 7B."),
    _row(_LLAMAFACTORY, _Q14, "lora", 32, "GB", "estimate",
         notes="Row 'Freeze/LoRA/GaLore/APOLLO/BAdam/OFT', 16 bits, 14B."),
    _row(_LLAMAFACTORY, _Q14, "qlora", 12, "GB", "estimate", notes="Row 'QLoRA / QOFT', 4 bits, 14B."),
]
# Left out: torchtune's 70B LoRA (27.6 GiB/GPU, 8x A100) and 405B QLoRA (44.8 GB/GPU) rows are FSDP over
# 8 GPUs and their configs were not found; Unsloth's own context-length column (Unsloth kernels).
