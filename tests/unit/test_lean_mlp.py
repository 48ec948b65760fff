"""afinar/lean_mlp.py: the same numbers as transformers' MLP, with one (tokens × intermediate) tensor less kept."""
import copy

import pytest
import torch

from afinar.lean_mlp import use_lean_mlp


def tiny(family: str, act: str = "silu"):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    kwargs = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, hidden_act=act)
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**kwargs))
    return LlamaForCausalLM(LlamaConfig(**kwargs))


def loss_grads_and_saved(model, ids, autocast: bool):
    """(loss, {name: grad}, bytes autograd kept for the backward beyond the parameters)."""
    params = {t.untyped_storage().data_ptr() for t in model.parameters()}
    seen, saved = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            saved[0] += t.untyped_storage().nbytes()
        return t

    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved[0]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("autocast", [False, True])
def test_lean_mlp_gives_the_same_loss_and_gradients_bit_for_bit_and_keeps_less(family, autocast):
    reference = tiny(family)
    lean = copy.deepcopy(reference)
    assert use_lean_mlp(lean) == 2
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    loss_ref, grads_ref, saved_ref = loss_grads_and_saved(reference, ids, autocast)
    loss, grads, saved = loss_grads_and_saved(lean, ids, autocast)
    assert torch.equal(loss, loss_ref)
    assert grads.keys() == grads_ref.keys() and len(grads) > 10
    for name in grads:
        assert torch.equal(grads[name], grads_ref[name]), name
    # SiLU(gate) is no longer kept: one (2 × 24 × 64) tensor per layer, 2 layers.
    element = 2 if autocast else 4  # bytes of the MLP's dtype
    assert saved_ref - saved == 2 * (2 * 24 * 64) * element


def test_lean_mlp_with_lora_on_the_mlp_and_its_dropout_matches_peft():
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["gate_proj", "up_proj", "down_proj"])
    reference = get_peft_model(tiny("llama"), config)
    lean = copy.deepcopy(reference)
    assert use_lean_mlp(lean) == 2
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))
    results = []
    for model in (reference, lean):
        model.train()
        torch.manual_seed(3)  # the same dropout masks, drawn in the same order (gate before up)
        results.append(loss_grads_and_saved(model, ids, autocast=False))
    (loss_ref, grads_ref, _), (loss, grads, _) = results
    assert torch.equal(loss, loss_ref)
    assert {n for n in grads if "lora_" in n} == {n for n in grads_ref if "lora_" in n} != set()
    for name in grads:
        assert torch.equal(grads[name], grads_ref[name]), name


def test_other_activations_are_left_alone():
    model = tiny("llama", act="gelu")
    assert use_lean_mlp(model) == 0
