"""Run a command of this CLI again in a child process and watch it, so that a kill by the system still ends with an
explanation: Linux's out-of-memory killer sends SIGKILL, which no process can catch, and the child's last words are
lost. The supervisor reads the plan the run saved (runs.PLAN) and says what it expected and what to change.

Used by `afinar train` (train.train_command): `needed()` says whether to supervise, `run_child(argv, run_dir)` runs
`python -m afinar ARGV` with SUPERVISED set (so the child does the work itself) and the allocator heap.py picks
preloaded, and returns its exit code.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from afinar import heap
from afinar.errors import AfinarError

# Set in the child the supervisor starts: it does the work instead of supervising again.
SUPERVISED = "AFINAR_SUPERVISED"


def needed() -> bool:
    """True in a command a user started on POSIX. Not in the supervised child, and not under a launcher
    (accelerate launch, torchrun): those watch their processes themselves."""
    launched = any(k in os.environ for k in ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_NUM_PROCESSES"))
    return os.name == "posix" and not launched and not os.environ.get(SUPERVISED)


def run_child(argv: list[str], run_dir: Path) -> int:
    """Runs `python -m afinar *argv` in a child and returns its exit code; a SIGKILL becomes error T017 (exit 137)
    explained with the plan this run saved in `run_dir`, and the checkpoint to resume from."""
    import signal
    import subprocess

    started = time.time()
    # The child runs with tcmalloc or jemalloc when the system has one (heap.py: a lower peak at the same speed).
    child = subprocess.Popen([sys.executable, "-m", "afinar", *argv],
                             env=heap.preload_env({**os.environ, SUPERVISED: "1"}), preexec_fn=_die_with_parent)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child too: it answers for both
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if code != -signal.SIGKILL:
        return code if code >= 0 else 128 - code
    error = _killed_error(Path(run_dir), started)
    print(f"error {error.render()}", file=sys.stderr)
    return 137


def _killed_error(run_dir: Path, started: float) -> AfinarError:
    from afinar.planning.estimate import decimal
    from afinar.runs import PLAN
    from afinar.training import checkpoint_dirs

    plan_file = run_dir / PLAN
    explained, hint = "", "baja train.tokens_per_batch o data.max_length, o activa train.gradient_checkpointing"
    if plan_file.is_file() and plan_file.stat().st_mtime >= started:  # this run's plan, not an older run's
        saved = json.loads(plan_file.read_text(encoding="utf-8"))
        memory = saved["memory"]
        explained = (f" El plan calculaba un pico de {decimal(memory['total_gb'])} GiB para "
                     f"{decimal(saved['device']['available_gb'])} GiB disponibles ({memory['verdict']}).")
        if saved.get("suggestions"):
            hint = "; ".join(f"{s['change']} (−{decimal(s['saves_gb'])} GiB)" for s in saved["suggestions"])
    kept = checkpoint_dirs(run_dir)
    hint += ("; la ejecución conserva su último checkpoint (" + kept[-1].name + "): continúa con --resume "
             "(--forzar si cambias la receta)") if kept else "; no había checkpoint todavía"
    return AfinarError("T017", "el sistema detuvo el entrenamiento (SIGKILL), casi siempre por falta de memoria "
                       "(el «OOM killer» de Linux)." + explained, where=str(run_dir), hint=hint)


def _die_with_parent() -> None:
    """In the child, before it runs: Linux sends it SIGKILL if the supervising command dies (kill -9 of the
    command a user started must stop the work, not leave it running alone)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
