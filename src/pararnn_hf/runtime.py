"""Process-level settings that make the CPU paths fast."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Stop glibc from handing large freed blocks back to the OS after every tensor.

    The parallel solver allocates many sequence-sized temporaries; with glibc's defaults
    each one is a fresh mmap and every page faults on first touch, which made the CPU
    Newton iteration and adjoint backward 4-7x slower (BENCHMARKS.md). Keeping freed memory
    in the heap means the process holds on to its peak usage, which a training loop reuses
    every step anyway. Opt-in: the ``pararnn-hf`` commands and the benchmarks call it.
    Returns True when the setting took effect (Linux with glibc), False otherwise.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            limit = ctypes.c_int(2**31 - 1)
            _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
        except (OSError, AttributeError):
            _tuned = False
    return _tuned
