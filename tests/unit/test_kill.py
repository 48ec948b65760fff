"""kill -9 of a real training process while it writes a checkpoint: the last complete one survives and resuming
from it gives the losses of a run that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from afinar.training import checkpoint_dirs, read_metrics
from tests.conftest import qa_rows, write_jsonl

STEPS = 12


def recipe_file(folder, tiny_base, output):
    data = write_jsonl(folder / "datos.jsonl", qa_rows(40))
    recipe = {
        "name": "kill",
        "model": {"base": str(tiny_base)},
        "data": {"sources": [{"path": str(data)}], "max_length": 128, "system_prompt": "Eres un asistente."},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        # a checkpoint every step, keeping one: the process is almost always writing or deleting one
        "train": {"max_steps": STEPS, "batch_size": 2, "grad_accum": 2, "lr": 1e-2, "precision": "fp32",
                  "eval_every": 100, "save_every": 1, "keep_last": 1, "seed": 11},
        "output_dir": str(output),
    }
    path = folder / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "afinar", "train", *args, "--sin-progreso"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def kill_while_writing(process, run_dir, timeout=120) -> bool:
    """SIGKILL as soon as a temporary checkpoint folder exists (mid-write); True if caught there."""
    root = run_dir / "checkpoints"
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        if root.is_dir() and checkpoint_dirs(run_dir) and any(p.name.startswith(".") for p in root.iterdir()):
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
    return False


def test_sigkill_during_checkpoint_writes_then_resume(tmp_path, tiny_base):
    reference_dir = tmp_path / "sin-cortes"
    reference = cli(str(recipe_file(tmp_path, tiny_base, reference_dir)))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    expected = [r["loss"] for r in read_metrics(reference_dir) if "loss" in r]

    run_dir = tmp_path / "cortado"
    recipe = recipe_file(tmp_path, tiny_base, run_dir)
    caught = kill_while_writing(cli(str(recipe)), run_dir)
    assert caught, "the run ended before any checkpoint write could be interrupted"
    survivors = checkpoint_dirs(run_dir)
    assert survivors, "kill -9 left no complete checkpoint"
    for checkpoint in survivors:
        for name in ("adapter_model.safetensors", "trainer_state.pt", "trainer_state.json", "recipe.yaml"):
            assert (checkpoint / name).is_file(), (checkpoint, name)
    killed_at = json.loads((survivors[-1] / "trainer_state.json").read_text())["step"]
    assert killed_at < STEPS

    resumed = cli(str(recipe), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    got = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    assert len(got) == STEPS
    assert got == pytest.approx(expected, rel=1e-5)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned
    assert (run_dir / "adapter_model.safetensors").is_file()
