"""Packed rows (position_ids restarting, no attention mask) give what padded batches give, and nothing leaks.

Reference: the same model on a right-padded batch with its 2-D attention mask, and transformers' own loss."""
import pytest
import torch

import afinar.training as training
from afinar.data.templates import IGNORE, collate, collate_packed, encode, shared_prefix_length, with_system
from afinar.training import evaluate_loss, held_out_loss, output_head, token_loss_sum

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


def test_shared_prefix_stops_before_the_first_predicted_label(tokenizer, rows):
    prefix = shared_prefix_length(rows)
    first_label = min(next(i for i, label in enumerate(row.labels) if label != IGNORE) for row in rows)
    assert prefix == first_label - 1 or any(row.input_ids[prefix] != rows[0].input_ids[prefix] for row in rows)
    assert prefix >= training.MIN_SHARED_PREFIX  # system prompt + the user turn's opening
    assert all(row.input_ids[:prefix] == rows[0].input_ids[:prefix] for row in rows)
    assert all(label == IGNORE for row in rows for label in row.labels[: prefix + 1])
    other = encode(tokenizer, with_system([{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "Hola."}],
                                          "Otro sistema."))
    assert shared_prefix_length([*rows, other]) < prefix  # a different system prompt ends the shared part


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_evaluate_loss_runs_the_shared_prefix_once_for_the_same_number(arch, tokenizer, rows, monkeypatch):
    model = tiny(arch, tokenizer).requires_grad_(False)
    rows = rows + rows[:2]  # 5 rows in batches of 2: right padding and a last batch of one
    read = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: read.append(k["input_ids"].numel()) or forward(*a, **k))
    shared = evaluate_loss(model, rows, 2, tokenizer.pad_token_id)
    shared_tokens = sum(read)
    read.clear()
    monkeypatch.setattr(training, "MIN_SHARED_PREFIX", 10**9)
    whole = evaluate_loss(model, rows, 2, tokenizer.pad_token_id)
    assert shared == pytest.approx(whole, rel=1e-5)
    prefix = shared_prefix_length(rows)
    assert sum(read) - shared_tokens >= (len(rows) - 1) * prefix  # the prefix read once, not once per row
    batch = collate(rows, tokenizer.pad_token_id)  # and both are transformers' own loss over the padded batch
    with torch.no_grad():
        assert whole == pytest.approx(float(forward(**batch).loss), rel=1e-5)


def test_no_head_shortcut_when_the_head_trains(tokenizer):
    model = tiny("llama", tokenizer).requires_grad_(False)
    assert output_head(model) is model.lm_head
    model.lm_head.weight.requires_grad_(True)
    assert output_head(model) is None
    model.lm_head.weight.requires_grad_(False)
    model.config.final_logit_softcapping = 30.0
    assert output_head(model) is None


# --- per-example attention (afinar/attention.py): what the training model uses on packed rows ------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_per_example_attention_gives_the_masked_loss_and_gradients(arch, tokenizer, rows, monkeypatch):
    """Two packed rows, the second ending in padding: the loss and gradients equal SDPA with transformers' mask,
    and the attention really ran once per example (and once for the padding tail), causal, without a mask."""
    import transformers.integrations.sdpa_attention as sdpa

    from afinar.attention import packed_attention_active, segments_of, use_packed_attention

    batch = collate_packed([rows[:2], rows[2:]], tokenizer.pad_token_id)
    n0, n1, n2 = (len(r.input_ids) for r in rows)
    width = batch["input_ids"].shape[1]
    segments = segments_of(batch["position_ids"])

    def tail(end):  # the shorter row ends in padding: a run of its own
        return [(end, width, 0)] if width > end else []

    assert segments == [[(0, n0, 0), (n0, n0 + n1, 0), *tail(n0 + n1)], [(0, n2, 0), *tail(n2)]]

    def loss_and_grad(model):
        model.zero_grad()
        total, n = token_loss_sum(model, batch, None)
        (total / n).backward()
        return total.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    reference = tiny(arch, tokenizer)
    assert not packed_attention_active(reference)
    expected = loss_and_grad(reference)
    model = tiny(arch, tokenizer)
    assert use_packed_attention(model) and packed_attention_active(model)
    calls = []
    real = sdpa.sdpa_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append((query.shape[2], attention_mask is None, kwargs.get("is_causal")))
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    got = loss_and_grad(model)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-6)
    per_layer = [(end - start, True, True) for row in segments for start, end, _ in row]
    assert len(per_layer) == 4 and calls == per_layer * model.config.num_hidden_layers


