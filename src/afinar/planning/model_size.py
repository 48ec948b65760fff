"""How big a model and its LoRA adapter are, from `config.json` alone: no weights are read or downloaded.

The model is built on PyTorch's `meta` device (accelerate's `init_empty_weights`, what `accelerate estimate-memory`
does), so the count is the architecture's own, whatever its family (Llama, Qwen2, Phi, Phi-3, Gemma…), and the
LoRA adapter is put on that empty model by PEFT itself, so its size is what training will create (the recipe's
target modules, rank and DoRA). The planner (`afinar plan`, issue 15) builds its memory and time estimates on these.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    parameters: int  # every parameter once (a tied output head is the embedding table)
    embedding: int  # the input embedding table
    head: int  # the output head's own weights (0 when tied to the embeddings)
    layers: int
    hidden: int
    vocab: int
    tied: bool

    @property
    def body(self) -> int:
        """Parameters that take part in every token's matrix products (the layers, not the embedding lookup)."""
        return self.parameters - self.embedding - self.head


def meta_model(config):
    """An empty model of the architecture in `config` (a transformers PretrainedConfig): shapes, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # not done on the meta device by transformers 4.57: a tied head would count twice
    return model


def model_size(config) -> ModelSize:
    model = meta_model(config)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head is embedding
    return ModelSize(
        parameters=sum(p.numel() for p in model.parameters()),  # `parameters()` yields a tied weight once
        embedding=embedding.numel(),
        head=0 if tied else head.numel(),
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        vocab=embedding.shape[0],
        tied=tied,
    )


def lora_parameters(config, target_modules, r: int, use_dora: bool = False) -> int:
    """Trainable parameters of the recipe's LoRA adapter on this architecture (PEFT's own count on an empty model)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(meta_model(config), LoraConfig(r=r, target_modules=target_modules, use_dora=use_dora,
                                                          task_type="CAUSAL_LM"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
