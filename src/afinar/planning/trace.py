"""Memory of one training step, traced on an empty model: no weights read, no memory used, any architecture.

The recipe's model is built from `config.json` on the `meta` device and made exactly as `afinar train` makes it
(`training.prepare_for_training`: per-example attention, gradient checkpointing, the LoRA adapter and its dropout,
bf16 storage on a CPU), then its parameters become fake tensors (PyTorch's `FakeTensorMode`: shapes, dtypes and
devices, no storage). One forward with the loss afinar uses (`training._frozen_head_cross_entropy`, chunked) and
its backward run on them, while a dispatch mode adds up every tensor storage created and still alive: the peak of
that sum is the step's own memory — activations kept for the backward, logits chunks, the backward's temporaries
and gradients — as this version of transformers/PEFT/PyTorch really allocates it, with or without gradient
checkpointing, for Llama, Qwen2, Phi, Phi-3 or Gemma alike. The same idea as PyTorch's
`torch.distributed._tools.mem_tracker.MemTracker`, which cannot be used here: it hooks the gradient of every
parameter and fails on frozen ones.

Measured against the real thing on SmolLM2-135M (bf16 on a CPU, LoRA all-linear r=16, a 512-token micro-batch):
traced 598 MiB for forward, loss and backward (636 MiB with two AdamW steps), real increase of the process's
resident memory over one step 659 MiB with glibc's large-block reuse off (`mallopt(M_MMAP_THRESHOLD)`); see
planning/memory.py for what the CPU allocator adds on top with it on (the default).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass


@dataclass(frozen=True)
class StepTrace:
    peak: int  # bytes alive at the step's peak, beyond the weights (activations, logits chunks, temporaries, grads)
    saved: int  # bytes alive when the forward and the loss have run: what the backward needs
    loss: int  # how far the loss (head + cross-entropy, in chunks) rose above what was alive when it started
    after: int  # bytes still alive after the backward: the gradients, and what autograd and the loss still hold
    tokens: int  # tokens of the traced micro-batch (rows × width)


def _peak_tracker():
    """A TorchDispatchMode summing the bytes of every tensor storage created inside it and still alive."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class PeakMemory(TorchDispatchMode):
        def __init__(self, existing):
            super().__init__()
            # Storages that already exist (weights, buffers) are not the step's: known, counted as 0.
            self.live = {t.untyped_storage()._cdata: 0 for t in existing}
            self.current = self.peak = 0

        def _forget(self, key):
            self.current -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    storage = tensor.untyped_storage()
                    if storage._cdata not in self.live:
                        self.live[storage._cdata] = storage.nbytes()
                        self.current += storage.nbytes()
                        weakref.finalize(storage, self._forget, storage._cdata)
            self.peak = max(self.peak, self.current)
            return out

    return PeakMemory


def empty_training_model(config, recipe, hw):
    """The recipe's model as training prepares it, with fake parameters: (fake mode, model, output head or None)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from afinar.planning.model_size import meta_model
    from afinar.training import load_dtype, output_head, prepare_for_training

    model = meta_model(config)
    model.to(load_dtype(recipe, hw))
    if recipe.model.quantization == "4bit":
        # bitsandbytes' layers quantize real weights as they load: an empty model cannot have them. QLoRA's step is
        # that of LoRA on the same model in the compute dtype (each NF4 weight is dequantized to it for its matmul
        # and freed: one layer's copy at a time, added by estimate.py), its weights are counted by planning/memory.py.
        recipe = recipe.model_copy(deep=True)
        recipe.model.quantization = "none"
    model = prepare_for_training(model, recipe, hw)
    model.train()  # gradient checkpointing only acts in training mode
    fake = FakeTensorMode()
    made: dict[int, torch.Tensor] = {}  # id of a meta tensor → its fake twin (a tied head stays tied)

    def twin(tensor, parameter: bool):
        if id(tensor) not in made:
            with fake:
                new = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
            made[id(tensor)] = torch.nn.Parameter(new, requires_grad=tensor.requires_grad) if parameter else new
        return made[id(tensor)]

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = twin(param, True)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = twin(buffer, False)
    return fake, model, output_head(model)


def trace_step(fake, model, head, hw, rows: int, width: int, examples_per_row: int, labelled: int) -> StepTrace:
    """Trace one micro-batch: `rows` rows of `width` tokens, each packing `examples_per_row` examples (packed
    recipes; 1 for padded ones), `labelled` of its positions carrying a label."""
    import torch

    from afinar.attention import packed_attention_active
    from afinar.training import (
        CE_CHUNK,
        _frozen_head_cross_entropy,
        _head_returns_hidden,
    )

    autocast_dtype = None if hw.precision == "fp32" else torch.bfloat16  # fp16 on a GPU: the same bytes
    labelled = max(1, min(labelled, rows * (width - 1)))
    with fake:
        tracker = _peak_tracker()([*model.parameters(), *model.buffers()])
        inputs = {"input_ids": torch.zeros(rows, width, dtype=torch.long)}
        if packed_attention_active(model):
            size = max(1, width // max(1, examples_per_row))
            bounds = [(start, min(start + size, width), 0) for start in range(0, width, size)]
            inputs["position_ids"] = torch.cat([torch.arange(e - s) for s, e, _ in bounds]).repeat(rows, 1)
            inputs["afinar_segments"] = [bounds] * rows
        targets = torch.zeros(labelled, dtype=torch.long)
        autocast = (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype
                    else torch.autocast("cpu", enabled=False))
        with tracker:
            if head is not None:
                with _head_returns_hidden(head), autocast:
                    hidden = model(**inputs, use_cache=False).logits  # (rows, width, hidden)
                forward_peak, tracker.peak = tracker.peak, tracker.current  # the loss's own rise from here
                before_loss = tracker.current
                # The labelled positions, copied out (as token_loss_sum's boolean index does): the (rows, width,
                # hidden) output is then freed, as in training, instead of living on through a view.
                hidden = hidden.reshape(-1, hidden.shape[-1])[torch.arange(labelled)]  # (labelled, hidden)
                with autocast:
                    loss = _frozen_head_cross_entropy(hidden, targets, head.weight, CE_CHUNK)
                del hidden  # token_loss_sum returns the loss alone
                loss_rise = tracker.peak - before_loss
                tracker.peak = max(tracker.peak, forward_peak)
            else:  # the model computes the logits itself (LoRA on the head, soft-capping): only where labelled
                with autocast:
                    keep = max(1, labelled // rows)
                    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (rows, keep, vocab)
                    logits = logits.reshape(-1, logits.shape[-1])
                    targets = torch.zeros(logits.shape[0], dtype=torch.long)
                    loss = sum(torch.nn.functional.cross_entropy(logits[i : i + CE_CHUNK].float(),
                                                                 targets[i : i + CE_CHUNK], reduction="sum")
                               for i in range(0, logits.shape[0], CE_CHUNK))
                loss_rise = 0
            saved = tracker.current
            loss.backward()
            after = tracker.current
    del loss
    return StepTrace(peak=tracker.peak, saved=saved, loss=loss_rise, after=after, tokens=rows * width)
