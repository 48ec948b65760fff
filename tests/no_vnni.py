"""Running Python on an emulated x86 CPU without VNNI (AVX2 only), whatever CPU the tests run on.

onnxruntime picks its INT8 kernels from CPUID at run time; `qemu-x86_64 -cpu Haswell` (Debian's `qemu-user`) answers
CPUID as an AVX2 CPU with no AVX-512 and no VNNI, so the same wheel takes the AVX2 path whose u8×s8 pair sums
saturate. Without qemu (or off x86-64) the tests that need it are skipped, saying which package to install."""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys

import pytest

CPU = "Haswell"  # AVX2 + FMA, no AVX-512, no VNNI


def run(code: str, timeout: int = 600) -> str:
    """Run `code` with this venv's Python on the emulated CPU; returns its stdout."""
    qemu = shutil.which("qemu-x86_64")
    if platform.machine() != "x86_64" or qemu is None:
        pytest.skip("falta 'qemu-x86_64' (paquete de Debian 'qemu-user'): se omite la prueba en una CPU x86 sin VNNI")
    done = subprocess.run([qemu, "-cpu", CPU, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
