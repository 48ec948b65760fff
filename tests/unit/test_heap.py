"""afinar/heap.py: the allocator a training child runs with, and train.compact_heap (glibc's freed blocks of 1 MiB
and up go back to the system)."""
import ctypes.util
import os
import subprocess
import sys
import types

import pytest

from afinar import heap, supervise, train_stages
from afinar.errors import AfinarError
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
    monkeypatch.setattr(train_stages.heap, "active_allocator", lambda: "glibc")
    monkeypatch.setattr(train_stages.heap, "return_freed_memory", lambda: calls.append(1) or True)
    run, said = fake_run(setting, device)
    assert train_stages.compact_heap(run, check) is expected
    assert bool(calls) is expected and bool(said) is expected


def test_elsewhere_it_says_it_does_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert return_freed_memory() is False


def test_under_tcmalloc_the_heap_is_said_and_glibc_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(train_stages.heap, "active_allocator", lambda: "tcmalloc")
    monkeypatch.setattr(train_stages.heap, "return_freed_memory", lambda: calls.append(1) or True)
    run, said = fake_run(True)
    assert train_stages.compact_heap(run, verdict("justo")) is False
    assert calls == [] and "tcmalloc" in said[0]


def test_a_supervised_run_on_glibc_says_how_to_get_tcmalloc(monkeypatch):
    monkeypatch.setattr(train_stages.heap, "active_allocator", lambda: "glibc")
    monkeypatch.setenv(supervise.SUPERVISED, "1")
    run, said = fake_run("auto")
    assert train_stages.compact_heap(run, verdict("cabe")) is False
    assert said == [(f"Memoria: asignador de glibc; con tcmalloc el pico bajaría sin perder velocidad "
                     f"({heap.INSTALL_HINT})")]
    assert "libtcmalloc-minimal4" in said[0]


def libraries(monkeypatch, present: dict):
    """ctypes.util.find_library answering from `present` ({name: soname}) only."""
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: present.get(name))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(heap.ALLOCATOR_ENV, raising=False)


@pytest.mark.parametrize("present, expected", [
    ({"jemalloc": "libjemalloc.so.2", "tcmalloc_minimal": "libtcmalloc_minimal.so.4"},
     ("tcmalloc", "libtcmalloc_minimal.so.4")),  # the faster one first
    ({"tcmalloc": "libtcmalloc.so.4"}, ("tcmalloc", "libtcmalloc.so.4")),  # the full gperftools library
    ({"jemalloc": "libjemalloc.so.2"}, ("jemalloc", "libjemalloc.so.2")),
    ({}, None),
])
def test_the_allocator_is_the_fastest_the_system_has(monkeypatch, present, expected):
    libraries(monkeypatch, present)
    assert heap.allocator_library() == expected


