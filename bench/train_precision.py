"""Training-step speed on the embedded base: fp32 vs CPU bf16 autocast (what `precision: auto` picks).

    .venv/bin/python bench/train_precision.py [--steps 6] [--seq 256] [--batch 4]

Prints seconds per step for each precision and the ratio to fp32 measured in the same run (machines are noisy;
only the ratio means something). Not a test: no thresholds.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from afinar.hardware import cpu_supports_bf16
    from afinar.models import load_model, resolve_base

    base = resolve_base("smollm2-135m")
    torch.manual_seed(0)
    batch = torch.randint(100, 40000, (args.batch, args.seq))  # (B, T)
    results = {}
    for precision in ("fp32", "bf16"):
        model = get_peft_model(load_model(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        times = []
        for step in range(args.steps + 1):  # the first step warms up kernels and is not counted
            t0 = time.perf_counter()
            with autocast:
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step:
                times.append(time.perf_counter() - t0)
        results[precision] = sorted(times)[len(times) // 2]
        del model, optimizer
    print(f"CPU con bf16 nativo (AVX512-BF16/AMX): {'sí' if cpu_supports_bf16() else 'no'}; threads: {torch.get_num_threads()}")
    for precision, seconds in results.items():
        tokens = args.batch * args.seq / seconds
        print(f"{precision}: {seconds:.2f} s/paso (mediana), {tokens:.0f} tokens/s, ratio vs fp32: {results['fp32'] / seconds:.2f}x")


if __name__ == "__main__":
    main()
