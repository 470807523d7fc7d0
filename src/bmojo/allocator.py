"""CPU memory allocator tuning: keep freed tensor memory in the process instead of returning it to the OS.

PyTorch allocates CPU tensors with the C library's malloc. glibc serves large requests (above its mmap
threshold, at most 32 MB) with a fresh `mmap` and hands them back with `munmap` on free, so every large
activation of every step is page-faulted and zeroed by the kernel again. At L = 16k a training step of
the matched `bmojo` model makes hundreds of such allocations and spends more time in page faults than in
its elementwise arithmetic (docs/benchmarks.md: 1.6x faster training at L = 16k with the tuning).

`tune_cpu_allocator()` calls glibc's `mallopt` so that large blocks come from the heap and freed memory
stays there for the next step (the process's resident memory stays near its peak, as with a caching
allocator on a GPU). The `bmojo` command line does this at start; library users may call it themselves.
Set BMOJO_CPU_ALLOCATOR=default to leave malloc untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD = -1  # glibc malloc.h: free memory at the top of the heap above this is returned to the OS
_M_MMAP_MAX = -4  # glibc malloc.h: most blocks served by mmap at once; 0 = never use mmap for malloc
TRIM_THRESHOLD = 1 << 30  # return freed memory to the OS only beyond 1 GiB at the top of the heap


@functools.cache
def tune_cpu_allocator() -> bool:
    """Make glibc malloc keep freed memory for reuse (see the module docstring). Returns whether the
    setting took effect: False on a C library without `mallopt` (macOS, musl) or when the environment
    variable BMOJO_CPU_ALLOCATOR is 'default'. Affects allocations made after the call; idempotent."""
    if os.environ.get("BMOJO_CPU_ALLOCATOR", "tuned") == "default":
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def cpu_allocator_tuned() -> bool:
    """Whether `tune_cpu_allocator()` has run in this process and took effect (what a `bmojo compare --jobs` worker,
    a fresh interpreter, repeats)."""
    return tune_cpu_allocator.cache_info().currsize > 0 and tune_cpu_allocator()
