"""afinar/heap.py and train.compact_heap: freed blocks of 1 MiB and up go back to the system."""
import subprocess
import sys
import types

import pytest

from afinar import train_stages
from afinar.heap import return_freed_memory

GLIBC = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())

# 200 blocks of 1.5 MiB freed under a small block that stays alive at the top of the heap: glibc keeps them (the
# first free raised its mmap threshold above their size) unless the threshold is pinned at 1 MiB.
CHILD = """
import sys
from afinar.heap import return_freed_memory
if sys.argv[1] == "1":
    assert return_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def block(size):
    data = bytearray(size)
    data[::4096] = bytes([1]) * len(range(0, size, 4096))  # touched: resident
    return data
warm = block(2_000_000)
del warm  # glibc's dynamic mmap threshold rises to 2 MB here
before = rss()
blocks = [block(1_500_000) for _ in range(200)]
pinned = block(300_000)  # on the heap above them: they cannot be trimmed from its top
del blocks
print((rss() - before) // 2**20)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc (Linux) only")
def test_freed_blocks_go_back_to_the_system_only_with_the_compact_heap():
    kept = {flag: int(subprocess.run([sys.executable, "-c", CHILD, flag], capture_output=True, text=True,
                                     check=True).stdout) for flag in ("0", "1")}
    assert kept["0"] > 200  # MiB: glibc kept the freed 300 MB
    assert kept["1"] < 20


def fake_run(setting, device="cpu"):
    said = []
    run = types.SimpleNamespace(cfg=types.SimpleNamespace(compact_heap=setting), hw=types.SimpleNamespace(device=device),
                                say=said.append)
    return run, said


def verdict(text):
    return types.SimpleNamespace(memory=types.SimpleNamespace(verdict=text))


@pytest.mark.parametrize("setting, check, device, expected", [
    ("auto", verdict("cabe"), "cpu", False),
    ("auto", verdict("justo"), "cpu", True),
    ("auto", verdict("no cabe"), "cpu", True),  # --forzar: it tries, with the smaller peak
    ("auto", None, "cpu", False),  # --resume: no formula ran
    (True, None, "cpu", True),
    (False, verdict("no cabe"), "cpu", False),
    (True, verdict("justo"), "cuda", False),  # GPU memory is PyTorch's caching allocator's, not glibc's
])
def test_compact_heap_is_asked_for_or_chosen_when_memory_is_tight(monkeypatch, setting, check, device, expected):
    calls = []
    monkeypatch.setattr(train_stages.heap, "return_freed_memory", lambda: calls.append(1) or True)
    run, said = fake_run(setting, device)
    assert train_stages.compact_heap(run, check) is expected
    assert bool(calls) is expected and bool(said) is expected


def test_elsewhere_it_says_it_does_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert return_freed_memory() is False
