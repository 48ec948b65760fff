"""The training process's heap on Linux: a better allocator when the system has one, else glibc's knobs.

A training step allocates and frees thousands of activation tensors of a few hundred KiB to a few MiB. glibc serves
a request above its mmap threshold (128 KiB at start) with its own mapping and unmaps it on free, but every such
free *raises* the threshold to that block's size (up to 32 MiB): after the first step, every activation comes from
the heap, and the heap keeps what it ever held, fragmented by the step's many sizes. Measured on SmolLM2-135M with
the nursing recipe in fp32 (a CPU without bf16, emulated with AVX2 kernels; `bench/train_throughput.py --sin-bf16`):
the process peaked 0.8 GB above weights + runtime + the traced step, as much as the step itself.

**1. Another allocator** (`preload_env`, `active_allocator`): tcmalloc (gperftools) or jemalloc, when the system has
one, preloaded (LD_PRELOAD) into the child process that `afinar train` supervises (supervise.py), so into every
training from the terminal or the studio. Both keep freed memory in size classes and spans instead of one heap that
fragments. Measured in one session on a 2-core AMD EPYC with AVX2 kernels only (fp32), nursing recipe, 8 steps, each
allocator in its own process (bench/train_memory.py's child): glibc peak 2 362 MiB at 277 tokens/s, tcmalloc
1 661 MiB at 290 (the speed kept: its spans are reused, not unmapped), jemalloc 1 641 MiB at 246 (it returns dirty
pages after a delay: page faults). So tcmalloc first. On a Qwen2.5-0.5B-shaped model in fp32
(bench/plan_accuracy.py --solo-formas --formas qwen2.5-0.5b --emular-avx2): glibc 7.00 GiB at 6.38 s a step,
tcmalloc 4.09 GiB at 6.01 s. Neither is a Python package; Debian/Ubuntu: `sudo apt install libtcmalloc-minimal4`.
`AFINAR_ALLOCATOR`: `auto` (default: tcmalloc, else jemalloc, else glibc), `glibc` (no preload), or the path of a
library to preload. `afinar plan` and `afinar demo` (which trains in its own process) start themselves again under it
(`restart_with_allocator`); train() called from Python trains in its caller's process, on whatever allocator it has.
`make demo` and `make test` install Debian's package with apt-get when they can (root), else say how.

**2. Without one, glibc pinned** (`return_freed_memory`, `train.compact_heap`): the mmap threshold fixed (which turns
glibc's adjustment off) at 1 MiB, so blocks of 1 MiB and up (a 512-token micro-batch's hidden states are 1.1 MiB in
fp32) are mapped and unmapped each time, and the heap's top trimmed whenever anything is free there. It costs time:
every fresh mapping is page faults. Same machine and recipe, six steps each (`/tmp` scripts, then
bench/train_memory.py): peak 2 319 → 1 698 MiB, 280 → 190 tokens/s; a 2 MiB threshold kept the speed and saved
nothing; pinning the threshold any lower (any `mallopt` call pins it, at 128 KiB unless given) saved a little more
and cost more (1 587 MiB, 165 tokens/s). So `auto` turns it on only when the plan says the run fills the machine's
memory, where a slower step beats a run the system kills. Linux with glibc only; elsewhere (macOS, Windows, musl, or
under tcmalloc/jemalloc) it does nothing and says so by returning False.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from afinar.errors import AfinarError

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20  # bytes: blocks this large or larger get their own mapping, returned on free

ALLOCATOR_ENV = "AFINAR_ALLOCATOR"  # auto | glibc | the path of a library to preload
# (name, libraries to look for), the fastest measured first (above). find_library names the library as the dynamic
# linker finds it (its soname), which LD_PRELOAD accepts as it is.
ALLOCATORS = (("tcmalloc", ("tcmalloc_minimal", "tcmalloc")), ("jemalloc", ("jemalloc",)))
ALLOCATOR_NAMES = tuple(name for name, _ in ALLOCATORS)
INSTALL_HINT = "sudo apt install libtcmalloc-minimal4 (Debian/Ubuntu)"
PRELOADED = "AFINAR_ALLOCATOR_PRELOADED"  # set in a process started with the preload: never started again for it


def allocator_library(env=os.environ) -> tuple[str, str] | None:
    """(name, library) of the allocator a training child with environment `env` should run with on this machine, or
    None (glibc's, or not Linux). An AFINAR_ALLOCATOR path that does not exist is an error, not a silent fallback."""
    choice = env.get(ALLOCATOR_ENV, "auto").strip() or "auto"
    if not sys.platform.startswith("linux") or choice == "glibc":
        return None
    if choice != "auto":
        if not Path(choice).is_file():
            raise AfinarError("T018", f"{ALLOCATOR_ENV} no es auto, glibc ni un archivo que exista", where=choice,
                              hint=f"quita {ALLOCATOR_ENV} (auto) o da la ruta de libtcmalloc o libjemalloc")
        return next((name for name in ALLOCATOR_NAMES if name in Path(choice).name), Path(choice).name), choice
    from ctypes.util import find_library

    for name, libraries in ALLOCATORS:
        found = next(filter(None, map(find_library, libraries)), None)
        if found:
            return name, found
    return None


def preload_env(env: dict) -> dict:
    """`env` for a training child: the allocator preloaded, ahead of anything already in LD_PRELOAD."""
    found = allocator_library(env)
    if found is None:
        return env
    preload = " ".join(filter(None, [found[1], env.get("LD_PRELOAD", "")]))
    # tcmalloc prints a report for every allocation above 1 GiB (a large base's weights): not for our users.
    return {**env, "LD_PRELOAD": preload, "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40), PRELOADED: found[0]}


def restart_with_allocator(argv: list[str]) -> None:
    """Start this command again (`python -m afinar ARGV`, the same process: execve) with the allocator `afinar train`
    gives its training, when this process runs on glibc's and the system has one; else return. `afinar plan` does,
    so that what it measures and predicts is the training's memory, not glibc's. Only when this process is that
    command (`afinar ARGV` or `python -m afinar ARGV`), never under a caller of cli.main (a test, a notebook)."""
    if sys.argv[1:] != list(argv) or os.environ.get(PRELOADED) or active_allocator() != "glibc":
        return
    env = preload_env(dict(os.environ))
    if PRELOADED not in env:  # the system has none
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "afinar", *argv], env)


def active_allocator() -> str:
    """The allocator this process runs with: tcmalloc or jemalloc when one is mapped in, else glibc or 'sistema'."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "sistema"
    for name in ALLOCATOR_NAMES:
        if f"lib{name}" in maps:
            return name
    # glibc, not musl (whose mallopt does nothing): the C library this process loaded, asked directly.
    return "glibc" if hasattr(ctypes.CDLL(None), "gnu_get_libc_version") else "sistema"


def return_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = 0) -> bool:
    """Pin glibc's mmap threshold and trim threshold for this process; True when glibc took both."""
    if not sys.platform.startswith("linux") or active_allocator() != "glibc":
        return False
    libc = ctypes.CDLL(None)  # glibc itself (active_allocator asked it)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
