"""Two real processes on CPU (torchrun + gloo, through accelerate): the same adapter as one process.

One process with grad_accum 2 and two processes with grad_accum 1 see the same global micro-batches in each step,
and the loss is exact per token across processes, so the adapters must agree up to float summation order."""
import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from tests.conftest import qa_rows, write_jsonl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_file(folder, tiny_base, output, grad_accum: int):
    data = write_jsonl(folder / "datos.jsonl", qa_rows(48))
    recipe = {
        "name": "ddp",
        "model": {"base": str(tiny_base)},
        "data": {"sources": [{"path": str(data)}], "max_length": 128, "system_prompt": "Eres un asistente.",
                 "val_fraction": 0.1},
        # dropout 0: each process draws its own masks, which a single process would draw differently
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"max_steps": 3, "batch_size": 2, "tokens_per_batch": 256, "grad_accum": grad_accum, "lr": 1e-2,
                  "precision": "fp32", "eval_every": 3, "save_every": 2, "seed": 5},
        "output_dir": str(output),
    }
    path = folder / f"receta-{grad_accum}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def adapter(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter_model.safetensors"))


def test_two_processes_train_the_same_adapter_as_one(tmp_path, tiny_base):
    import torch

    one = tmp_path / "uno"
    two = tmp_path / "dos"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": os.getcwd()}
    single = subprocess.run([sys.executable, "-m", "afinar", "train", str(recipe_file(tmp_path, tiny_base, one, 2)),
                             "--sin-progreso"], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "afinar", "train", str(recipe_file(tmp_path, tiny_base, two, 1)),
         "--sin-progreso"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    info = json.loads((two / "afinar_run.json").read_text())
    assert info["processes"] == 2 and info["distributed"] == "MULTI_CPU"
    assert json.loads((one / "afinar_run.json").read_text())["processes"] == 1
    assert ddp.stdout.count("Hardware:") == 1  # only the main process speaks (and writes)

    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)
    assert any(float(t.abs().sum()) > 0 for n, t in a.items() if "lora_B" in n)  # it trained

    losses = lambda run: [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses(one) == pytest.approx(losses(two), rel=1e-4)
    evals = lambda run: [r["eval_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert evals(one) == pytest.approx(evals(two), rel=1e-4)
