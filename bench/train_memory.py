"""Where a CPU training run's memory goes, and what afinar's memory settings change, in one run.

    .venv/bin/python bench/train_memory.py [--sin-bf16] [--pasos 6] [--json r.json]

1. **Kept for the backward**: one packed micro-batch of 512 tokens (the nursing recipe's `tokens_per_batch`) on the
   embedded base with `recipes/enfermeria.yaml`'s LoRA, the bytes autograd keeps (saved-tensor hooks; parameters
   left out), by module: transformers' MLP against afinar/lean_mlp.py, in this process.
2. **The process**: the recipe trained for `--pasos` steps, each configuration in a fresh process; the resident
   memory after each stage of train_stages (launch, data, model, the measured plan, every step), the process's peak
   (VmHWM) and tokens/s per step:
   - `antes`: transformers' MLP and glibc's heap as it comes (what afinar did before issue 29);
   - `lean`: afinar's lean MLP, glibc's heap as it comes (`train.compact_heap: false`, what `auto` picks when the
     run fits comfortably);
   - `compacto`: the lean MLP and `train.compact_heap: true` (afinar/heap.py: what `auto` picks when memory is
     tight).
   `--sin-bf16` runs every process with AVX2 kernels only (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2,
   MKL_ENABLE_INSTRUCTIONS=AVX2): what a CPU without AVX512-BF16/AMX runs, in fp32.

Each configuration runs `--repeticiones` times, alternated (a noisy minute of the machine hits all alike); the table
gives each one's median tokens/s and highest peak. Not a test: no thresholds. The comparison with the guides' recipe
(HF Trainer) is bench/train_throughput.py.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "enfermeria.yaml"
CONFIGS = {
    "antes": {"AFINAR_BENCH_LEAN": "0", "AFINAR_BENCH_COMPACT": "false"},
    "lean": {"AFINAR_BENCH_COMPACT": "false"},
    "compacto": {"AFINAR_BENCH_COMPACT": "true"},
}


def saved_for_backward(tokens: int = 512) -> dict:
    """{config: {"total": bytes, "by_module": {name: bytes}}} for one micro-batch, transformers' MLP vs the lean one."""
    import torch

    import afinar.training
    from afinar.config import load_recipe
    from afinar.data.chat_format import recipe_tokenizer
    from afinar.hardware import Hardware
    from afinar.lean_mlp import use_lean_mlp
    from afinar.models import resolve_base
    from afinar.train_stages import model_for_training
    from afinar.training import output_head, token_loss_sum

    recipe = load_recipe(RECIPE)
    base = resolve_base(recipe.model.base)
    tokenizer, chat = recipe_tokenizer(base, recipe.data.template)
    ids = torch.randint(100, 40000, (1, tokens), generator=torch.Generator().manual_seed(0))
    # Two examples packed in one row, as the recipe's micro-batches are.
    half = tokens // 2
    batch = {"input_ids": ids, "labels": ids.clone(),
             "position_ids": torch.cat([torch.arange(half), torch.arange(tokens - half)]).unsqueeze(0)}
    out = {}
    for name, lean in (("transformers", False), ("lean", True)):
        afinar.training.use_lean_mlp = use_lean_mlp if lean else (lambda model: 0)
        torch.manual_seed(0)
        model, _ = model_for_training(recipe, base, Hardware("cpu", "fp32", ""), "cpu", tokenizer, chat)
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        stack, sizes, seen = ["(fuera de los módulos)"], collections.Counter(), set()
        for module_name, module in model.named_modules():
            kind = type(module).__name__
            if kind in ("LlamaAttention", "LlamaMLP", "LlamaRMSNorm") or "lora_" in module_name.split(".")[-1]:
                label = "lora" if "lora_" in module_name else kind
                module.register_forward_pre_hook(lambda m, a, label=label: stack.append(label))
                module.register_forward_hook(lambda m, a, o: (stack.pop(), None)[1])

        def pack(tensor):
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in params and pointer not in seen:
                seen.add(pointer)
                sizes[stack[-1]] += tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = token_loss_sum(model, batch, output_head(model))
        loss.backward()
        out[name] = {"total": sum(sizes.values()), "by_module": dict(sizes.most_common())}
        del model, loss
    afinar.training.use_lean_mlp = use_lean_mlp
    return out


