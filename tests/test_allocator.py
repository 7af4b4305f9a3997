"""The CLI's allocator setting: it must take effect where glibc is, and never break elsewhere."""

from __future__ import annotations

import ctypes
import ctypes.util
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
