"""Packed rows (position_ids restarting, no attention mask) give what padded batches give, and nothing leaks.

Reference: the same model on a right-padded batch with its 2-D attention mask, and transformers' own loss."""
import pytest
import torch

from afinar.data.templates import IGNORE, collate, collate_packed, encode, with_system
from afinar.training import held_out_loss, output_head, token_loss_sum

QUESTIONS = ["¿Qué hago con una quemadura?", "Alguien se atraganta.", "¿Cómo detengo una hemorragia en el brazo?"]
ANSWERS = ["Enfría con agua.", "Anímale a toser y llama al 112 si no puede respirar.", "Presiona la herida."]


def tiny(arch: str, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = (LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common)))
    return model.eval()


@pytest.fixture
def rows(tokenizer):
    return [encode(tokenizer, with_system([{"role": "user", "content": q}, {"role": "assistant", "content": a}], "Eres un asistente."))
            for q, a in zip(QUESTIONS, ANSWERS)]


def per_example_losses_padded(model, rows, pad_id):
    batch = collate(rows, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = []
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        targets = batch["labels"][b, 1:n]
        keep = targets != IGNORE
        out.append(torch.nn.functional.cross_entropy(logits[b, : n - 1][keep], targets[keep], reduction="sum"))
    return torch.stack(out), logits


def packed_logits(model, rows, use_cache=False):
    batch = collate_packed([rows], pad_id=0)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=use_cache).logits[0], batch


def per_example_losses_packed(model, rows):
    logits, batch = packed_logits(model, rows)
    out, start = [], 0
    for row in rows:
        n = len(row.input_ids)
        targets = batch["labels"][0, start + 1 : start + n]
        keep = targets != IGNORE
        out.append(torch.nn.functional.cross_entropy(logits[start : start + n - 1][keep], targets[keep], reduction="sum"))
        start += n
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_forward_gives_the_padded_losses(arch, tokenizer, rows):
    model = tiny(arch, tokenizer)
    padded, _ = per_example_losses_padded(model, rows, tokenizer.pad_token_id)
    packed = per_example_losses_packed(model, rows)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_several_packed_rows_with_a_padded_tail(arch, tokenizer, rows):
    """Two rows ([0, 1] and [2]); the second ends in padding. Each example's loss is still its padded-batch loss."""
    model = tiny(arch, tokenizer)
    padded, _ = per_example_losses_padded(model, rows, tokenizer.pad_token_id)
    batch = collate_packed([rows[:2], rows[2:]], tokenizer.pad_token_id)
    n0, n1, n2 = (len(r.input_ids) for r in rows)
    assert batch["input_ids"].shape == (2, max(n0 + n1, n2))
    assert batch["position_ids"][0, n0] == 0 and batch["labels"][0, n0] == IGNORE  # a new example starts
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    got = []
    for r, start, n in ((0, 0, n0), (0, n0, n1), (1, 0, n2)):
        targets = batch["labels"][r, start + 1 : start + n]
        keep = targets != IGNORE
        got.append(torch.nn.functional.cross_entropy(logits[r, start : start + n - 1][keep], targets[keep], reduction="sum"))
    torch.testing.assert_close(torch.stack(got), padded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_one_example_never_sees_another(arch, tokenizer, rows):
    model = tiny(arch, tokenizer)
    before, _ = packed_logits(model, rows)
    changed = [rows[0].__class__(list(reversed(rows[0].input_ids)), rows[0].labels, "x"), *rows[1:]]
    after, _ = packed_logits(model, changed)
    n0 = len(rows[0].input_ids)
    assert not torch.allclose(before[:n0], after[:n0])  # the perturbed example did change
    torch.testing.assert_close(after[n0:], before[n0:], rtol=0, atol=1e-6)  # the others did not
    # Why train.py always passes use_cache=False: with a cache object transformers skips the packed mask and the
    # second example attends to the first.
    leaky_before, _ = packed_logits(model, rows, use_cache=True)
    leaky_after, _ = packed_logits(model, changed, use_cache=True)
    assert not torch.allclose(leaky_after[n0:], leaky_before[n0:], atol=1e-4)


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("chunk", [3, 256])
def test_token_loss_sum_matches_transformers_loss(tokenizer, rows, packing, chunk):
    model = tiny("llama", tokenizer)
    model.lm_head.weight.requires_grad_(False)  # frozen, as under LoRA
    padded = collate(rows, tokenizer.pad_token_id)
    reference = model(**padded).loss  # transformers: mean over labelled next tokens
    n_ref = int((padded["labels"][:, 1:] != IGNORE).sum())
    batch = collate_packed([rows[:2], rows[2:]], tokenizer.pad_token_id) if packing else padded
    head = output_head(model)
    assert head is model.lm_head
    total, n = token_loss_sum(model, batch, head, chunk=chunk)
    assert n == n_ref
    torch.testing.assert_close(total / n, reference, rtol=1e-5, atol=1e-5)
    # gradients agree too (the head runs in checkpointed chunks outside the model's forward)
    model.zero_grad()
    reference.backward()
    expected = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    (total / n).backward()
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight.grad, expected, rtol=1e-4, atol=1e-6)
    # ...and the path without a usable head (FSDP, trained head) gives the same number
    fallback, _ = token_loss_sum(model, batch, None, chunk=chunk)
    torch.testing.assert_close(fallback, total, rtol=1e-5, atol=1e-5)


def test_held_out_loss_is_per_token_over_all_batches(tokenizer, rows):
    model = tiny("llama", tokenizer).requires_grad_(False)
    padded = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        reference = float(model(**padded).loss)
    batches = [collate_packed([rows[:1]], 0), collate_packed([rows[1:]], 0)]
    assert output_head(model) is model.lm_head
    assert held_out_loss(model, batches, output_head(model)) == pytest.approx(reference, rel=1e-5)
    assert held_out_loss(model, [], output_head(model)) is None


def test_no_head_shortcut_when_the_head_trains(tokenizer):
    model = tiny("llama", tokenizer).requires_grad_(False)
    assert output_head(model) is model.lm_head
    model.lm_head.weight.requires_grad_(True)
    assert output_head(model) is None
    model.lm_head.weight.requires_grad_(False)
    model.config.final_logit_softcapping = 30.0
    assert output_head(model) is None
