"""Time of a training step: FLOPs per token for the architecture, and what the device does per second.

FLOPs per trained token (N: parameters of the layers, not the embedding lookup; PaLM appendix B's accounting):
- LoRA: forward 2·N + the backward's input gradients 2·N (the frozen base gets no weight gradients) = 4·N; the
  adapter's own matmuls add 6·(its parameters). Full fine-tuning: 6·N.
- Gradient checkpointing runs each layer's forward again in the backward: + 2·N.
- Attention, per token, for examples of mean length s (causal: half the score matrix): forward 2·2·L·h·s/2,
  backward twice that: 6·L·h·s.
- The output head only on labelled positions (afinar's chunked loss): forward 2·V·h and the input gradient 2·V·h
  per labelled token (+ 2·V·h for the weight gradient when the head trains).

On a GPU: seconds = FLOPs / (the dtype's dense peak × the achievable fraction, devices.ACHIEVABLE_FRACTION). On this
machine the planner measures instead (`--calibrar`, the default): real steps of the recipe at two token counts,
fitted as a + b·tokens (fixed cost per step + cost per token), plus the optimizer step. Without calibration, a CPU
(or this machine's GPU) is rated by a 1024² matrix product in the training dtype, times CPU_FRACTION (measured below).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

# Fraction of a CPU's measured matmul rate a LoRA training step reaches, measured on SmolLM2-135M (bf16 autocast,
# AMD EPYC 2 cores with AVX512-BF16): 512-token steps of 1.9 s ≈ 0.13 TFLOP/s of model FLOPs against a 1024²
# bf16 matmul at 0.42 TFLOP/s: 0.3. Small matrices, the attention and the element-wise work weigh more there.
CPU_FRACTION = 0.3


@dataclass(frozen=True)
class StepTimeFit:
    """seconds per optimizer step ≈ fixed + per_token × tokens (+ the optimizer's own step)."""
    fixed: float
    per_token: float
    optimizer: float = 0.0
    samples: tuple = ()  # ((tokens, seconds), ...) as measured

    def seconds(self, tokens: float, micro_batches: int = 1) -> float:
        return self.fixed * micro_batches + self.per_token * tokens + self.optimizer


def fit_step_time(samples: list[tuple[float, float]], optimizer: float = 0.0) -> StepTimeFit:
    """Least squares of seconds = a + b·tokens over (tokens, seconds) of micro-batches; with one token count only,
    the line through the origin (a = 0). A negative intercept (noise) is clipped to 0, refitted through the origin."""
    xs = [t for t, _ in samples]
    ys = [s for _, s in samples]
    n = len(samples)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread > 0 and max(xs) > 1.2 * min(xs):
        b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
        a = mean_y - b * mean_x
        if a >= 0 and b > 0:
            return StepTimeFit(a, b, optimizer, tuple(samples))
    b = sum(ys) / max(sum(xs), 1e-9)
    return StepTimeFit(0.0, b, optimizer, tuple(samples))


def flops_per_token(size, trainable: int, method: str, gradient_checkpointing: bool, mean_example_tokens: float,
                    labelled_fraction: float, head_trains: bool = False) -> float:
    """Model FLOPs per real token of a training step (see the module docstring)."""
    body = size.body
    flops = (6 if method == "full" else 4) * body + (0 if method == "full" else 6 * trainable)
    if gradient_checkpointing:
        flops += 2 * body
    flops += 6 * size.layers * size.hidden * mean_example_tokens
    head = (6 if head_trains or method == "full" else 4) * size.vocab * size.hidden
    return flops + head * labelled_fraction


def gpu_step_seconds(flops: float, device, precision: str, method: str) -> float:
    from afinar.planning.devices import ACHIEVABLE_FRACTION

    peak = device.peak_tflops.get(precision) or device.peak_tflops.get("fp16") or device.peak_tflops["fp32"]
    return flops / (peak * 1e12 * ACHIEVABLE_FRACTION["full" if method == "full" else "lora"])


def matmul_tflops(precision: str, device: str = "cpu", seconds: float = 0.4) -> float:
    """Measured: the best rate of 1024² matrix products in the training dtype on `device` over about `seconds`."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.ones(1024, 1024, dtype=dtype, device=device)  # not randn: the global generator is left alone
    b = torch.ones(1024, 1024, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = float("inf")
    a @ b  # warm-up
    sync()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best / 1e12
