"""Keep freed memory in the process for reuse (glibc's malloc), for evaluation runs on the CPU.

An evaluation allocates and frees the same large tensors over and over: each batch's KV cache
(grown a token at a time), the images' cross-attention keys/values, activations. glibc hands
blocks above its mmap threshold straight back to the kernel when they are freed, and returns
the top of the heap past its trim threshold, so every batch pays page faults to get the
memory again and page-table teardown to give it back: measured with
``benchmarks/fewshot_speed.py`` at 32 shots, about a fifth of the time per query, half of it
outside the model's forward passes (freeing a batch's cache and keys/values took ~30 ms).

:func:`retain_freed_memory` turns both off with ``mallopt``: large blocks come from the heap
and stay there once freed, so the next batch reuses them. The process keeps its peak memory
until it exits (what jemalloc/tcmalloc setups recommended for PyTorch on CPU also do).
``HARNESS_MALLOC=system`` leaves malloc as it is. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_done = False


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); True if it was set.
    Idempotent; call it once before the model is built."""
    global _done
    if _done:
        return True
    if os.environ.get("HARNESS_MALLOC", "") == "system":
        log.info("HARNESS_MALLOC=system: malloc left as it is")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (macOS, musl without mallopt): nothing to tune
    # never hand large blocks to mmap (they would be unmapped on free), never trim the heap's top
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))
    log.debug("malloc keeps freed memory for reuse: %s", _done)
    return _done
