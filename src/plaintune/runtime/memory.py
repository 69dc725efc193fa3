"""How a CPU run's memory goes back to the operating system (glibc's allocator).

glibc serves a freed block under its mmap threshold from its heap again and returns it to the
system rarely; the threshold itself rises (up to 32 MB) after large frees. A training step frees
and allocates activations of changing shapes (batches of other lengths), so the heap fragments
and the resident set stays far above what is in use: on all-mpnet-base-v2, 1.1 GB of free heap
after training. Two measures, measured in bench/RESULTS.md (the base model):

- `limit_heap_retention` fixes the mmap threshold at 1 MB for CPU training: a block that large
  (a base model's activations, gradients) gets its own mapping, returned to the system when
  freed. Peak RSS 227 MB lower (passes of 1024 tokens; epoch times within the run-to-run spread,
  bench/RESULTS.md). A user's own MALLOC_MMAP_THRESHOLD_ (or glibc.malloc.mmap_threshold in
  GLIBC_TUNABLES) is left as it is.
- `release` at the end of a phase whose memory the next does not need (the optimizer's state,
  once the last bundle is written): hand the heap's free pages back (malloc_trim).

Elsewhere (macOS, musl, Windows) both do nothing: those allocators return memory on their own terms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from typing import Optional

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


@lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc (it has malloc_trim and mallopt), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def limit_heap_retention() -> bool:
    """Fix glibc's mmap threshold at 1 MB for this process (CPU training); whether it was set.
    Not when the user chose one (MALLOC_MMAP_THRESHOLD_, or its newer spelling in GLIBC_TUNABLES:
    theirs wins) or the allocator is not glibc's."""
    libc = _glibc()
    if (
        libc is None
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
        or "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")
    ):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release() -> None:
    """Return the heap's free pages to the system (glibc; microseconds). No garbage collection: what
    the caller freed is freed by reference counting, and a full `gc.collect` costs about 0.17 s with
    torch loaded, which a test suite of hundreds of tiny runs (or a notebook loop) would notice."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
