"""CpuDropout: the same distribution and gradient as nn.Dropout, a bool mask, and swapped into PEFT's LoRA."""
import pytest
import torch

from afinar.dropout import cpu_dropout_class, use_cpu_lora_dropout


def test_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.randn(64, 1024, 96) + 3.0  # 6.3 M elements, non-zero mean
    out = cpu_dropout_class()(0.1).train()(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(round(0.1 * 65536) / 65536, abs=5e-4)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - 0.1), rtol=1e-4, atol=0)
    assert out.mean().item() == pytest.approx(x.mean().item(), rel=2e-3)


def test_masks_are_independent_across_positions():
    """Each 64-bit draw feeds four neighbouring elements: their masks must still be independent."""
    torch.manual_seed(1)
    out = cpu_dropout_class()(0.5).train()(torch.ones(4_000_000))
    kept = (out != 0).float().view(-1, 4)
    pairs = (kept[:, 0] * kept[:, 1]).mean().item(), (kept[:, 1] * kept[:, 3]).mean().item()
    assert pairs == pytest.approx((0.25, 0.25), abs=2e-3)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(8, 33, 16, requires_grad=True)
    out = cpu_dropout_class()(0.3).train()(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    scale = 1 / (1 - round(0.3 * 65536) / 65536)
    torch.testing.assert_close(x.grad, grad * (out != 0) * scale)


def test_bf16_inputs_eval_mode_and_seeding():
    dropout = cpu_dropout_class()(0.2)
    x = torch.randn(10, 7, dtype=torch.bfloat16)
    assert dropout.train()(x).dtype == torch.bfloat16
    assert dropout.eval()(x) is x
    dropout.train()
    torch.manual_seed(3)
    first = dropout(torch.ones(1000))
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(torch.ones(1000)), first)  # torch's generator: seeding and resume hold


def test_swapped_into_peft_lora_with_the_same_p():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=0.25,
                                                                target_modules=["q_proj", "v_proj"]))
    assert use_cpu_lora_dropout(model) == 4  # q and v in 2 layers
    swapped = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
               for d in m.lora_dropout.values()]
    assert len(swapped) == 4 and all(type(d) is cpu_dropout_class() and d.p == 0.25 for d in swapped)
    model.eval()  # no dropout in eval: the same logits as before the swap would give
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
