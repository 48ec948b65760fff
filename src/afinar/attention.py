"""Attention for packed rows: every example attends only within itself, at the cost of its own length.

For a packed row (position_ids restarting at each example), transformers builds a block-diagonal mask and SDPA
computes the whole row × row score matrix before masking most of it: on SmolLM2-135M with rows of ≤ 512 tokens
that was 23 % of a CPU training step in fp32 and 29 % in bf16 (torch.profiler, README's training section). Here each
example of a row is one causal SDPA call over its own slice: Σ length² / 2 of work instead of row², and the causal
kernels skip the upper triangle. Outputs equal the masked ones (tests/unit/test_packing.py).

A row may also hold once the prefix all its examples share (system prompt and the template's opening:
`collate_packed(prefix=P)`); each example then attends to that prefix and to itself, and the prefix's keys and values
collect the gradients of all of them: the same loss and gradients as each example with its own copy, for the
prefix's tokens computed once per row instead of once per example.

Registered as a transformers attention backend (`AttentionInterface`, the way flash-attention's varlen path is
plugged in); the loss passes the examples' boundaries as `afinar_segments`. Without them (padded batches,
generation) the backend is exactly transformers' SDPA with its mask.
"""
from __future__ import annotations

PACKED_ATTENTION = "afinar_packed"


def segments_of(position_ids) -> list[list[tuple[int, int, int]]]:
    """Per row, (start, end, shared) of each block: a run of positions that restarts (one example, or the padding
    tail), and `shared`, the tokens at the row's start that the block attends to before itself.

    A block whose positions start at P > 0 continues a prefix the row holds once (`collate_packed(prefix=P)`): it
    sees the row's first P tokens, then itself. The prefix and the first example after it form one run of
    positions; they are cut apart so that every example of the row is a block of its own."""
    out = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if i == 0 or p != row[i - 1] + 1]
        blocks = [(s, e, row[s]) for s, e in zip(starts, starts[1:] + [len(row)])]
        shared = {p for _, _, p in blocks if p}
        if len(shared) > 1 or (shared and blocks[0][1] <= min(shared)):
            raise ValueError(f"posiciones de una fila empaquetada sin un prefijo común: {sorted(shared)}")
        if shared:  # the row's first block is the prefix and the first example: cut it in two
            prefix = shared.pop()
            first = blocks.pop(0)
            blocks[:0] = [(0, prefix, 0), (prefix, first[1], prefix)]
        out.append(blocks)
    return out


def _prefix_then_causal(length: int, shared: int, device):
    """(1, 1, length, shared + length) bool: every query sees the `shared` prefix keys, then itself causally."""
    import torch

    mask = torch.ones(length, shared + length, dtype=torch.bool, device=device)
    mask[:, shared:] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return mask[None, None]


def packed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             afinar_segments=None, **kwargs):
    """query (B, H, T, D), key/value (B, H_kv, T, D) → (B, T, H, D), as transformers' attention functions return."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    window = kwargs.get("sliding_window")
    longest = max((shared + end - start for row in afinar_segments or [] for start, end, shared in row), default=0)
    if afinar_segments is None or (window and longest > window):  # the mask path handles a sliding window
        if any(shared for row in afinar_segments or [] for _, _, shared in row):
            raise ValueError("un prefijo compartido necesita la atención por ejemplo (sin ventana deslizante)")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # On CPU, SDPA's bf16 backward is slower than its fp32 one (measured, bench notes in the README): run the
    # attention in fp32 there, which is also more precise. Under autocast q/k/v arrive in fp32 (RoPE's fp32 cos/sin
    # promote them) and autocast would run SDPA in bf16, so autocast is switched off here.
    dtype = query.dtype
    bf16_autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if query.device.type == "cpu" and (dtype == torch.bfloat16 or bf16_autocast):
        with torch.autocast("cpu", enabled=False):
            out, _ = packed_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              dropout=dropout, scaling=scaling, afinar_segments=afinar_segments,
                                              **kwargs)
        return out.to(dtype), None
    # split/unbind, not slicing: their backward is one cat, where every slice's backward would zero-fill a tensor
    # the size of the whole query (measured: more than the attention itself saves). A shared prefix is its own
    # piece, concatenated in front of each example's keys and values: its gradients add up over the examples.
    rows = []
    for b, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):  # (H, T, D) each
        blocks = afinar_segments[b]
        sizes = [e - s for s, e, _ in blocks]
        parts = []
        for i, ((_, _, shared), qs, ks, vs) in enumerate(zip(blocks, q.split(sizes, dim=1), k.split(sizes, dim=1),
                                                             v.split(sizes, dim=1))):
            if i == 0:  # the prefix, when the row has one (segments_of)
                prefix_k, prefix_v = ks, vs
            if shared:
                ks, vs = torch.cat([prefix_k, ks], dim=1), torch.cat([prefix_v, vs], dim=1)  # (H_kv, P + L, D)
                mask = _prefix_then_causal(qs.shape[1], shared, qs.device)
                parts.append(sdpa_attention_forward(module, qs.unsqueeze(0), ks.unsqueeze(0), vs.unsqueeze(0), mask,
                                                    dropout=dropout, scaling=scaling, is_causal=False)[0])
                continue
            parts.append(sdpa_attention_forward(module, qs.unsqueeze(0), ks.unsqueeze(0), vs.unsqueeze(0), None,
                                                dropout=dropout, scaling=scaling, is_causal=True)[0])  # (1, L, H, D)
        rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return (torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]), None


def use_packed_attention(model) -> bool:
    """Switch `model` (a transformers model, before PEFT wraps it) to the per-example backend; False if it can't."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # padded batches keep SDPA's own mask
    if not getattr(model, "_supports_attention_backend", False):
        return False
    model.set_attn_implementation(PACKED_ATTENTION)
    return model.config._attn_implementation == PACKED_ATTENTION


def packed_attention_active(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == PACKED_ATTENTION
