"""Model and adapter sizes from config alone, compared with the real models and PEFT on them (every family)."""
import pytest

from afinar.planning.model_size import lora_parameters, model_size
from tests.families import FAMILIES, make_family_model, make_family_tokenizer


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_from_config_match_the_built_model(family):
    from peft import LoraConfig, get_peft_model

    model = make_family_model(family, make_family_tokenizer(family))
    size = model_size(model.config)
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.embedding == model.get_input_embeddings().weight.numel()
    assert size.tied == (model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    assert size.head == (0 if size.tied else model.get_output_embeddings().weight.numel())
    assert size.body > 0 and size.vocab == model.config.vocab_size
    for targets, r, dora in (("all-linear", 8, False), (["q_proj", "v_proj"], 4, True)):
        if family == "phi3" and targets != "all-linear":
            targets = ["qkv_proj"]  # Phi-3 fuses q, k and v
        real = get_peft_model(make_family_model(family, make_family_tokenizer(family)),
                              LoraConfig(r=r, target_modules=targets, use_dora=dora, task_type="CAUSAL_LM"))
        expected = sum(p.numel() for p in real.parameters() if p.requires_grad)
        assert lora_parameters(model.config, targets, r, dora) == expected > 0
