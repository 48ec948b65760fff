"""Attention for packed rows: every example attends only within itself, at the cost of its own length.

For a packed row (position_ids restarting at each example), transformers builds a block-diagonal mask and SDPA
computes the whole row × row score matrix before masking most of it: on SmolLM2-135M with rows of ≤ 512 tokens
that was 23 % of a CPU training step in fp32 and 29 % in bf16 (torch.profiler, README's training section). Here each
example of a row is one causal SDPA call over its own slice: Σ length² / 2 of work instead of row², and the causal
kernels skip the upper triangle. Outputs equal the masked ones (tests/unit/test_packing.py).

Registered as a transformers attention backend (`AttentionInterface`, the way flash-attention's varlen path is
plugged in); the loss passes the examples' boundaries as `afinar_segments`. Without them (padded batches,
generation) the backend is exactly transformers' SDPA with its mask.
"""
from __future__ import annotations

PACKED_ATTENTION = "afinar_packed"


def segments_of(position_ids) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each run of positions that restarts at 0: one example (or the padding tail)."""
    out = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def packed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             afinar_segments=None, **kwargs):
    """query (B, H, T, D), key/value (B, H_kv, T, D) → (B, T, H, D), as transformers' attention functions return."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    window = kwargs.get("sliding_window")
    longest = max((end - start for row in afinar_segments or [] for start, end in row), default=0)
    if afinar_segments is None or (window and longest > window):  # the mask path handles a sliding window
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
    # the size of the whole query (measured: more than the attention itself saves).
    rows = []
    for b, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):  # (H, T, D) each
        sizes = [e - s for s, e in afinar_segments[b]]
        parts = [
            sdpa_attention_forward(module, qs.unsqueeze(0), ks.unsqueeze(0), vs.unsqueeze(0), None, dropout=dropout,
                                   scaling=scaling, is_causal=True)[0]  # (1, length, H, D)
            for qs, ks, vs in zip(q.split(sizes, dim=1), k.split(sizes, dim=1), v.split(sizes, dim=1))
        ]
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
