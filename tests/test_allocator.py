"""bmojo.allocator: the glibc malloc tuning keeps large CPU tensors off mmap (checked in a child process)."""

import ctypes.util
import os
import subprocess
import sys

import pytest

ALLOCATOR_PROBE = """
import ctypes, sys
import torch
from bmojo.allocator import tune_cpu_allocator

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = tune_cpu_allocator()
before = libc.mallinfo2().hblkhd  # bytes in mmapped blocks (some from imports, before the tuning)
big = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB, above glibc's largest mmap threshold
print(int(tuned), libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.parametrize("setting", ["tuned", "default"])
def test_cpu_allocator_tuning_keeps_large_tensors_off_mmap(setting):
    """Tuned, a 64 MiB tensor comes from the malloc heap (no new bytes in mmapped blocks); with
    BMOJO_CPU_ALLOCATOR=default glibc serves it with mmap as usual (so the probe can tell them apart)."""
    if "libc.so.6" != ctypes.util.find_library("c"):
        pytest.skip("glibc only")
    env = {**os.environ, "BMOJO_CPU_ALLOCATOR": setting}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, new_mmapped = map(int, out.stdout.split())
    if setting == "tuned":
        assert tuned == 1 and new_mmapped == 0
    else:
        assert tuned == 0 and new_mmapped >= 64 << 20


@pytest.mark.parametrize("parent_tuned", [True, False])
def test_compare_workers_tune_the_allocator_as_their_parent_did(parent_tuned):
    """A `bmojo compare --jobs` worker is a fresh (spawned) interpreter: it tunes its allocator when the parent had
    (the command line does at start), and leaves malloc alone otherwise."""
    if "libc.so.6" != ctypes.util.find_library("c") or os.environ.get("BMOJO_CPU_ALLOCATOR") == "default":
        pytest.skip("glibc only, and not with BMOJO_CPU_ALLOCATOR=default")
    import multiprocessing

    from bmojo.allocator import cpu_allocator_tuned
    from bmojo.compare import _init_worker

    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=_init_worker, initargs=(parent_tuned, context.Value("i", 0), None, 1, 1)) as pool:
        assert pool.apply(cpu_allocator_tuned) is parent_tuned
