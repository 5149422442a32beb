"""Freed host memory stays in a CPU learner rank's process, for the next micro-batch.

glibc's malloc serves a block above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with a fresh mapping and unmaps it when it is freed, and hands the top of its heap
back to the kernel once more than its trim threshold is free there. A training step
allocates and frees the same activations in every micro-batch, so each step faulted the
same pages in again: 7,500 minor faults a step on the tiny model and 1.26 million on the
~100M one, where raising both thresholds took a step from 31.1 s to 27.0 s on this
project's 2-core machine. The rank's resident memory then stays near its step's peak,
which the node holds during every step anyway.
"""

from __future__ import annotations

import ctypes
import resource

MMAP_THRESHOLD = 1 << 30
"""Blocks below 1 GiB come from the heap, whose freed memory is reused."""
TRIM_THRESHOLD = (1 << 31) - 1
"""The heap's top goes back to the kernel only past 2 GiB free (mallopt takes an int)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def keep_freed_memory() -> bool:
    """Raise this process's malloc thresholds. False where the C library has no such
    setting (not glibc) or refuses it: the process then runs as before."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # musl has mallopt too, as a stub returning 0.
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)


def refaults(size: int = 64 << 20) -> int:
    """Minor page faults of touching a ``size``-byte block again after freeing it: its
    page count when freed memory goes back to the kernel, none when it is kept."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def touched() -> int:
        block = libc.malloc(size)
        if not block:
            raise MemoryError(f"malloc({size}) failed")
        ctypes.memset(block, 1, size)
        return block

    libc.free(touched())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = touched()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(block)
    return faults