def test_per_example_attention_keeps_examples_apart(tokenizer, rows):
    from afinar.attention import segments_of, use_packed_attention

    model = tiny("llama", tokenizer)
    use_packed_attention(model)

    def logits(examples):
        batch = collate_packed([examples], pad_id=0)
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                         afinar_segments=segments_of(batch["position_ids"])).logits[0]

    before = logits(rows)
    after = logits([rows[0].__class__(list(reversed(rows[0].input_ids)), rows[0].labels, "x"), *rows[1:]])
    n0 = len(rows[0].input_ids)
    assert not torch.allclose(before[:n0], after[:n0])
    torch.testing.assert_close(after[n0:], before[n0:], rtol=0, atol=1e-6)


def test_per_example_attention_leaves_a_sliding_window_to_the_mask():
    """An example longer than the model's sliding window: the window needs the mask path, which is taken."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

    from afinar.attention import packed_attention_forward

    class Attention(torch.nn.Module):
        num_key_value_groups, is_causal = 2, True

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    mask = sdpa_mask(batch_size=1, cache_position=torch.arange(10), kv_length=10,
                     mask_function=sliding_window_causal_mask_function(3), allow_is_causal_skip=False)
    expected, _ = sdpa_attention_forward(Attention(), q, k, v, mask, sliding_window=3)
    got, _ = packed_attention_forward(Attention(), q, k, v, mask, sliding_window=3, afinar_segments=[[(0, 10, 0)]])
    torch.testing.assert_close(got, expected)
    causal_only, _ = packed_attention_forward(Attention(), q, k, v, mask, afinar_segments=[[(0, 10, 0)]])
    assert not torch.allclose(causal_only, expected)  # without the window the segment path is plain causal


def test_per_example_attention_in_bf16_runs_in_fp32_on_cpu():
    """CPU bf16: the attention itself runs in fp32 (faster backward there) and hands back bf16 close to a bf16 SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from afinar.attention import packed_attention_forward

    class Attention(torch.nn.Module):
        num_key_value_groups, is_causal = 2, True

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, 12, 8, dtype=torch.bfloat16) for h in (4, 2, 2))
    got, _ = packed_attention_forward(Attention(), q, k, v, None, afinar_segments=[[(0, 5, 0), (5, 12, 0)]])
    assert got.dtype == torch.bfloat16 and got.shape == (1, 12, 4, 8)
    exact = torch.cat([sdpa_attention_forward(Attention(), q.float()[:, :, s:e], k.float()[:, :, s:e],
                                              v.float()[:, :, s:e], None, is_causal=True)[0] for s, e in ((0, 5), (5, 12))], 1)
    torch.testing.assert_close(got, exact.to(torch.bfloat16), rtol=0, atol=0)  # fp32 inside, one rounding at the end


# --- a prefix shared by a row's examples, held once (collate_packed(prefix=P)) ---------------------------------


