"""Process-level runtime helpers (nfpi.runtime)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the allocator settings are process-wide and must not leak into the
# test session. mallinfo2().hblks counts the blocks malloc currently serves with their own mmap.
_PROBE = """
import ctypes, sys
import torch
from nfpi.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mmapped_while_alive() -> int:
    before = libc.mallinfo2().hblks
    t = torch.empty(4 << 20)  # 16 MB: above glibc's default mmap threshold
    t.fill_(1.0)
    during = libc.mallinfo2().hblks
    del t
    return during - before

default = mmapped_while_alive()
ok = keep_freed_memory()
print(default, int(ok), mmapped_while_alive())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap() -> None:
    """After keep_freed_memory a 16 MB tensor no longer gets its own mmap (no page-fault churn)."""
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True).stdout
    default, ok, after = (int(v) for v in out.split())
    assert default == 1, "a 16 MB block is mmapped by default (otherwise this test has no teeth)"
    assert ok == 1
    assert after == 0
