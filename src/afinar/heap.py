"""glibc's heap during CPU training: large freed blocks go back to the system instead of piling up.

A training step allocates and frees thousands of activation tensors of a few hundred KiB to a few MiB. glibc serves
a request above its mmap threshold (128 KiB at start) with its own mapping and unmaps it on free, but every such
free *raises* the threshold to that block's size (up to 32 MiB): after the first step, every activation comes from
the heap, and the heap keeps what it ever held, fragmented by the step's many sizes. Measured on SmolLM2-135M with
the nursing recipe in fp32 (a CPU without bf16, emulated with AVX2 kernels; `bench/train_throughput.py --sin-bf16`):
the process peaked 0.8 GB above weights + runtime + the traced step, as much as the step itself.

`return_freed_memory()` pins the threshold (which turns glibc's adjustment off) at 1 MiB, so blocks of 1 MiB and up
(a 512-token micro-batch's hidden states are 1.1 MiB in fp32) are mapped and unmapped each time, and trims the heap's
top whenever anything is free there. It costs time: every fresh mapping is page faults. Measured in one session on
a 2-core AMD EPYC with AVX2 kernels only (fp32), nursing recipe, six steps each (`/tmp` scripts, then
bench/train_memory.py): peak 2 319 → 1 698 MiB, 280 → 190 tokens/s; a 2 MiB threshold kept the speed and saved
nothing; pinning the threshold any lower (any `mallopt` call pins it, at 128 KiB unless given) saved a little more
and cost more (1 587 MiB, 165 tokens/s). So it is `train.compact_heap`: `auto` turns it on only when the plan says
the run fills the machine's memory, where a slower step beats a run the system kills. Linux with glibc only;
elsewhere (macOS, Windows, musl) it does nothing and says so by returning False.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20  # bytes: blocks this large or larger get their own mapping, returned on free


def return_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = 0) -> bool:
    """Pin glibc's mmap threshold and trim threshold for this process; True when glibc took both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc, not musl (whose mallopt does nothing)
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