CHILD = r"""
import json, os, sys, time
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"): return int(line.split()[1]) * 1024
import afinar.training
if os.environ.get("AFINAR_BENCH_LEAN") == "0":
    afinar.training.use_lean_mlp = lambda model: 0
from afinar import train_stages as stages
from afinar.config import apply_overrides, load_recipe
from afinar.training import token_loss_sum
recipe_path, steps, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stages_seen = [("importaciones", rss(), hwm(), None)]
recipe = apply_overrides(load_recipe(recipe_path), {"train.max_steps": steps, "output_dir": output,
                                                    "train.eval_every": 10**6, "train.save_every": 10**6,
                                                    "train.compact_heap": json.loads(os.environ["AFINAR_BENCH_COMPACT"])})
run = stages.launch(recipe, None, resume=False, overwrite=True, plan_only=False)
stages_seen.append(("launch", rss(), hwm(), None))
data = stages.load_data(run, False); stages_seen.append(("datos", rss(), hwm(), None))
check = stages.check_memory(run, data, False)
stages.compact_heap(run, check)
model, cold = stages.build_model(run, data); stages_seen.append(("modelo", rss(), hwm(), None))
session = stages.Session(run, data, model, cold)
session.measure(check, resume=False, plan_only=False)
stages_seen.append(("plan medido (pérdida del base y calibración)", rss(), hwm(), None))
session.open(False)
model, accelerator = session.model, run.accelerator
model.train()
for step in range(1, steps + 1):
    t0 = time.time()
    micro = session.micro_batches(step)
    n_step, real, _, _, _ = session.step_counts(micro, False)
    for _, _, batch in micro:
        with accelerator.accumulate(model):
            loss_sum, _ = token_loss_sum(model, batch, session.head, accelerator.autocast)
            accelerator.backward(loss_sum * recipe.train.grad_accum / max(n_step, 1))
            session.optimizer.step()
            session.optimizer.zero_grad(set_to_none=True)
    session.scheduler.step()
    stages_seen.append((f"paso {step}", rss(), hwm(), real / (time.time() - t0)))
print("RESULT " + json.dumps({"stages": stages_seen, "precision": run.hw.precision}))
"""


def run_config(name: str, steps: int, folder: Path) -> dict:
    env = {**os.environ, **CONFIGS[name], "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(RECIPE), str(steps), str(folder / name)], env=env,
                          cwd=ROOT, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{name} falló:\n{done.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    speeds = [s[3] for s in result["stages"] if s[3] is not None][1:]  # the first step warms up
    result.update(peak=max(s[2] for s in result["stages"]), tokens_per_s=statistics.median(speeds))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pasos", type=int, default=6, help="pasos del optimizador por proceso")
    parser.add_argument("--repeticiones", type=int, default=2, help="procesos por configuración, alternados")
    parser.add_argument("--sin-bf16", action="store_true", help="solo núcleos AVX2 en todo (fp32)")
    parser.add_argument("--json", help="escribe los resultados en este archivo JSON")
    args = parser.parse_args()
    from afinar.hardware import AVX2_ONLY_ENV, cpu_supports_bf16, int8_cpu_features

    if args.sin_bf16:
        os.environ.update(AVX2_ONLY_ENV)  # before torch loads, here and in every child
    import tempfile

    print(f"CPU: {int8_cpu_features()['procesador']}, {os.cpu_count()} núcleos; bf16 nativo para torch: "
          f"{'sí' if cpu_supports_bf16() else 'no'}"
          + (" (--sin-bf16)" if args.sin_bf16 else ""), flush=True)
    saved = saved_for_backward()
    mib = 2**20
    print("\n1. Guardado para el backward, un micro-lote de 512 tokens empaquetado (fp32), por módulo:")
    modules = list(dict.fromkeys([*saved["transformers"]["by_module"], *saved["lean"]["by_module"]]))
    print(f"  {'módulo':<24} {'MLP de transformers':>20} {'MLP de afinar':>14}")
    for module in modules:
        a, b = (saved[k]["by_module"].get(module, 0) / mib for k in ("transformers", "lean"))
        print(f"  {module:<24} {a:>16.1f} MiB {b:>10.1f} MiB")
    a, b = saved["transformers"]["total"] / mib, saved["lean"]["total"] / mib
    print(f"  {'total':<24} {a:>16.1f} MiB {b:>10.1f} MiB  ({b / a:.2f}×)")

    print(f"\n2. El proceso, {args.pasos} pasos de recipes/enfermeria.yaml, cada configuración en su proceso "
          f"({args.repeticiones} veces, alternadas):", flush=True)
    runs = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="afinar-mem-") as tmp:
        for repetition in range(args.repeticiones):
            for name in CONFIGS:
                result = run_config(name, args.pasos, Path(tmp) / str(repetition))
                runs[name].append(result)
                print(f"  {name}: pico {result['peak'] / mib:,.0f} MiB, {result['tokens_per_s']:.0f} tokens/s "
                      f"({result['precision']})", flush=True)
    base = None
    print(f"\n  {'configuración':<10} {'pico (VmHWM)':>13} {'tokens/s (mediana)':>19} {'× antes':>8}")
    for name, results in runs.items():
        peak = max(r["peak"] for r in results) / mib
        speed = statistics.median(r["tokens_per_s"] for r in results)
        base = base or (peak, speed)
        print(f"  {name:<10} {peak:>9,.0f} MiB {speed:>19.0f} {speed / base[1]:>7.2f}×   (pico {peak / base[0]:.2f}×)")
    print("\n  Memoria residente por etapa (primera pasada):")
    first = {name: results[0]["stages"] for name, results in runs.items()}
    print(f"  {'etapa':<46}" + "".join(f"{name:>10}" for name in first))
    for i, stage in enumerate(first["antes"]):
        print(f"  {stage[0]:<46}" + "".join(f"{first[name][i][1] / mib:>6,.0f} MiB" for name in first))
    if args.json:
        Path(args.json).write_text(json.dumps({"saved": saved, "runs": runs}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