def test_the_allocator_can_be_refused_or_named(monkeypatch, tmp_path):
    libraries(monkeypatch, {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"})
    monkeypatch.setenv(heap.ALLOCATOR_ENV, "glibc")
    assert heap.allocator_library() is None
    assert heap.preload_env({"A": "1", heap.ALLOCATOR_ENV: "glibc"}) == {"A": "1", heap.ALLOCATOR_ENV: "glibc"}
    named = tmp_path / "libjemalloc.so.2"
    named.write_bytes(b"")
    monkeypatch.setenv(heap.ALLOCATOR_ENV, str(named))
    assert heap.allocator_library() == ("jemalloc", str(named))
    monkeypatch.setenv(heap.ALLOCATOR_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(AfinarError) as error:
        heap.allocator_library()
    assert error.value.code == "T018" and "missing.so" in error.value.render()
    monkeypatch.setattr(sys, "platform", "win32")  # elsewhere, nothing to preload (and no LD_PRELOAD)
    monkeypatch.delenv(heap.ALLOCATOR_ENV)
    assert heap.allocator_library() is None


def test_the_supervised_child_gets_the_allocator_ahead_of_other_preloads(monkeypatch, tmp_path):
    libraries(monkeypatch, {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"})
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    seen = {}

    class Child:
        def __init__(self, command, env, preexec_fn):
            seen.update(env)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    assert supervise.run_child(["train", "x.yaml"], tmp_path) == 0
    assert seen["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
    assert seen[supervise.SUPERVISED] == "1" and int(seen["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 2**40


SYSTEM_ALLOCATOR = heap.allocator_library() if sys.platform.startswith("linux") else None


@pytest.mark.skipif(SYSTEM_ALLOCATOR is None, reason="this system has neither tcmalloc nor jemalloc")
def test_a_child_with_the_preload_runs_on_that_allocator():
    env = heap.preload_env(dict(os.environ))
    ran = subprocess.run([sys.executable, "-c", "from afinar.heap import active_allocator; print(active_allocator())"],
                         env=env, capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == SYSTEM_ALLOCATOR[0]
    assert "ERROR: ld.so" not in ran.stderr


@pytest.mark.skipif(not GLIBC, reason="glibc (Linux) only")
def test_this_process_runs_on_glibc_and_says_so():
    assert heap.active_allocator() == "glibc"


def test_afinar_plan_starts_again_under_the_allocator_the_training_gets(monkeypatch):
    libraries(monkeypatch, {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"})
    monkeypatch.setattr(heap, "active_allocator", lambda: "glibc")
    monkeypatch.delenv(heap.PRELOADED, raising=False)
    started = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: started.append((args, env)))
    heap.restart_with_allocator(["plan", "r.yaml"])  # this process is pytest, not `afinar plan`: never replaced
    assert started == []
    monkeypatch.setattr(sys, "argv", [".venv/bin/afinar", "plan", "r.yaml"])
    heap.restart_with_allocator(["plan", "r.yaml"])
    (args, env), = started
    assert args[1:] == ["-m", "afinar", "plan", "r.yaml"] and env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    monkeypatch.setenv(heap.PRELOADED, "tcmalloc")  # started with it already (even if it did not load): not again
    heap.restart_with_allocator(["plan", "r.yaml"])
    monkeypatch.delenv(heap.PRELOADED)
    monkeypatch.setattr(heap, "active_allocator", lambda: "tcmalloc")
    heap.restart_with_allocator(["plan", "r.yaml"])
    monkeypatch.setattr(heap, "active_allocator", lambda: "glibc")
    libraries(monkeypatch, {})  # nothing to preload
    heap.restart_with_allocator(["plan", "r.yaml"])
    assert len(started) == 1


def test_the_plan_allows_less_heap_under_tcmalloc_than_under_glibc():
    from afinar.planning import memory as mem

    step, weights = 600 * 2**20, 540 * 2**20
    for fp32 in (False, True):
        spans = mem.cpu_allocator_bytes(step, weights, fp32, "tcmalloc")
        assert spans == mem.cpu_allocator_bytes(step, weights, fp32, "jemalloc") == mem.CPU_FIRST_STEP + 60 * 2**20
        assert spans < mem.cpu_allocator_bytes(step, weights, fp32, "glibc")


@pytest.mark.parametrize("argv", [["demo", "--max-steps", "1"], ["plan", "r.yaml", "--json"]])
def test_demo_and_plan_start_again_under_the_allocator_before_doing_anything(monkeypatch, argv):
    """Both train or measure a training in their own process (not a supervised child): from the command line they
    start again under the allocator `afinar train` gives its child, before anything is loaded."""
    from afinar import cli

    libraries(monkeypatch, {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"})
    monkeypatch.setattr(heap, "active_allocator", lambda: "glibc")
    monkeypatch.delenv(heap.PRELOADED, raising=False)

    class Started(Exception):
        pass

    def execve(path, args, env):
        raise Started(args, env)

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(sys, "argv", ["afinar", *argv])
    with pytest.raises(Started) as started:
        cli.main(argv)
    args, env = started.value.args
    assert args[1:] == ["-m", "afinar", *argv] and env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