def test_segments_of_cuts_the_shared_prefix_from_the_first_example(tokenizer, rows):
    from afinar.attention import segments_of

    prefix = shared_prefix_length(rows)
    batch = collate_packed([rows, rows[:1]], tokenizer.pad_token_id, prefix=prefix)
    tails = [len(r.input_ids) - prefix for r in rows]
    width = batch["input_ids"].shape[1]
    assert width == prefix + sum(tails)  # the prefix once per row, not once per example
    a, b, c = (prefix + sum(tails[:k]) for k in range(1, 4))
    second = prefix + tails[0]
    assert segments_of(batch["position_ids"]) == [
        [(0, prefix, 0), (prefix, a, prefix), (a, b, prefix), (b, c, prefix)],
        [(0, second, 0), (second, width, 0)],  # one example: prefix and rest are one causal block; then padding
    ]
    labelled = batch["labels"][0] != IGNORE
    assert int(labelled.sum()) == sum(sum(1 for x in r.labels[1:] if x != IGNORE) for r in rows)  # every label kept
    with pytest.raises(ValueError):  # two different prefixes in one row: no row collate_packed writes
        segments_of(torch.tensor([[0, 1, 2, 3, 2, 3, 3, 4]]))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shared_prefix_gives_each_example_its_own_loss_and_gradients(arch, tokenizer, rows):
    """The prefix held once per row: the same loss and LoRA-free weight gradients as the plain packed rows, where
    every example carries its own copy of it; and no example sees another."""
    from afinar.attention import use_packed_attention

    prefix = shared_prefix_length(rows)
    assert prefix >= training.MIN_SHARED_PREFIX

    def loss_and_grads(batch):
        model = tiny(arch, tokenizer)
        assert use_packed_attention(model)
        model.zero_grad()
        total, n = token_loss_sum(model, batch, output_head(model))
        (total / n).backward()
        layer = model.model.layers[0].self_attn
        return total.detach(), n, layer.k_proj.weight.grad.clone(), layer.v_proj.weight.grad.clone()

    plain = loss_and_grads(collate_packed([rows[:2], rows[2:]], tokenizer.pad_token_id))
    shared = loss_and_grads(collate_packed([rows[:2], rows[2:]], tokenizer.pad_token_id, prefix=prefix))
    assert shared[1] == plain[1]
    torch.testing.assert_close(shared[0], plain[0], rtol=1e-5, atol=1e-5)
    for got, expected in zip(shared[2:], plain[2:]):  # k/v of the prefix: gradients from every example, added
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)

    model = tiny(arch, tokenizer)
    use_packed_attention(model)

    def logits(examples):
        batch = collate_packed([examples], 0, prefix=prefix)
        with torch.no_grad():
            return model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False,
                         afinar_segments=training.segments_of(batch["position_ids"])).logits[0]

    changed = rows[0].__class__(rows[0].input_ids[:prefix] + list(reversed(rows[0].input_ids[prefix:])), rows[0].labels, "x")
    before, after = logits(rows), logits([changed, *rows[1:]])
    first = len(rows[0].input_ids)  # the prefix and the first example end here
    assert not torch.allclose(before[:first], after[:first])
    torch.testing.assert_close(after[first:], before[first:], rtol=0, atol=1e-6)


def test_a_tokenized_dataset_gives_the_shared_prefix_of_its_rows(tokenizer, rows):
    """The training reads the prefix from the Arrow dataset in flat slices: the same number as the rows give, also
    when the probe cuts the rows short or a row (through the dataset's index mapping) breaks it."""
    import datasets

    from afinar.data.pipeline import _heads
    from afinar.data.templates import shared_prefix_of_batches

    table = {"input_ids": [r.input_ids for r in rows] * 3, "labels": [r.labels for r in rows] * 3}
    dataset = datasets.Dataset.from_dict(table)
    prefix = shared_prefix_length(rows)
    assert shared_prefix_of_batches(_heads(dataset, 256)) == prefix
    assert shared_prefix_of_batches(_heads(dataset, 5)) == 4  # only 5 tokens read: the prefix is at most 4
    broken = [*table["input_ids"][:-1], [*table["input_ids"][-1][:7], -5, *table["input_ids"][-1][8:]]]
    dataset = datasets.Dataset.from_dict({**table, "input_ids": broken})
    assert shared_prefix_of_batches(_heads(dataset, 256)) == 7
    assert shared_prefix_of_batches(_heads(dataset.select(range(len(broken) - 1)), 256)) == prefix
    assert shared_prefix_of_batches(_heads(dataset.select([]), 256)) == 0
