"""Handing freed memory back to the system once a flood's flows are gone.

Python keeps freed objects' memory in its own pools and glibc keeps freed
heap at the top of its arenas; after a flood of learned routes expires,
both would hold the peak. A collection and malloc_trim(3) return it.
"""

from __future__ import annotations

import ctypes
import gc

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc; other C libraries may lack it
    _malloc_trim.argtypes = [ctypes.c_size_t]
except AttributeError:
    _malloc_trim = None


def return_memory() -> None:
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
