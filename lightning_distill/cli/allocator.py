"""Process-wide memory allocator setting for training on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_SETTINGS = ((_M_MMAP_THRESHOLD, 2**31), (_M_TRIM_THRESHOLD, 2**31), (_M_ARENA_MAX, 1))


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks in the process instead of returning them to the kernel.

    By default glibc serves every block above 128 KiB with its own mmap and unmaps it when freed, so each
    batch of (B, 300, 1152) float frames and its activations is page-faulted in afresh: measured here, half
    of a tiny H-RNN teacher's CPU training step was kernel time (0.32 s -> 0.16 s per step with this set,
    ``benchmarks/allocator.py``).
    Memory then stays with the process between batches, which is what a training loop wants anyway.

    All threads share the main arena: a thread's own arena grows in heaps of at most 64 MiB, so the reader
    threads' teacher batches (88 MB at batch 256) were still mapped and faulted in afresh every time
    (``benchmarks/loader.py``, teacher view through 2 reader threads: 10.9k videos/s with glibc's defaults,
    19.4k with this setting). Call this before any thread allocates: arenas already made are kept.

    Returns:
        Whether the setting took effect (False off Linux/glibc, where it is not needed in this form).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return all(mallopt(parameter, value) for parameter, value in _SETTINGS)
