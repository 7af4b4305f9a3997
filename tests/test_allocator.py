"""The CLI's allocator setting: it must take effect where glibc is, and never break elsewhere."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from lightning_distill.cli.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_takes_effect_on_glibc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallopt"):
        pytest.skip("this C library has no mallopt")
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent: the CLI may run several times in one process


# A teacher batch of 256 x 300 x 1152 uint8 frames is 88 MB.
_BLOCK = 96 << 20

_REUSE_SCRIPT = """
import ctypes, ctypes.util, resource, sys, threading
from lightning_distill.cli.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = int(sys.argv[2])

def batch():
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)

def in_thread():
    thread = threading.Thread(target=batch)
    thread.start()
    thread.join()

in_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
in_thread()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_reader_threads_reuse_freed_batches_without_page_faults():
    """A batch-sized block freed by one reader thread is reused by the next without faulting its pages in again."""

    def page_faults(mode: str) -> int:
        command = [sys.executable, "-c", _REUSE_SCRIPT, mode, str(_BLOCK)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return int(result.stdout)

    pages = _BLOCK // 4096
    # Without the setting each thread maps the block afresh, a fault per page (unless the kernel backs it with
    # huge pages, and then there is nothing to tell apart).
    default = page_faults("default")
    if default < pages // 2:
        pytest.skip(f"only {default} page faults with glibc's default here (transparent huge pages?): no contrast")
    assert page_faults("keep") < pages // 20
